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

from app.ml.adapters import wrap
from app.ml.artifacts import SERVICE_CONFIG
from app.ml.base_models import parameter_count
from app.ml.devices import training_flops
from app.ml.tasks import get_task
from worker import runtime
from worker.callbacks import (CheckpointCallback, DerivedMetricsCallback, LastStepCallback, NullReporter,
                              ProgressCallback, Reporter)
from worker.preparation import DataFile, EmptyTrainingFile, prepare
from worker.token_cache import TokenCache

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
    # Where tokenized datasets are kept between jobs (None: not kept), and how much of the disk they may use.
    token_cache_dir: Path | None = None
    token_cache_bytes: int = 10 * 2**30
    # Entries of one namespace (a project) are only ever found by jobs of that namespace.
    token_cache_namespace: str = ""
    # Extra Trainer callbacks as "module:Class" import paths (FT_TRAINER_CALLBACKS): names, not objects,
    # so that a spec travels to the processes of a multi-process job as JSON.
    callbacks: list[str] = field(default_factory=list)


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


def _distributed() -> bool:
    """Whether this process is one of several launched together (``accelerate launch``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def train(spec: TrainingSpec, train_file: DataFile, valid_file: DataFile | None, output_dir: Path,
          reporter: Reporter | None = None, work_dir: Path | None = None, progress_interval_s: float = 2.0,
          extra_callbacks: list | None = None) -> TrainingOutcome:
    from transformers import AutoTokenizer, set_seed

    reporter = reporter or NullReporter()
    work_dir = work_dir or output_dir.parent / f"{output_dir.name}.work"
    task = get_task(spec.task)
    set_seed(spec.seed)
    requested = spec.hyperparameters

    # Operators' callbacks first: a path that does not import fails the job before any work is done.
    callbacks = [*_load_callbacks(spec.callbacks), *(extra_callbacks or [])]
    # Task-specific hyperparameters (completion_only_loss…) reach the tokenizer through the plan.
    plan = task.plan_with_options(spec.plan, requested)
    tokenizer = task.prepare_tokenizer(AutoTokenizer.from_pretrained(spec.base_model_path), plan)
    max_length = int(requested["max_seq_length"])
    cache = TokenCache(spec.token_cache_dir, spec.token_cache_bytes, spec.token_cache_namespace)
    # Several processes of one job: the first tokenizes (and fills the cache), the others then read it.
    first = _main_process_first() if _distributed() else nullcontext()
    try:
        with first:
            data = prepare(task, tokenizer, spec.base_model_path, spec.column_mapping, plan, max_length, spec.seed,
                           train_file, valid_file, work_dir, cache)
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

    flops = training_flops(parameter_count(Path(spec.base_model_path)),
                           data.tokens_per_epoch * float(requested["n_epochs"]), bool(requested.get("adapter")))
    hp = runtime.resolve(requested, task, training_flops=flops)
    resume_from = spec.resume_from
    while True:
        try:
            trainer, progress, result = _fit(spec, task, tokenizer, hp, data, reporter, progress_interval_s,
                                             work_dir, resume_from, callbacks)
            break
        except Exception as exc:
            # One process of several cannot retry alone (the others wait for it in the gradient
            # all-reduce): it exits, and the launcher restarts them all with half the batch.
            if not is_out_of_memory(exc) or _distributed():
                raise
            resume_from = _recover_from_oom(spec, hp, reporter) or resume_from

    outcome = TrainingOutcome(steps=result.global_step, hyperparameters=hp,
                              trained_tokens=int(data.tokens_per_epoch * float(hp["n_epochs"])),
                              stopped=progress.stop_requested)
    if progress.stop_requested:
        return outcome
    runtime_s = float(result.metrics.get("train_runtime") or 0.0)
    outcome.metrics = {"train_loss": float(result.training_loss), "train_runtime": round(runtime_s, 3)}
    if runtime_s:
        # Throughput of the training loop, counting real (non-pad) tokens only.
        epochs_done = result.global_step / max(1, trainer.state.max_steps) * float(hp["n_epochs"])
        tokens_per_second = data.tokens_per_epoch * epochs_done / runtime_s
        outcome.metrics["train_tokens_per_second"] = round(tokens_per_second, 1)
        # Model FLOPs per second: what job estimates on this device are calibrated with.
        parameters = sum(p.numel() for p in trainer.model.parameters())
        outcome.metrics["train_flops_per_second"] = training_flops(parameters, tokens_per_second,
                                                                   bool(hp.get("adapter")))
    if data.eval is not None:
        # The last step's scheduled evaluation already measured the final model, unless early stopping
        # went back to a better checkpoint.
        step, evaluated = progress.last_evaluation or (None, None)
        if step != result.global_step or trainer.args.load_best_model_at_end:
            evaluated = trainer.evaluate()
        outcome.metrics.update({k: float(v) for k, v in evaluated.items()
                                if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))})
    if trainer.is_world_process_zero():
        _save(trainer, tokenizer, hp, spec, outcome, output_dir)
    del trainer
    _free_accelerator_memory()
    return outcome


def _save(trainer, tokenizer, hp, spec, outcome, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hp.get("adapter") and hp["adapter"].get("merge"):
        model = model.merge_and_unload()  # a standalone model: the adapter folded into the base weights
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = True  # training ran without a key/value cache; generation wants one
    # save_pretrained rather than trainer.save_model: the latter adds training_args.bin, a pickle, and
    # everything this service hands out is safetensors + JSON. A peft model saves its adapter only.
    model.save_pretrained(str(output_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(output_dir))
    (output_dir / SERVICE_CONFIG).write_text(json.dumps(service_config(spec, hp, outcome.metrics), indent=2))


def _main_process_first():
    from accelerate import PartialState

    import torch

    return PartialState(cpu=not torch.cuda.is_available()).main_process_first()


def _fit(spec, task, tokenizer, hp, data, reporter, progress_interval_s, work_dir, resume_from, extra_callbacks):
    import torch
    from transformers import (EarlyStoppingCallback, Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer,
                              TrainingArguments)

    model = task.load_model(spec.base_model_path, spec.plan)
    model.config.ft_max_seq_length = int(hp["max_seq_length"])
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # a cache is for generation; in training it only costs memory
    if hp.get("packing"):
        from app.ml.packing import packing_works

        if not packing_works(model, model.config.vocab_size):
            hp["packing"] = False
            reporter.event(f"Packing is off: this architecture ({model.config.model_type}) does not keep packed "
                           "examples apart, so each example gets a padded row of its own.", level="warning")
    if hp.get("adapter"):
        model = wrap(model, hp["adapter"], task.peft_task_type)
        trainable, total = model.get_nb_trainable_parameters()
        reporter.event(f"LoRA adapter: training {trainable:,} of {total:,} parameters "
                       f"({100 * trainable / total:.2f}%).",
                       data={"trainable_parameters": trainable, "total_parameters": total})
    on_gpu = torch.cuda.is_available()
    collator = task.collator(tokenizer, model, pad_to_multiple_of=8 if on_gpu else None,
                             packing_length=int(hp["max_seq_length"]) if hp.get("packing") else None)
    if "gradient_accumulation_steps" not in spec.hyperparameters:
        runtime.fit_batch_to_memory(hp, model, data.train, collator, reporter)
    reporter.hyperparameters(hp)
    eval_set = data.eval
    evaluating = eval_set is not None and hp.get("eval_every")
    checkpointing = spec.checkpoint_dir is not None and hp.get("checkpoint_every")
    early_stopping = bool(evaluating and checkpointing and hp.get("early_stopping_patience"))
    generating = task.evaluates_generations
    extra_args = {"predict_with_generate": True, "generation_max_length": int(spec.plan["max_target_length"])} \
        if generating else {}
    workers = int(hp["dataloader_workers"])
    args = (Seq2SeqTrainingArguments if generating else TrainingArguments)(
        **extra_args,
        label_names=list(task.label_names),
        output_dir=str(spec.checkpoint_dir or work_dir / "trainer"),
        per_device_train_batch_size=int(hp["per_device_batch_size"]),
        per_device_eval_batch_size=int(hp["per_device_batch_size"]) * 2,
        gradient_accumulation_steps=int(hp["gradient_accumulation_steps"]),
        num_train_epochs=float(hp["n_epochs"]),
        learning_rate=float(hp["learning_rate"]),
        weight_decay=float(hp["weight_decay"]),
        warmup_steps=float(hp["warmup_ratio"]),  # transformers 5: a float below 1 is a ratio of total steps
        lr_scheduler_type=hp["lr_scheduler"],
        optim=hp["optimizer"],
        bf16=hp["precision"] == "bf16",
        fp16=hp["precision"] == "fp16",
        tf32=True if hp["tf32"] else None,
        torch_compile=bool(hp["torch_compile"]),
        # Rows of similar length share a batch, so dynamic padding wastes little.
        train_sampling_strategy="group_by_length" if hp["group_by_length"] else "random",
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_prefetch_factor=4 if workers else None,
        dataloader_pin_memory=on_gpu,
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
        use_cpu=not on_gpu,
        ddp_find_unused_parameters=False if _distributed() else None,
        # transformers would multiply every loss by the process count, expecting it to be divided by a
        # token count gathered from all processes; classification heads ignore that count, which would
        # double their gradients on two processes. DDP's gradient mean is the right scale for all tasks.
        average_tokens_across_devices=False,
    )
    samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    progress = ProgressCallback(reporter, samples_per_step, data.tokens_per_epoch / len(data.train),
                                progress_interval_s)
    callbacks = [DerivedMetricsCallback(task), *([] if early_stopping else [LastStepCallback()]), progress,
                 CheckpointCallback(reporter, progress, service_config(spec, hp)), *extra_callbacks]
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(hp["early_stopping_patience"])))

    def compute_metrics(p):
        return task.metrics(p.predictions, p.label_ids, spec.plan, features=eval_set, tokenizer=tokenizer)

    trainer = _in_order_evaluation(Seq2SeqTrainer if generating else Trainer)(
        model=model, args=args, train_dataset=data.train, eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics if task.metrics_from_predictions else None,
        callbacks=callbacks,
    )
    if resume_from is not None:
        name = Path(resume_from).name  # the folder's name only: where the worker keeps it is its own business
        reporter.event(f"Resuming from checkpoint {name}.", data={"step": int(name.rsplit("-", 1)[1])})
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


def _recover_from_oom(spec: TrainingSpec, hp: dict[str, Any], reporter: Reporter) -> Path | None:
    """Halve the per-device batch and double accumulation (same effective batch), or give up with a
    message that says what to change. Returns the newest checkpoint to resume from, if any."""
    _free_accelerator_memory()
    halve_batch(hp, reporter)
    return latest_checkpoint(spec.checkpoint_dir)


def halve_batch(hp: dict[str, Any], reporter: Reporter) -> None:
    """Half the per-device batch, twice the accumulation: the same examples per optimiser step."""
    batch = int(hp["per_device_batch_size"])
    if batch <= 1:
        raise TrainingError("out_of_memory", "The GPU ran out of memory even with a per-device batch of 1. "
                            f"Lower max_seq_length (now {hp['max_seq_length']}), use bf16/fp16 precision, or "
                            "fine-tune a smaller base model.")
    hp["per_device_batch_size"] = batch // 2
    hp["gradient_accumulation_steps"] = int(hp["gradient_accumulation_steps"]) * 2
    reporter.event(f"Out of GPU memory with a per-device batch of {batch}; retrying with "
                   f"{hp['per_device_batch_size']} and gradient_accumulation_steps "
                   f"{hp['gradient_accumulation_steps']} (same examples per optimiser step).",
                   level="warning", data={"per_device_batch_size": hp["per_device_batch_size"],
                                          "gradient_accumulation_steps": hp["gradient_accumulation_steps"]})


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
