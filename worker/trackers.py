"""Experiment trackers a job logs to, through transformers' own reporting callbacks: TensorBoard for every
job (event files in a folder the job keeps), W&B and MLflow (``report_to``) when the job asks for them
(its ``integrations``). Part of the pure training core: no Celery, no database. The job runner turns
a job's integrations into runs with :func:`tracker_runs`, adding what is the operator's (MLflow's tracking
URI); credentials stay in the worker's environment (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN…).

The W&B and MLflow runs are started here, before the Trainer exists, and the callbacks log into them. So
a run spans the evaluation before the first step and the one after the last (MLflow's callback ends its
own run when training ends, and the final evaluation would then open a stray one); a resumed job carries
on its run instead of opening another; and an MLflow run's parameters are the job's hyperparameters,
logged once (the callback would log 150 TrainingArguments, and MLflow refuses a parameter whose value
changes, as the batch split does when an attempt retries after running out of memory)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from transformers.integrations import TensorBoardCallback

log = logging.getLogger(__name__)

JOB_TAG = "finetune.job_id"
MLFLOW_STATUS = {"succeeded": "FINISHED", "paused": "FINISHED", "cancelled": "KILLED", "failed": "FAILED"}


def tracker_runs(integrations: list[dict[str, Any]] | None, *, job_id: str, project_id: str,
                 mlflow_tracking_uri: str) -> list[dict[str, Any]]:
    """What each tracker a job asked for is told: the client's names and tags, defaults, and the job's
    identity (so the operator can tell the runs of projects apart). TensorBoard needs no run."""
    runs: list[dict[str, Any]] = []
    for integration in integrations or []:
        kind = integration["type"]
        options = integration.get(kind) or {}
        if kind == "wandb":
            runs.append({"type": "wandb", "project": options["project"], "entity": options.get("entity"),
                         "name": options.get("name") or job_id, "tags": options.get("tags") or [], "id": job_id,
                         "config": {"fine_tuning_job_id": job_id, "finetune_project": project_id}})
        elif kind == "mlflow":
            runs.append({"type": "mlflow", "tracking_uri": mlflow_tracking_uri,
                         "experiment_name": options.get("experiment_name"),
                         "run_name": options.get("run_name") or job_id,
                         "tags": {**(options.get("tags") or {}), JOB_TAG: job_id, "finetune.project": project_id}})
    return runs


class Tracking:
    """The trackers of one training: what ``report_to`` lists, the callbacks to add, and how training ended
    (``outcome``, set by the caller: succeeded, cancelled or paused; an exception means failed)."""

    def __init__(self, report_to: list[str], callbacks: list):
        self.report_to, self.callbacks = report_to, callbacks
        self.outcome = "succeeded"


class TensorBoardEvents(TensorBoardCallback):
    """transformers' TensorBoard callback writing into ``folder``, without the two texts it adds when
    training begins: the TrainingArguments and the model's config name the worker's folders, and these
    event files are the client's to download. The scalars are the callback's own."""

    def __init__(self, folder: Path):
        super().__init__()
        self.logging_dir = str(folder)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.tb_writer is None:
            self._init_summary_writer(args)

    def close(self, outcome: str = "") -> None:
        """Writes what is still queued: the writer does so from a thread, and the final evaluation is logged
        after training closed the writer of the training itself."""
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None


@contextmanager
def tracking(runs: list[dict[str, Any]], tensorboard_dir: Path | None, work_dir: Path,
             hyperparameters: dict[str, Any], reporter, main_process: bool = True):
    """The trackers' runs, open while the body trains. Only the main process of a multi-process job starts
    runs (the callbacks log from it alone). A tracker that cannot start fails the job before any training."""
    from worker.training import TrainingError  # training imports this module

    callbacks = []
    if tensorboard_dir is not None:
        tensorboard_dir.mkdir(parents=True, exist_ok=True)
        callbacks.append(TensorBoardEvents(tensorboard_dir))
    environment = {}
    if any(run["type"] == "mlflow" for run in runs):
        environment["MLFLOW_MAX_LOG_PARAMS"] = "0"  # parameters: the job's hyperparameters, logged at the start
    tracked, ends = Tracking([run["type"] for run in runs], callbacks), [callback.close for callback in callbacks]
    with _environment(environment):
        try:
            for run in runs if main_process else []:
                ends.append(_START[run["type"]](run, work_dir, hyperparameters, reporter, TrainingError))
            yield tracked
        except BaseException:
            _end(ends, "failed")
            raise
        _end(ends, tracked.outcome)


@contextmanager
def _environment(values: dict[str, str]):
    """Environment variables for the body only. A job has its process to itself (a pool process per job,
    and the processes it launches), so no other job can read them meanwhile; they are put back anyway."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _end(ends: list[Callable[[str], None]], outcome: str) -> None:
    for end in reversed(ends):
        try:
            end(outcome)
        except Exception:  # the model is trained: a tracker that cannot close its run is the log's business
            log.exception("a tracker's run did not end cleanly")


