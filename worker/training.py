"""The pure training core: (spec, data files, output folder, reporter) → a trained model folder.

It imports neither Celery nor the database, so it can be tested, benchmarked and launched alone.
Everything task-specific comes from the task registry."""

from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.ml.artifacts import SERVICE_CONFIG
from app.ml.base_models import parameter_count
from app.ml.devices import training_flops
from app.ml.tasks import get_task
from worker import runtime
from worker.callbacks import NullReporter, Reporter
from worker.preparation import DataFile, EmptyTrainingFile, prepare
from worker.token_cache import TokenCache
from worker.dpo import BEFORE_TRAINING
from worker.trackers import tracking
from worker.trainer_setup import Attempt, build_trainer, is_dpo

__all__ = ["DataFile", "TrainingSpec", "TrainingError", "TrainingOutcome", "train", "latest_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class TrainingSpec:
    task: str
    base_model_path: str
    column_mapping: dict[str, str]
    plan: dict[str, Any]
    hyperparameters: dict[str, Any]
    seed: int = 42
    # Where resumable checkpoints go (None: no checkpoints), how many to keep, and one to resume from.
    checkpoint_dir: Path | None = None
    keep_checkpoints: int = 3
    resume_from: Path | None = None
    base_model: str = ""  # the base model's id, written next to the weights for serving
    # Training on from a fine-tuned LoRA model: its adapter folder, loaded trainable onto the base. (A
    # full model trained on needs nothing here: base_model_path is then that model's own folder.)
    init_adapter: Path | None = None
    continues: bool = False  # from a fine-tuned model or checkpoint: its head is trained, not new
    # Where tokenized datasets are kept between jobs (None: not kept), and how much of the disk they may use.
    token_cache_dir: Path | None = None
    token_cache_bytes: int = 10 * 2**30
    # Entries of one namespace (a project) are only ever found by jobs of that namespace.
    token_cache_namespace: str = ""
    # Extra Trainer callbacks as "module:Class" import paths (FT_TRAINER_CALLBACKS): names, not objects,
    # so that a spec travels to the processes of a multi-process job as JSON.
    callbacks: list[str] = field(default_factory=list)
    # Where TensorBoard event files go (None: none are written), and the W&B / MLflow runs to log to
    # (worker/trackers.py: tracker_runs), as JSON like the rest of the spec.
    tensorboard_dir: Path | None = None
    integrations: list[dict[str, Any]] = field(default_factory=list)


def service_config(spec: TrainingSpec, hyperparameters: dict[str, Any],
                   metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """What inference needs that config.json does not say; written with the model and each checkpoint."""
    adapter = hyperparameters.get("adapter")
    return {"task": spec.task, "base_model": spec.base_model, "column_mapping": spec.column_mapping,
            "hyperparameters": hyperparameters, "plan": spec.plan, "metrics": metrics or {},
            # A merged adapter leaves a standalone model: serving needs no base.
            "adapter": adapter if adapter and not adapter.get("merge") else None}


@dataclass
class TrainingOutcome:
    steps: int
    trained_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None  # "cancel" or "pause" when training stopped early on request
    hyperparameters: dict[str, Any] = field(default_factory=dict)


class TrainingError(Exception):
    """A failure the user can act on; ``code`` and the message end up in the job's ``error``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _distributed() -> bool:
    """Whether this process is one of several launched together (``accelerate launch``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def train(spec: TrainingSpec, train_file: DataFile, valid_file: DataFile | None, output_dir: Path,
          reporter: Reporter | None = None, work_dir: Path | None = None, progress_interval_s: float = 2.0,
          extra_callbacks: list | None = None) -> TrainingOutcome:
    from transformers import set_seed

    runtime.require_quantization_support(spec.hyperparameters)  # before any work: QLoRA needs a CUDA GPU
    reporter = reporter or NullReporter()
    work_dir = work_dir or output_dir.parent / f"{output_dir.name}.work"
    task = get_task(spec.task)
    set_seed(spec.seed)
    # Operators' callbacks first: a path that does not import fails the job before any work is done.
    callbacks = [*_load_callbacks(spec.callbacks), *(extra_callbacks or [])]
    tokenizer, data = _prepared_data(spec, task, train_file, valid_file, work_dir, reporter)
    requested = spec.hyperparameters
    flops = training_flops(parameter_count(Path(spec.base_model_path)),
                           data.tokens_per_epoch * float(requested["n_epochs"]), bool(requested.get("adapter")),
                           reference=is_dpo(spec))
    hyperparameters = runtime.runtime_choices(requested, task, training_flops=flops)
    first = int(os.environ.get("RANK", "0")) == 0
    with tracking(spec.integrations, spec.tensorboard_dir, work_dir, hyperparameters, reporter, first) as trackers:
        attempt = Attempt(task, tokenizer, hyperparameters, data, reporter, work_dir, progress_interval_s,
                          [*callbacks, *trackers.callbacks], _distributed(), trackers.report_to)
        trainer, progress, result = _fit(spec, attempt)
        hyperparameters = attempt.hyperparameters
        outcome = TrainingOutcome(steps=result.global_step, hyperparameters=hyperparameters,
                                  trained_tokens=int(data.tokens_per_epoch * float(hyperparameters["n_epochs"])),
                                  stopped=progress.stop_requested)
        if progress.stop_requested:
            trackers.outcome = "cancelled" if progress.stop_requested == "cancel" else "paused"
            return outcome
        outcome.metrics = _final_metrics(trainer, progress, result, attempt)  # logged to the trackers too
        if trainer.is_world_process_zero():
            _save(trainer, tokenizer, hyperparameters, spec, outcome, output_dir)
    del trainer
    _free_accelerator_memory()
    return outcome


def _prepared_data(spec: TrainingSpec, task, train_file: DataFile, valid_file: DataFile | None, work_dir: Path,
                   reporter: Reporter):
    """The task's tokenizer, and the files tokenized (or found in the tokenization cache), told to the
    reporter."""
    from transformers import AutoTokenizer

    # Task-specific hyperparameters (completion_only_loss…) reach the tokenizer through the plan.
    plan = task.plan_with_options(spec.plan, spec.hyperparameters)
    tokenizer = task.prepare_tokenizer(AutoTokenizer.from_pretrained(spec.base_model_path), plan)
    cache = TokenCache(spec.token_cache_dir, spec.token_cache_bytes, spec.token_cache_namespace)
    # Several processes of one job: the first tokenizes (and fills the cache), the others then read it.
    first = _main_process_first() if _distributed() else nullcontext()
    try:
        with first:
            data = prepare(task, tokenizer, spec.base_model_path, spec.column_mapping, plan,
                           int(spec.hyperparameters["max_seq_length"]), spec.seed, train_file, valid_file, work_dir,
                           cache, spec.hyperparameters.get("validation_split"))
    except EmptyTrainingFile:
        raise TrainingError("empty_training_file", "The training file has no usable rows.") from None
    if data.held_out:
        reporter.event(f"No validation file: {data.held_out} training rows are held out for evaluation.",
                       data={"held_out_rows": data.held_out})
    reporter.event(f"Tokenized {data.rows} training rows into {len(data.train)} examples "
                   f"({data.tokens_per_epoch} tokens per epoch)" + (", from the tokenization cache." if data.from_cache
                                                                   else "."),
                   data={"rows": data.rows, "examples": len(data.train), "tokens_per_epoch": data.tokens_per_epoch,
                         "from_cache": data.from_cache})
    return tokenizer, data


def _fit(spec: TrainingSpec, attempt: Attempt):
    """Trains to the end, or to a stop asked for. On running out of GPU memory, starts again from the
    newest checkpoint with half the per-device batch (and twice the accumulation)."""
    resume_from = spec.resume_from
    measured_before = resume_from is not None  # a resumed job measured its "before" on its first run
    while True:
        try:
            trainer, progress = build_trainer(spec, attempt)
            if not measured_before:
                _evaluate_before_training(trainer, progress, spec, attempt)
                measured_before = True
            if resume_from is not None:
                name = Path(resume_from).name  # the folder's name only: where the worker keeps it is its own
                attempt.reporter.event(f"Resuming from checkpoint {name}.", data={"step": int(name.rsplit("-", 1)[1])})
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            return trainer, progress, result
        except Exception as exc:
            # One process of several cannot retry alone (the others wait for it in the gradient
            # all-reduce): it exits, and the launcher restarts them all with half the batch.
            if not is_out_of_memory(exc) or attempt.distributed:
                raise
            resume_from = _recover_from_oom(spec, attempt.hyperparameters, attempt.reporter) or resume_from


def _evaluate_before_training(trainer, progress, spec: TrainingSpec, attempt: Attempt) -> None:
    """The model's score before the first step, on the evaluation rows: the "before" of the job's
    "before → after". Evaluated for real, except under DPO, where it is known (worker/dpo.py)."""
    if attempt.data.eval is None:
        return
    task, reporter = attempt.task, attempt.reporter
    if is_dpo(spec):
        metric, metrics = "eval_reward_accuracy", dict(BEFORE_TRAINING)
        note = ("Before training the policy is its own reference, so every pair ties: reward accuracy 0.5 "
                "(chance), margin 0, loss ln 2.")
        reporter.event("Before training: " + _listed(metrics), type="metrics", data={"step": 0, **metrics})
    else:
        metric = task.headline_metric
        # Reported by the progress callback like any evaluation, as step 0 of the metrics series.
        metrics = {k: float(v) for k, v in trainer.evaluate().items()
                   if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second")) and k != "epoch"}
        note = (f"The {task.name} head is new (untrained) before the first step, so this is chance level."
                if task.head_is_new and not spec.continues else None)
        # The training's own "latest evaluation" starts with its first scheduled one.
        progress.latest.clear()
        progress.last_evaluation = None
    reporter.baseline(metric, metrics, note)


def _listed(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k.removeprefix('eval_')}={v:.4f}" for k, v in metrics.items())


def _final_metrics(trainer, progress, result, attempt: Attempt) -> dict[str, float]:
    """The final loss, the training loop's throughput (what job estimates on this device are calibrated
    with) and the final model's evaluation."""
    hyperparameters, data = attempt.hyperparameters, attempt.data
    runtime_s = float(result.metrics.get("train_runtime") or 0.0)
    metrics = {"train_loss": float(result.training_loss), "train_runtime": round(runtime_s, 3)}
    if runtime_s:
        # Throughput of the training loop, counting real (non-pad) tokens only.
        epochs_done = result.global_step / max(1, trainer.state.max_steps) * float(hyperparameters["n_epochs"])
        tokens_per_second = data.tokens_per_epoch * epochs_done / runtime_s
        metrics["train_tokens_per_second"] = round(tokens_per_second, 1)
        parameters = sum(p.numel() for p in trainer.model.parameters())
        metrics["train_flops_per_second"] = training_flops(parameters, tokens_per_second,
                                                           bool(hyperparameters.get("adapter")))
    if data.eval is not None:
        # The last step's scheduled evaluation already measured the final model, unless early stopping
        # went back to a better checkpoint.
        step, evaluated = progress.last_evaluation or (None, None)
        if step != result.global_step or trainer.args.load_best_model_at_end:
            evaluated = trainer.evaluate()
        metrics.update({k: float(v) for k, v in evaluated.items()
                        if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))})
    return metrics


def _save(trainer, tokenizer, hyperparameters: dict[str, Any], spec: TrainingSpec, outcome: TrainingOutcome,
          output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hyperparameters.get("adapter") and hyperparameters["adapter"].get("merge"):
        model = model.merge_and_unload()  # a standalone model: the adapter folded into the base weights
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = True  # training ran without a key/value cache; generation wants one
    # save_pretrained rather than trainer.save_model: the latter adds training_args.bin, a pickle, and
    # everything this service hands out is safetensors + JSON. A peft model saves its adapter only: the
    # trained one, not the frozen copy DPO may keep of it as its reference.
    extra = {"selected_adapters": ["default"]} if "ref" in (getattr(model, "peft_config", None) or {}) else {}
    model.save_pretrained(str(output_dir), safe_serialization=True, **extra)
    tokenizer.save_pretrained(str(output_dir))
    (output_dir / SERVICE_CONFIG).write_text(json.dumps(service_config(spec, hyperparameters, outcome.metrics),
                                                        indent=2))


def _main_process_first():
    from accelerate import PartialState

    import torch

    return PartialState(cpu=not torch.cuda.is_available()).main_process_first()


def _load_callbacks(paths: list[str]) -> list:
    import importlib

    callbacks = []
    for path in paths:
        module, _, name = path.partition(":")
        try:
            callbacks.append(getattr(importlib.import_module(module), name)())
        except Exception as exc:
            raise TrainingError("bad_trainer_callback", f"The worker's trainer callback '{path}' could not be "
                                f"created ({type(exc).__name__}: {exc}); fix FT_TRAINER_CALLBACKS.") from exc
    return callbacks


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(exc)


def _recover_from_oom(spec: TrainingSpec, hyperparameters: dict[str, Any], reporter: Reporter) -> Path | None:
    """Halve the per-device batch and double accumulation (same effective batch), or give up with a
    message that says what to change. Returns the newest checkpoint to resume from, if any."""
    _free_accelerator_memory()
    halve_batch(hyperparameters, reporter)
    return latest_checkpoint(spec.checkpoint_dir)


def halve_batch(hyperparameters: dict[str, Any], reporter: Reporter) -> None:
    """Half the per-device batch, twice the accumulation: the same examples per optimiser step."""
    batch = int(hyperparameters["per_device_batch_size"])
    if batch <= 1:
        raise TrainingError("out_of_memory", "The GPU ran out of memory even with a per-device batch of 1. "
                            f"Lower max_seq_length (now {hyperparameters['max_seq_length']}), use bf16/fp16 "
                            "precision, or fine-tune a smaller base model.")
    hyperparameters["per_device_batch_size"] = batch // 2
    hyperparameters["gradient_accumulation_steps"] = int(hyperparameters["gradient_accumulation_steps"]) * 2
    split = {key: hyperparameters[key] for key in ("per_device_batch_size", "gradient_accumulation_steps")}
    reporter.event(f"Out of GPU memory with a per-device batch of {batch}; retrying with "
                   f"{split['per_device_batch_size']} and gradient_accumulation_steps "
                   f"{split['gradient_accumulation_steps']} (same examples per optimiser step).",
                   level="warning", data=split)


def latest_checkpoint(directory: Path | None) -> Path | None:
    if directory is None or not directory.is_dir():
        return None
    found = [p for p in directory.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
