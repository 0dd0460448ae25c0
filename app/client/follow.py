"""`finetune jobs follow`: a job live, from its Server-Sent Events. The view is seeded from the job and
its metric series (so a finished job answers at once), then moved by each event; a dropped connection
is reopened with ``Last-Event-ID`` so nothing is missed or shown twice. Ctrl-C only detaches."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.text import Text

from app.client import render
from app.client.command import DETACHED
from app.client.http import Api, ApiError, Unreachable, path_part

SPARK_POINTS = 48  # losses in the sparkline: the latest ones
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 5.0)  # between reconnection attempts; the last one repeats


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class JobView:
    """What the live display shows: the progress bar, the latest loss with a sparkline of the last
    ones, and the latest evaluation. A rich renderable, redrawn by Live."""

    def __init__(self, job_id: str):
        self.job_id, self.status = job_id, "queued"
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                            TextColumn("step {task.fields[steps]}  ETA {task.fields[eta]}  {task.fields[speed]}"),
                            console=render.out, auto_refresh=False)
        self.task = self.bar.add_task(job_id, total=None, steps="-", eta="-", speed="")
        self.losses: dict[int, float] = {}  # by step: a replayed point is never counted twice
        self.evaluation: dict[str, Any] = {}

    def apply_progress(self, progress: dict | None) -> None:
        if not progress:
            return
        step, total = progress.get("step"), progress.get("total_steps")
        speed = progress.get("samples_per_second")
        self.bar.update(self.task, total=total or self.bar.tasks[0].total, completed=step or 0,
                        steps=f"{step or 0}/{total or '?'}", eta=_duration(progress.get("eta_seconds")),
                        speed=f"{speed:.1f} samples/s" if speed else "")

    def apply_point(self, point: dict) -> None:
        """A metrics event's data, or one step of the metric series."""
        if isinstance(point.get("train_loss"), (int, float)):
            self.losses[int(point.get("step") or 0)] = float(point["train_loss"])
        evaluation = {k: v for k, v in point.items() if k.startswith("eval_") and isinstance(v, (int, float))
                      and not k.endswith("_time")}  # model_preparation_time says nothing of quality
        if evaluation:
            self.evaluation = {"step": point.get("step"), **evaluation}

    def apply_job(self, job: dict) -> None:
        self.status = job["status"]
        self.apply_progress(job.get("progress"))
        metrics = job.get("metrics") or {}
        if isinstance(metrics.get("train_loss"), (int, float)) and not self.losses:
            self.losses[int(metrics.get("step") or 0)] = float(metrics["train_loss"])
        if not self.evaluation:
            self.apply_point(metrics)

    def apply_event(self, event: dict) -> None:
        data = event.get("data") or {}
        if data.get("status"):
            self.status = data["status"]
        if data.get("total_steps") and "step" not in data:  # "Training started: N steps."
            self.bar.update(self.task, total=data["total_steps"], steps=f"0/{data['total_steps']}")
        if event.get("type") == "metrics":
            if "percent" in data:
                self.apply_progress(data)
            self.apply_point(data)

    def loss_line(self) -> Text:
        if not self.losses:
            return Text("loss -", style="dim")
        recent = [self.losses[step] for step in sorted(self.losses)][-SPARK_POINTS:]
        return Text.assemble(("loss ", "bold"), f"{recent[-1]:.4f}  ", (render.sparkline(recent), "cyan"),
                             (f"  last {len(recent)} of {len(self.losses)} logged", "dim"))

    def evaluation_line(self) -> Text:
        if not self.evaluation:
            return Text("eval -", style="dim")
        values = "  ".join(f"{k.removeprefix('eval_')}={render.number(v)}" for k, v in self.evaluation.items()
                           if k != "step")
        return Text.assemble(("eval ", "bold"), values, (f"  (step {self.evaluation.get('step')})", "dim"))

    def __rich__(self) -> Group:
        self.bar.update(self.task, description=self.status)
        return Group(self.bar.get_renderable(), self.loss_line(), self.evaluation_line())