def unavailable(enabled: list[str]) -> list[str]:
    """The trackers the operator enabled (FT_INTEGRATIONS) whose package this worker lacks: its jobs would
    fail, so the worker says so when it starts."""
    return [name for name in enabled if importlib.util.find_spec(name) is None]


def _package(name: str, label: str, error):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise error("integration_unavailable", f"This worker cannot log to {label}: the {name} package is not "
                    "installed here (pip install 'finetune-service[trackers]'). Ask the operator, or create the "
                    "job without this integration.") from None


def _failed(label: str, exc: Exception, secret: str = "") -> str:
    text = f"{type(exc).__name__}: {exc}"[:300]
    return (f"{label} did not start the run ({text.replace(secret, '<tracking URI>') if secret else text}). "
            "Check the names given in integrations, or ask the operator to check the worker's tracker settings.")


def _start_wandb(run, work_dir: Path, hyperparameters, reporter, error) -> Callable[[str], None]:
    wandb = _package("wandb", "Weights & Biases", error)
    try:
        active = wandb.init(
            project=run["project"], entity=run.get("entity"), name=run["name"], tags=run["tags"] or None,
            id=run["id"], resume="allow", job_type="fine-tune", config={**run["config"], "hyperparameters":
                                                                        hyperparameters},
            # Offline runs are kept where the operator's WANDB_DIR says; otherwise this job's folder holds
            # W&B's scratch files and goes with it.
            dir=None if os.environ.get("WANDB_DIR") else str(work_dir),
            # No console capture (the worker's log is not the tenant's), no code or git state of the service.
            settings=wandb.Settings(console="off", disable_git=True, save_code=False, silent=True))
    except Exception as exc:
        raise error("integration_failed", _failed("Weights & Biases", exc)) from exc
    offline = bool(getattr(active, "offline", False))
    url = None if offline else getattr(active, "url", None)
    where = "/".join(part for part in (run.get("entity"), run["project"]) if part)
    reporter.event(f"Logging to Weights & Biases: run {run['name']} in {where}"
                   + (f", {url}." if url else " (offline; the operator syncs it)." if offline else "."),
                   data={"integration": "wandb", "run_id": active.id, "url": url})

    def end(outcome: str) -> None:
        active.summary["finetune_outcome"] = outcome
        active.finish(exit_code=1 if outcome == "failed" else 0)

    return end


def _start_mlflow(run, work_dir: Path, hyperparameters, reporter, error) -> Callable[[str], None]:
    mlflow = _package("mlflow", "MLflow", error)
    uri = run["tracking_uri"]
    try:
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.set_experiment(run.get("experiment_name") or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                                           or "Default")
        # A resumed job (paused, or its worker lost) carries on the run its first attempt opened.
        earlier = mlflow.MlflowClient().search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{run['tags'][JOB_TAG]}'", max_results=1)
        if earlier:
            active = mlflow.start_run(run_id=earlier[0].info.run_id)
        else:
            active = mlflow.start_run(run_name=run["run_name"], tags=run["tags"])
            mlflow.log_params({key: str(value)[:500] for key, value in hyperparameters.items()})
    except Exception as exc:
        if mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")
        raise error("integration_failed", _failed("MLflow", exc, secret=uri)) from exc
    reporter.event(f"Logging to MLflow: run {run['run_name']} ({active.info.run_id}) in experiment "
                   f"{experiment.name}.", data={"integration": "mlflow", "run_id": active.info.run_id,
                                                "experiment": experiment.name})

    def end(outcome: str) -> None:
        flush = getattr(mlflow, "flush_async_logging", None)  # the callback logs asynchronously
        if flush is not None:
            flush()
        mlflow.end_run(status=MLFLOW_STATUS.get(outcome, "FINISHED"))

    return end


_START = {"wandb": _start_wandb, "mlflow": _start_mlflow}
