"""The pure training core: (spec, data files, output folder, reporter) → a trained model folder.

It imports neither Celery nor the database, so it can be tested, benchmarked and launched alone.
Everything task-specific comes from the task registry."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.data.scan import iter_records
from app.ml.tasks import get_task
from app.ml.hyperparams import holdout_rows
from worker.callbacks import CheckpointCallback, NullReporter, ProgressCallback, Reporter

log = logging.getLogger(__name__)

# Written next to the weights: everything inference needs to know that config.json does not say.
SERVICE_CONFIG = "finetune_service.json"


@dataclass
class DataFile:
    path: Path
    format: str


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


def resolve_precision(requested: str) -> str:
    import torch

    if requested != "auto":
        if requested in ("bf16", "fp16") and not torch.cuda.is_available():
            return "fp32"  # mixed precision is a GPU feature; on CPU it would only slow down or fail
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def load_rows(data: DataFile, task, spec: TrainingSpec, cache_dir: Path | None):
    """A file → a ``datasets.Dataset`` of the task's canonical columns, written to Arrow on disk as it
    is read (never held whole in memory), through the same reader that validated the file."""
    from datasets import Dataset

    def rows(path: str, fmt: str):
        for record in iter_records(Path(path), fmt):
            yield task.row(record, spec.column_mapping, spec.plan)

    return Dataset.from_generator(rows, gen_kwargs={"path": str(data.path), "fmt": data.format},
                                  cache_dir=str(cache_dir) if cache_dir else None)


def train(spec: TrainingSpec, train_file: DataFile, valid_file: DataFile | None, output_dir: Path,
          reporter: Reporter | None = None, work_dir: Path | None = None, progress_interval_s: float = 2.0,
          extra_callbacks: list | None = None) -> TrainingOutcome:
    from transformers import AutoTokenizer, set_seed

    reporter = reporter or NullReporter()
    work_dir = work_dir or output_dir.parent / f"{output_dir.name}.work"
    task = get_task(spec.task)
    hp = dict(spec.hyperparameters)
    hp["precision"] = resolve_precision(hp.get("precision", "auto"))
    set_seed(spec.seed)

    tokenizer = AutoTokenizer.from_pretrained(spec.base_model_path)
    max_length = int(hp["max_seq_length"])

    def tokenized(data: DataFile):
        dataset = load_rows(data, task, spec, work_dir / "datasets")
        return dataset.map(lambda batch: task.tokenize(batch, tokenizer, spec.plan, max_length), batched=True,
                           remove_columns=[c for c in dataset.column_names if c != "labels"])

    train_set = tokenized(train_file)
    eval_set = tokenized(valid_file) if valid_file else None
    if len(train_set) == 0:
        raise TrainingError("empty_training_file", "The training file has no usable rows.")
    held_out = holdout_rows(len(train_set), valid_file is not None)
    if held_out:
        split = train_set.train_test_split(test_size=held_out, seed=spec.seed, shuffle=True)
        train_set, eval_set = split["train"], split["test"]
        reporter.event(f"No validation file: {held_out} training rows are held out for evaluation.",
                       data={"held_out_rows": held_out})
    tokens_per_epoch = sum(len(ids) for ids in train_set["input_ids"])
    reporter.event(f"Tokenized {len(train_set)} training rows ({tokens_per_epoch} tokens per epoch).",
                   data={"rows": len(train_set), "tokens_per_epoch": tokens_per_epoch})

    resume_from = spec.resume_from
    while True:
        try:
            trainer, progress, result = _fit(spec, task, tokenizer, hp, train_set, eval_set, reporter,
                                             tokens_per_epoch, progress_interval_s, work_dir, resume_from,
                                             extra_callbacks or [])
            break
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            resume_from = _recover_from_oom(spec, hp, reporter) or resume_from

    outcome = TrainingOutcome(steps=result.global_step, hyperparameters=hp,
                              trained_tokens=int(tokens_per_epoch * float(hp["n_epochs"])),
                              stopped=progress.stop_requested)
    if progress.stop_requested:
        return outcome
    outcome.metrics = {"train_loss": float(result.training_loss)}
    if eval_set is not None:
        evaluated = trainer.evaluate()
        outcome.metrics.update({k: float(v) for k, v in evaluated.items()
                                if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))})
    output_dir.mkdir(parents=True, exist_ok=True)
    # save_pretrained rather than trainer.save_model: the latter adds training_args.bin, a pickle, and
    # everything this service hands out is safetensors + JSON.
    trainer.model.save_pretrained(str(output_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(output_dir))
    (output_dir / SERVICE_CONFIG).write_text(json.dumps({
        "task": spec.task, "column_mapping": spec.column_mapping, "hyperparameters": hp, "plan": spec.plan,
        "metrics": outcome.metrics,
    }, indent=2))
    del trainer
    _free_accelerator_memory()
    return outcome


def _fit(spec, task, tokenizer, hp, train_set, eval_set, reporter, tokens_per_epoch, progress_interval_s,
         work_dir, resume_from, extra_callbacks):
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    model = task.load_model(spec.base_model_path, spec.plan)
    model.config.ft_max_seq_length = int(hp["max_seq_length"])
    on_gpu = torch.cuda.is_available()
    evaluating = eval_set is not None and hp.get("eval_every")
    checkpointing = spec.checkpoint_dir is not None and hp.get("checkpoint_every")
    early_stopping = bool(evaluating and checkpointing and hp.get("early_stopping_patience"))
    args = TrainingArguments(
        output_dir=str(spec.checkpoint_dir or work_dir / "trainer"),
        per_device_train_batch_size=int(hp["batch_size"]),
        per_device_eval_batch_size=int(hp["batch_size"]) * 2,
        gradient_accumulation_steps=int(hp["gradient_accumulation_steps"]),
        num_train_epochs=float(hp["n_epochs"]),
        learning_rate=float(hp["learning_rate"]),
        weight_decay=float(hp["weight_decay"]),
        warmup_steps=float(hp["warmup_ratio"]),  # transformers 5: a float below 1 is a ratio of total steps
        lr_scheduler_type=hp["lr_scheduler"],
        bf16=hp["precision"] == "bf16",
        fp16=hp["precision"] == "fp16",
        tf32=True if on_gpu and torch.cuda.get_device_capability()[0] >= 8 else None,
        # Rows of similar length share a batch, so dynamic padding wastes little.
        train_sampling_strategy="group_by_length",
        logging_steps=10,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=int(hp["eval_every"]) if evaluating else None,
        save_strategy="steps" if checkpointing else "no",
        save_steps=int(hp["checkpoint_every"]) if checkpointing else None,
        save_total_limit=spec.keep_checkpoints if checkpointing else None,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        report_to="none",
        disable_tqdm=True,
        seed=spec.seed,
        data_seed=spec.seed,
        dataloader_pin_memory=on_gpu,
        use_cpu=not on_gpu,
    )
    samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    progress = ProgressCallback(reporter, samples_per_step, tokens_per_epoch / len(train_set), progress_interval_s)
    callbacks = [progress, CheckpointCallback(reporter, progress), *extra_callbacks]
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(hp["early_stopping_patience"])))
    trainer = Trainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=task.collator(tokenizer, pad_to_multiple_of=8 if on_gpu else None),
        compute_metrics=lambda p: task.metrics(p.predictions, p.label_ids, spec.plan),
        callbacks=callbacks,
    )
    if resume_from is not None:
        reporter.event(f"Resuming from checkpoint {Path(resume_from).name}.", data={"checkpoint": str(resume_from)})
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return trainer, progress, result


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(exc)


def _recover_from_oom(spec: TrainingSpec, hp: dict[str, Any], reporter: Reporter) -> Path | None:
    """Halve the per-device batch and double accumulation (same effective batch), or give up with a
    message that says what to change. Returns the newest checkpoint to resume from, if any."""
    _free_accelerator_memory()
    batch = int(hp["batch_size"])
    if batch <= 1:
        raise TrainingError("out_of_memory", "The GPU ran out of memory even with a per-device batch of 1. "
                            f"Lower max_seq_length (now {hp['max_seq_length']}), use bf16/fp16 precision, or "
                            "fine-tune a smaller base model.")
    hp["batch_size"] = batch // 2
    hp["gradient_accumulation_steps"] = int(hp["gradient_accumulation_steps"]) * 2
    reporter.event(f"Out of GPU memory with batch_size {batch}; retrying with batch_size {hp['batch_size']} and "
                   f"gradient_accumulation_steps {hp['gradient_accumulation_steps']} (same effective batch).",
                   level="warning", data={"batch_size": hp["batch_size"],
                                          "gradient_accumulation_steps": hp["gradient_accumulation_steps"]})
    return latest_checkpoint(spec.checkpoint_dir)


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