def _job_path(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{path_part(job_id)}"


def _seed(api: Api, job: dict, view: JobView) -> int:
    """The view as of now; returns the newest event's seq, where the stream starts (nothing replayed)."""
    newest = api.get(f"{_job_path(job['id'])}/events", limit=1)["data"]
    for point in api.get(f"{_job_path(job['id'])}/metrics")["data"]:
        view.apply_point(point)
    view.apply_job(job)
    return newest[0]["seq"] if newest else 0


def _print_event(event: dict) -> None:
    """Events other than the per-step losses (the bar shows those) as log lines above the live view."""
    if event.get("type") == "metrics" and "train_loss" in (event.get("data") or {}):
        return
    style = {"error": "red", "warning": "yellow"}.get(event.get("level", ""), "")
    render.out.print(Text.assemble((time.strftime("%H:%M:%S", time.localtime(event.get("created_at"))), "dim"),
                                   " ", (event.get("message", ""), style)))


class Stream:
    """The job's events from ``after`` on, reopened with Last-Event-ID when the connection drops (or the
    server ends it while restarting) until the job ends; gives up after ``reconnect_for`` seconds of
    failing in a row."""

    def __init__(self, api: Api, job_id: str, after: int, reconnect_for: float):
        self.api, self.job_id, self.last_seq, self.reconnect_for = api, job_id, after, reconnect_for

    def run(self, on_event) -> dict:
        """Calls ``on_event`` with each event in order; returns the finished job."""
        outage_since: float | None = None
        failures = 0
        while True:
            try:
                headers = {"Last-Event-ID": str(self.last_seq)} if self.last_seq else {}
                for sse in self.api.events("GET", f"{_job_path(self.job_id)}/events", params={"stream": "true"},
                                           headers=headers):
                    event = json.loads(sse.data)
                    if event["seq"] <= self.last_seq:
                        continue  # never shown twice, whatever the server replays
                    if outage_since is not None:
                        render.err.print(f"Reconnected; going on after event {self.last_seq}.")
                        outage_since, failures = None, 0
                    self.last_seq = event["seq"]
                    on_event(event)
                job = self.api.get(_job_path(self.job_id))
                if job["status"] in render.TERMINAL:
                    return job
                delay = RETRY_DELAYS_S[0]  # the server ended the stream early (it is stopping): open it again
            except (Unreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500 and exc.status != 429:
                    raise  # a real refusal (key revoked, job gone): retrying cannot help
                if outage_since is None:
                    outage_since = time.monotonic()
                    render.err.print(f"Connection lost ({exc}); reconnecting after event {self.last_seq}…")
                if time.monotonic() - outage_since > self.reconnect_for:
                    raise Unreachable(f"Gave up reconnecting after {self.reconnect_for:.0f} s: {exc}") from exc
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
            time.sleep(delay)


def follow_job(api: Api, job_id: str, json_out: bool = False, reconnect_for: float = 300.0) -> int:
    """Follows the job to its end; returns the exit code (0 succeeded, 1 failed, 2 cancelled, 130 detached)."""
    # Python only turns SIGINT into KeyboardInterrupt if the process did not inherit it ignored (a parent
    # that ignores it passes that on: some shells' background jobs, supervisors, test runners). Detaching on
    # Ctrl-C is this command's promise, so it asks for the signal itself.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    job = api.get(_job_path(job_id))
    if json_out:  # every event from the first, one JSON object per line
        return _follow_json(api, job, reconnect_for)
    view = JobView(job["id"])
    after = _seed(api, job, view)
    if job["status"] in render.TERMINAL:
        render.out.print(view)
    else:
        try:
            render.out.print(Text.assemble(("Job ", "bold"), job["id"], f" ({job['model']}, {job.get('task')})"))
            render.err.print("Ctrl-C detaches; the job goes on.", style="dim")
            with Live(view, console=render.out, refresh_per_second=4, transient=False) as live:
                def show(event: dict) -> None:
                    view.apply_event(event)
                    _print_event(event)
                    live.refresh()

                job = Stream(api, job["id"], after, reconnect_for).run(show)
                view.apply_job(job)
            if not render.out.is_terminal:
                render.out.line()  # Live's last frame, printed once where there is no terminal, ends without one
        except KeyboardInterrupt:
            render.err.print(f"Detached; {job_id} goes on. Follow it again with: finetune jobs follow {job_id}")
            return DETACHED
    render.out.print(render.outcome(job))
    return render.TERMINAL[job["status"]]


def _follow_json(api: Api, job: dict, reconnect_for: float) -> int:
    try:
        job = Stream(api, job["id"], 0, reconnect_for).run(lambda event: render.print_json(event, compact=True))
    except KeyboardInterrupt:
        return DETACHED
    return render.TERMINAL[job["status"]]
