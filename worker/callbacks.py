"""Trainer callbacks: progress and metrics reporting, cooperative stop. They talk to a Reporter, not
to the database, so the training core stays free of Celery and SQL."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Protocol

from transformers import TrainerCallback

from app.ml.artifacts import SERVICE_CONFIG


class Reporter(Protocol):
    def progress(self, progress: dict[str, Any], metrics: dict[str, Any] | None = None) -> None: ...

    def event(self, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None: ...

    def should_stop(self) -> str | None:
        """None to go on, "cancel" to stop now, "pause" to save a checkpoint and stop."""

    def checkpoint(self, step: int, epoch: float, path: str, metrics: dict[str, Any]) -> None: ...

    def hyperparameters(self, resolved: dict[str, Any]) -> None:
        """The hyperparameters as this machine runs them (batch split, precision, compile…)."""

    def baseline(self, metric: str, metrics: dict[str, float], note: str | None) -> None:
        """The evaluation before the first step, ``metric`` its headline, ``note`` what it stands for."""


class NullReporter:
    """For running the core alone (benchmarks, tests)."""

    def progress(self, progress, metrics=None):
        pass

    def event(self, message, *, level="info", type="message", data=None):
        pass

    def should_stop(self):
        return None

    def checkpoint(self, step, epoch, path, metrics):
        pass

    def hyperparameters(self, resolved):
        pass

    def baseline(self, metric, metrics, note):
        pass


class ProgressCallback(TrainerCallback):
    def __init__(self, reporter: Reporter, samples_per_step: int, tokens_per_sample: float,
                 interval_s: float = 2.0):
        self.reporter = reporter
        self.samples_per_step = samples_per_step
        self.tokens_per_sample = tokens_per_sample
        self.interval_s = interval_s
        self.stop_requested: str | None = None
        self._started = self._last_report = self._last_stop_check = 0.0
        self.latest: dict[str, Any] = {}
        self.last_evaluation: tuple[int, dict[str, Any]] | None = None  # (step, what evaluate() returned)

    def snapshot(self, state) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        step, total = state.global_step, state.max_steps or None
        samples_per_second = step * self.samples_per_step / elapsed
        eta = (total - step) * elapsed / step if step and total else None
        return {
            "step": step, "total_steps": total, "epoch": round(float(state.epoch or 0.0), 4),
            "percent": round(100.0 * step / total, 2) if total else 0.0,
            "eta_seconds": round(eta, 1) if eta is not None else None,
            "samples_per_second": round(samples_per_second, 3),
            "tokens_per_second": round(samples_per_second * self.tokens_per_sample, 1),
        }

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = self._last_report = self._last_stop_check = time.monotonic()
        self.reporter.event(f"Training started: {state.max_steps} steps.", data={"total_steps": state.max_steps})

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        request = None
        if now - self._last_stop_check >= min(1.0, self.interval_s):
            self._last_stop_check = now
            request = self.reporter.should_stop()
        if args.world_size > 1:
            request = _agree_across_processes(request, args.device)
        if request:
            self.stop_requested = request
            control.should_training_stop = True
            # Pausing saves a checkpoint at this very step, so resuming repeats nothing.
            control.should_save = request == "pause"
        if now - self._last_report >= self.interval_s:
            self._last_report = now
            self.reporter.progress(self.snapshot(state), self.latest or None)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if "loss" in logs:
            point = {**self.snapshot(state), "train_loss": logs.pop("loss"), **logs}
            self.latest.update({"train_loss": point["train_loss"], "learning_rate": point.get("learning_rate"),
                                "step": state.global_step})
            self.reporter.event(f"Step {state.global_step}/{state.max_steps}: training loss={point['train_loss']:.4f}",
                                type="metrics", data=point)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.last_evaluation = (state.global_step, dict(metrics or {}))
        # Evaluation values keep their eval_ prefix, so they never collide with training values of a step.
        clean = {k if k.startswith("eval_") else f"eval_{k}": v for k, v in (metrics or {}).items()
                 if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second")) and k != "epoch"}
        self.latest.update(clean)
        self.reporter.event("Evaluation: " + ", ".join(f"{k.removeprefix('eval_')}={v:.4f}" for k, v in clean.items()),
                            type="metrics", data={"step": state.global_step, **clean})

    def on_train_end(self, args, state, control, **kwargs):
        self.reporter.progress(self.snapshot(state), self.latest or None)


class LastStepCallback(TrainerCallback):
    """transformers evaluates and saves a checkpoint after the last step even where that step is off
    their schedules. The worker evaluates the final model after training instead (once, and not
    counted as training time) and saves the model itself, which a last-step checkpoint (optimizer
    state included) would only duplicate. Not for early stopping: choosing the best model needs them.
    Runs before ProgressCallback, so that a pause at the last step still saves its checkpoint."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            if not (state.eval_steps and state.global_step % state.eval_steps == 0):
                control.should_evaluate = False
            if not (state.save_steps and state.global_step % state.save_steps == 0):
                control.should_save = False
        return control


STOP_CODES = (None, "cancel", "pause")


def _agree_across_processes(request: str | None, device) -> str | None:
    """The first process's stop request, seen by every process at the same step: a process that
    stopped alone would leave the others waiting forever in the next gradient exchange."""
    import torch
    import torch.distributed as dist

    code = torch.tensor([STOP_CODES.index(request)], device=device)
    dist.broadcast(code, src=0)
    return STOP_CODES[int(code.item())]


class CheckpointCallback(TrainerCallback):
    """Tells the reporter about each checkpoint once the Trainer has written (and rotated) it."""

    def __init__(self, reporter: Reporter, progress: ProgressCallback, service_config: dict[str, Any]):
        self.reporter, self.progress, self.service_config = reporter, progress, service_config

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:  # the first process writes checkpoints; the others only wait
            return
        path = f"{args.output_dir}/checkpoint-{state.global_step}"
        # Each checkpoint can be served on its own, so it carries what serving needs to know.
        Path(path, SERVICE_CONFIG).write_text(json.dumps(self.service_config))
        metrics = {k: v for k, v in self.progress.latest.items() if k != "step"}
        self.reporter.checkpoint(state.global_step, float(state.epoch or 0.0), path, metrics)


class DerivedMetricsCallback(TrainerCallback):
    """Adds the task's derived metrics (perplexity from loss) to every evaluation. It runs before the
    other callbacks and edits the dict evaluate() returns, so events and results both show them."""

    def __init__(self, task):
        self.task = task

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics is not None:
            metrics.update(self.task.derived_metrics(metrics))
