"""What the client commands print: rich tables for people, the API's raw JSON for scripts (``--json``).
Values from the service are shown as plain text (never read as rich markup)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)  # progress bars and messages: stdout stays the answer alone

BLOCKS = "▁▂▃▄▅▆▇█"
TERMINAL = {"succeeded": 0, "failed": 1, "cancelled": 2}  # a finished job's status → `follow`'s exit code
STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "paused": "magenta"}


def print_json(value: Any, *, compact: bool = False) -> None:
    """The API's JSON as it came: one line per value with ``compact`` (JSON Lines), else indented."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=None if compact else 2) + "\n")
    sys.stdout.flush()


def emit(value: Any, json_out: bool, human: Any) -> None:
    """Every command's answer: the API's JSON for scripts (--json), else ``human`` (a rich renderable or
    text) for people."""
    if json_out:
        print_json(value)
    else:
        out.print(human)


def error(message: str) -> None:
    err.print(Text.assemble(("error: ", "bold red"), message))


def when(timestamp: int | None, seconds: bool = True) -> str:
    """Local time, as people read it."""
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def status(value: str | None) -> Text:
    return Text(value or "-", style=STATUS_STYLE.get(value or "", ""))


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None,
          fold: Sequence[str] = ()) -> Table:
    """Cells whole: the columns in ``fold`` (free text) wrap onto more lines, the others (ids, statuses,
    numbers, dates) never do, and the first (an id, to be copied) is never shortened."""
    cells = [[cell if isinstance(cell, Text) else Text(str(cell)) for cell in row] for row in rows]
    widest_id = max((len(row[0]) for row in cells), default=0)
    rest = (Column(name, overflow="fold", min_width=min(10, len(name) + 4)) if name in fold
            else Column(name, no_wrap=True) for name in columns[1:])
    grid = Table(Column(columns[0], no_wrap=True, min_width=max(widest_id, len(columns[0]))), *rest,
                 title=title, title_justify="left")
    for row in cells:
        grid.add_row(*row)
    return grid


def fields(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> Table:
    """A two-column table of name → value, leaving out values that are absent."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in pairs:
        if value not in (None, "", [], {}):
            grid.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    if title:
        wrapper = Table.grid()
        wrapper.add_row(Text(title, style="bold underline"))
        wrapper.add_row(grid)
        return wrapper
    return grid


def sparkline(values: Sequence[float]) -> str:
    """One block per value, scaled between the lowest and the highest shown: ▁ lowest, █ highest."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high - low < 1e-12:
        return BLOCKS[3] * len(values)
    return "".join(BLOCKS[round((v - low) / (high - low) * (len(BLOCKS) - 1))] for v in values)


# --- files ----------------------------------------------------------------------------------------

def file_summary(f: dict) -> Table:
    mapping = ", ".join(f"{role}={column}" for role, column in (f.get("detected_column_mapping") or {}).items())
    return fields([
        ("id", f["id"]), ("file", f.get("filename")), ("status", status(f.get("status"))),
        ("format", f.get("format")), ("bytes", size(f.get("bytes"))), ("rows", f.get("rows")),
        ("columns", ", ".join(f.get("columns") or [])),
        ("detected task", f.get("detected_task") or "none (name a task and column_mapping when creating a job)"),
        ("column mapping", mapping), ("sha256", f.get("sha256")), ("created", when(f.get("created_at"))),
    ])


def validation_table(f: dict) -> Table | None:
    """Every problem the scan listed, errors first, with where it is (line, column)."""
    validation = f.get("validation") or {}
    problems = [("error", p) for p in validation.get("errors", [])] + \
               [("warning", p) for p in validation.get("warnings", [])]
    if not problems:
        return None
    rows = [(Text(kind, style="red" if kind == "error" else "yellow"), number(p.get("line")), p.get("column") or "-",
             p["message"]) for kind, p in problems]
    more = validation.get("errors_not_listed")
    title = "Validation" + (f" ({more} more errors not listed)" if more else "")
    return table(("", "line", "column", "message"), rows, title=title, fold=("column", "message"))


def files_table(files: Iterable[dict]) -> Table:
    return table(("id", "filename", "status", "rows", "task"), (
        (f["id"], f.get("filename"), status(f.get("status")), f.get("rows"), f.get("detected_task") or "-")
        for f in files), fold=("filename", "task"))


# --- jobs -----------------------------------------------------------------------------------------

def progress_text(job: dict) -> str:
    progress = job.get("progress") or {}
    if not progress.get("total_steps"):
        return "-"
    return f"{progress.get('step', 0)}/{progress['total_steps']} ({progress.get('percent', 0):.0f}%)"


def jobs_table(jobs: Iterable[dict]) -> Table:
    def done(job: dict) -> str:
        percent = (job.get("progress") or {}).get("percent")
        return f"{percent:.0f}%" if percent is not None else "-"

    return table(("id", "status", "model", "done", "fine-tuned model"), (
        (j["id"], status(j["status"]), j["model"], done(j), j.get("fine_tuned_model") or "-") for j in jobs),
        fold=("model", "fine-tuned model"))


def job_details(job: dict) -> Table:
    error_info = job.get("error") or {}
    evaluation = (job.get("evaluation") or {}).get("summary")
    hyper = ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}"
                      for k, v in (job.get("hyperparameters") or {}).items() if v is not None)
    metrics = ", ".join(f"{k}={number(v)}" for k, v in (job.get("metrics") or {}).items())
    return fields([
        ("id", job["id"]), ("status", status(job["status"])), ("model", job["model"]), ("task", job.get("task")),
        ("training file", job.get("training_file")), ("validation file", job.get("validation_file")),
        ("progress", progress_text(job)), ("fine-tuned model", job.get("fine_tuned_model")),
        ("evaluation", evaluation), ("metrics", metrics), ("hyperparameters", hyper),
        ("error", f"{error_info.get('code')}: {error_info.get('message')}" if error_info else None),
        ("attempt", job.get("attempt")), ("created", when(job.get("created_at"))),
        ("finished", when(job.get("finished_at")) if job.get("finished_at") else None),
    ])


def outcome(job: dict) -> Text:
    """One line on how a finished job ended."""
    state = job["status"]
    if state == "succeeded":
        summary = (job.get("evaluation") or {}).get("summary")
        return Text.assemble(("✓ succeeded", "bold green"), f": model {job.get('fine_tuned_model')}",
                             f" ({summary})" if summary else "")
    if state == "failed":
        error_info = job.get("error") or {}
        return Text.assemble(("✗ failed", "bold red"), f": {error_info.get('code')}: {error_info.get('message')}")
    if state == "cancelled":
        return Text("■ cancelled", style="bold yellow")
    return Text(state)


# --- models ---------------------------------------------------------------------------------------

def models_table(models: Iterable[dict]) -> Table:
    def note(m: dict) -> str:
        if m.get("kind") == "base":
            return "fine-tunable" if m.get("fine_tunable") else (m.get("problem") or "not fine-tunable")
        return f"{m.get('task')} from {m.get('base_model')}, {size(m.get('bytes'))}"

    return table(("id", "kind", "about"), ((m["id"], m.get("kind"), note(m)) for m in models), fold=("about",))


def model_details(model: dict) -> Table:
    return fields([(name, size(model[name]) if name == "bytes" else model.get(name)) for name in (
        "id", "kind", "owned_by", "model_type", "fine_tunable", "problem", "task", "base_model", "parent", "job_id",
        "bytes") if name in model] + [("created", when(model.get("created")))])
