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
from app.ml.adapters import wrap
from app.ml.artifacts import SERVICE_CONFIG
from worker.callbacks import CheckpointCallback, DerivedMetricsCallback, NullReporter, ProgressCallback, Reporter

log = logging.getLogger(__name__)



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
    base_model: str = ""  # the base model's id, written next to the weights for serving


def service_config(spec: TrainingSpec, hp: dict[str, Any], metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """What inference needs that config.json does not say; written with the model and each checkpoint."""
    adapter = hp.get("adapter")
    return {"task": spec.task, "base_model": spec.base_model, "column_mapping": spec.column_mapping,
            "hyperparameters": hp, "plan": spec.plan, "metrics": metrics or {},
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
        for number, record in enumerate(iter_records(Path(path), fmt)):
            # row_id lets tasks that split one row into several windows (QA) put them back together.
            yield {"row_id": number, **task.row(record, spec.column_mapping, spec.plan)}

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

    # Task-specific hyperparameters (completion_only_loss…) reach the tokenizer through the plan.
    plan = {**spec.plan, **{k: hp[k] for k in task.default_hyperparameters if k in hp}}
    tokenizer = task.prepare_tokenizer(AutoTokenizer.from_pretrained(spec.base_model_path), plan)
    max_length = int(hp["max_seq_length"])

    train_rows = load_rows(train_file, task, spec, work_dir / "datasets")
    eval_rows = load_rows(valid_file, task, spec, work_dir / "datasets") if valid_file else None
    if len(train_rows) == 0:
        raise TrainingError("empty_training_file", "The training file has no usable rows.")
    # Rows are held out before tokenizing, so that all windows of one row land on the same side.
    held_out = holdout_rows(len(train_rows), valid_file is not None)
    if held_out:
        split = train_rows.train_test_split(test_size=held_out, seed=spec.seed, shuffle=True)
        train_rows, eval_rows = split["train"], split["test"]
        reporter.event(f"No validation file: {held_out} training rows are held out for evaluation.",
                       data={"held_out_rows": held_out})

    def tokenized(rows):
        return rows.map(lambda batch: task.tokenize(batch, tokenizer, plan, max_length), batched=True,
                        remove_columns=rows.column_names)

    train_set = tokenized(train_rows)
    eval_set = tokenized(eval_rows) if eval_rows is not None else None
    tokens_per_epoch = sum(len(ids) for ids in train_set["input_ids"])
    reporter.event(f"Tokenized {len(train_rows)} training rows into {len(train_set)} examples "
                   f"({tokens_per_epoch} tokens per epoch).",
                   data={"rows": len(train_rows), "examples": len(train_set), "tokens_per_epoch": tokens_per_epoch})

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
    model = trainer.model
    if hp.get("adapter") and hp["adapter"].get("merge"):
        model = model.merge_and_unload()  # a standalone model: the adapter folded into the base weights
    # save_pretrained rather than trainer.save_model: the latter adds training_args.bin, a pickle, and
    # everything this service hands out is safetensors + JSON. A peft model saves its adapter only.
    model.save_pretrained(str(output_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(output_dir))
    (output_dir / SERVICE_CONFIG).write_text(json.dumps(service_config(spec, hp, outcome.metrics), indent=2))
    del trainer
    _free_accelerator_memory()
    return outcome


def _fit(spec, task, tokenizer, hp, train_set, eval_set, reporter, tokens_per_epoch, progress_interval_s,
         work_dir, resume_from, extra_callbacks):
    import torch
    from transformers import (EarlyStoppingCallback, Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer,
                              TrainingArguments)

    model = task.load_model(spec.base_model_path, spec.plan)
    model.config.ft_max_seq_length = int(hp["max_seq_length"])
    if hp.get("adapter"):
        model = wrap(model, hp["adapter"], task.peft_task_type)
        trainable, total = model.get_nb_trainable_parameters()
        reporter.event(f"LoRA adapter: training {trainable:,} of {total:,} parameters "
                       f"({100 * trainable / total:.2f}%).",
                       data={"trainable_parameters": trainable, "total_parameters": total})
    on_gpu = torch.cuda.is_available()
    evaluating = eval_set is not None and hp.get("eval_every")
    checkpointing = spec.checkpoint_dir is not None and hp.get("checkpoint_every")
    early_stopping = bool(evaluating and checkpointing and hp.get("early_stopping_patience"))
    generating = task.evaluates_generations
    extra_args = {"predict_with_generate": True, "generation_max_length": int(spec.plan["max_target_length"])} \
        if generating else {}
    args = (Seq2SeqTrainingArguments if generating else TrainingArguments)(
        **extra_args,
        label_names=list(task.label_names),
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
    callbacks = [DerivedMetricsCallback(task), progress,
                 CheckpointCallback(reporter, progress, service_config(spec, hp)), *extra_callbacks]
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(hp["early_stopping_patience"])))
    def compute_metrics(p):
        return task.metrics(p.predictions, p.label_ids, spec.plan, features=eval_set, tokenizer=tokenizer)

    trainer = _in_order_evaluation(Seq2SeqTrainer if generating else Trainer)(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=task.collator(tokenizer, model, pad_to_multiple_of=8 if on_gpu else None),
        compute_metrics=compute_metrics if task.metrics_from_predictions else None,
        callbacks=callbacks,
    )
    if resume_from is not None:
        reporter.event(f"Resuming from checkpoint {Path(resume_from).name}.", data={"checkpoint": str(resume_from)})
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return trainer, progress, result


def _in_order_evaluation(trainer_class):
    """The trainer class, evaluating rows in dataset order. transformers groups evaluation batches by
    length too (a shuffled order) when training does; tasks that map predictions back to their rows
    (QA windows → examples) need the order of the dataset they were given."""
    from torch.utils.data import SequentialSampler

    class InOrderEvaluation(trainer_class):
        def _get_eval_sampler(self, eval_dataset):
            return SequentialSampler(eval_dataset) if eval_dataset is not None else None

    return InOrderEvaluation


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
