"""A transformers Trainer put together for one attempt of a job: the model with the task's head (and a
LoRA adapter), the batch fitted to the device, the training arguments, and the callbacks that report
progress, evaluations and checkpoints. Part of the pure training core: no Celery, no database."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.ml.adapters import lora_config, prepare_quantized, quantized_load_kwargs, wrap
from worker import runtime
from worker.dpo import ProbeCollator, dpo_arguments, dpo_trainer_class, preference_collator
from worker.callbacks import (CheckpointCallback, DerivedMetricsCallback, LastStepCallback, ProgressCallback,
                              Reporter)
from worker.sampling import service_sampling


@dataclass
class Attempt:
    """What one attempt of a job trains with, besides its spec."""

    task: Any
    tokenizer: Any
    hyperparameters: dict[str, Any]  # resolved for this machine; an out-of-memory retry edits the split
    data: Any  # worker.preparation.Prepared
    reporter: Reporter
    work_dir: Path
    progress_interval_s: float
    callbacks: list  # operators' callbacks (FT_TRAINER_CALLBACKS) and a caller's own
    distributed: bool
    report_to: list[str] = field(default_factory=list)  # transformers' reporting callbacks (worker/trackers.py)


def is_dpo(spec) -> bool:
    return spec.plan.get("method") == "dpo"


def build_trainer(spec, attempt: Attempt):
    """The Trainer for ``attempt``, and its progress callback (which knows whether a stop was asked)."""
    import torch

    dpo = is_dpo(spec)
    # TRL puts a new DPO adapter on itself (it then takes the adapter switched off as the reference).
    model = _model(spec, attempt, wrap_adapter=not dpo)
    on_gpu = torch.cuda.is_available()
    hyperparameters = attempt.hyperparameters
    pad_to = 8 if on_gpu else None
    if dpo:
        collator = preference_collator(attempt.tokenizer, int(hyperparameters["max_seq_length"]), pad_to)
    else:
        collator = attempt.task.collator(attempt.tokenizer, model, pad_to_multiple_of=pad_to,
                                         packing_length=int(hyperparameters["max_seq_length"])
                                         if hyperparameters.get("packing") else None)
    if "gradient_accumulation_steps" not in spec.hyperparameters:
        runtime.fit_batch_to_memory(hyperparameters, model, attempt.data.train,
                                    ProbeCollator(collator) if dpo else collator, attempt.reporter)
    attempt.reporter.hyperparameters(hyperparameters)
    args = training_arguments(spec, attempt, on_gpu)
    callbacks, progress = _callbacks(spec, attempt, args)
    common = {"args": args, "train_dataset": attempt.data.train, "eval_dataset": attempt.data.eval,
              "processing_class": attempt.tokenizer, "data_collator": collator, "callbacks": callbacks}
    if dpo:
        adapter = hyperparameters.get("adapter")
        # A new adapter is put on by TRL (peft_config); a continued one is on the model already.
        new_adapter = adapter and spec.init_adapter is None
        trainer = dpo_trainer_class(service_sampling(trainer_class(attempt.task, dpo=True)))(
            model=model, peft_config=lora_config(adapter, attempt.task.peft_task_type) if new_adapter else None,
            **common)
        if new_adapter:
            _report_adapter(trainer.model, attempt.reporter)
        return trainer, progress

    def compute_metrics(predictions):
        return attempt.task.metrics(predictions.predictions, predictions.label_ids, spec.plan,
                                    features=attempt.data.eval, tokenizer=attempt.tokenizer)

    trainer = service_sampling(trainer_class(attempt.task))(
        model=model, compute_metrics=compute_metrics if attempt.task.metrics_from_predictions else None, **common)
    return trainer, progress


def _model(spec, attempt: Attempt, wrap_adapter: bool = True):
    """The base model with the task's head, set up for training, and wrapped in a LoRA adapter if asked."""
    task, hyperparameters, reporter = attempt.task, attempt.hyperparameters, attempt.reporter
    # QLoRA (adapter.quantization "4bit"): the base loads in 4-bit NF4 on the GPU and is readied for an
    # adapter on top; train() refused the job earlier where there is no CUDA or bitsandbytes. Empty for
    # every other job, which loads as before.
    quantized = quantized_load_kwargs(hyperparameters)
    model = task.load_model(spec.base_model_path, spec.plan, **quantized)
    if quantized:
        model = prepare_quantized(model, hyperparameters)
    model.config.ft_max_seq_length = int(hyperparameters["max_seq_length"])
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # a cache is for generation; in training it only costs memory
    if hyperparameters.get("packing"):
        from app.ml.packing import packing_works

        if not packing_works(model, model.config.vocab_size):
            hyperparameters["packing"] = False
            reporter.event(f"Packing is off: this architecture ({model.config.model_type}) does not keep packed "
                           "examples apart, so each example gets a padded row of its own.", level="warning")
    if spec.init_adapter is not None:
        # The parent's adapter, trainable again. Under DPO, TRL keeps a frozen copy of it as the
        # reference ("ref"): the policy starts where the parent ended, and is measured against it.
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(spec.init_adapter), is_trainable=True)
        _report_adapter(model, reporter)
    elif hyperparameters.get("adapter") and wrap_adapter:
        model = wrap(model, hyperparameters["adapter"], task.peft_task_type)
        _report_adapter(model, reporter)
    return model


def _report_adapter(model, reporter: Reporter) -> None:
    trainable, total = model.get_nb_trainable_parameters()
    reporter.event(f"LoRA adapter: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%).",
                   data={"trainable_parameters": trainable, "total_parameters": total})


def _schedule(spec, attempt: Attempt) -> tuple[bool, bool, bool]:
    """Whether this attempt evaluates, checkpoints and stops early."""
    hyperparameters = attempt.hyperparameters
    evaluating = attempt.data.eval is not None and bool(hyperparameters.get("eval_every"))
    checkpointing = spec.checkpoint_dir is not None and bool(hyperparameters.get("checkpoint_every"))
    early_stopping = evaluating and checkpointing and bool(hyperparameters.get("early_stopping_patience"))
    return evaluating, checkpointing, early_stopping


def training_arguments(spec, attempt: Attempt, on_gpu: bool):
    """One TrainingArguments call, an argument a line (hence its length): every choice the job made,
    resolved for this machine, as transformers takes it."""
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    hyperparameters = attempt.hyperparameters
    evaluating, checkpointing, early_stopping = _schedule(spec, attempt)
    dpo = is_dpo(spec)
    generating = attempt.task.evaluates_generations and not dpo
    arguments_class = Seq2SeqTrainingArguments if generating else TrainingArguments
    extra = {"predict_with_generate": True, "generation_max_length": int(spec.plan["max_target_length"])} \
        if generating else {}
    if dpo:
        arguments_class, extra = dpo_arguments(hyperparameters, on_gpu)
    workers = int(hyperparameters["dataloader_workers"])
    batch = int(hyperparameters["per_device_batch_size"])
    return arguments_class(
        **extra,
        label_names=[] if dpo else list(attempt.task.label_names),  # pairs have no labels column
        output_dir=str(spec.checkpoint_dir or attempt.work_dir / "trainer"),
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch * 2,
        gradient_accumulation_steps=int(hyperparameters["gradient_accumulation_steps"]),
        num_train_epochs=float(hyperparameters["n_epochs"]),
        learning_rate=float(hyperparameters["learning_rate"]),
        weight_decay=float(hyperparameters["weight_decay"]),
        warmup_steps=float(hyperparameters["warmup_ratio"]),  # transformers 5: a float below 1 is a ratio of steps
        lr_scheduler_type=hyperparameters["lr_scheduler"],
        optim=hyperparameters["optimizer"],
        bf16=hyperparameters["precision"] == "bf16",
        fp16=hyperparameters["precision"] == "fp16",
        tf32=True if hyperparameters["tf32"] else None,
        torch_compile=bool(hyperparameters["torch_compile"]),
        # Rows of similar length share a batch, so dynamic padding wastes little.
        train_sampling_strategy="group_by_length" if hyperparameters["group_by_length"] else "random",
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_prefetch_factor=4 if workers else None,
        dataloader_pin_memory=on_gpu,
        logging_steps=10,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=int(hyperparameters["eval_every"]) if evaluating else None,
        save_strategy="steps" if checkpointing else "no",
        save_steps=int(hyperparameters["checkpoint_every"]) if checkpointing else None,
        save_total_limit=spec.keep_checkpoints if checkpointing else None,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        report_to=attempt.report_to or "none",
        disable_tqdm=True,
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=not on_gpu,
        ddp_find_unused_parameters=False if attempt.distributed else None,
        # transformers would multiply every loss by the process count, expecting it to be divided by a
        # token count gathered from all processes; classification heads ignore that count, which would
        # double their gradients on two processes. DDP's gradient mean is the right scale for all tasks.
        average_tokens_across_devices=False,
    )


def _callbacks(spec, attempt: Attempt, args) -> tuple[list, ProgressCallback]:
    from transformers import EarlyStoppingCallback

    from worker.training import service_config  # training imports this module

    _, _, early_stopping = _schedule(spec, attempt)
    samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    progress = ProgressCallback(attempt.reporter, samples_per_step,
                                attempt.data.tokens_per_epoch / len(attempt.data.train), attempt.progress_interval_s)
    # Perplexity from loss is the task's derived metric; a DPO loss is no language-model loss.
    derived = [] if is_dpo(spec) else [DerivedMetricsCallback(attempt.task)]
    callbacks = [*derived, *([] if early_stopping else [LastStepCallback()]), progress,
                 CheckpointCallback(attempt.reporter, progress, service_config(spec, attempt.hyperparameters)),
                 *attempt.callbacks]
    if early_stopping:
        patience = int(attempt.hyperparameters["early_stopping_patience"])
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=patience))
    return callbacks, progress


def trainer_class(task, dpo: bool = False):
    from transformers import Seq2SeqTrainer, Trainer

    if dpo:
        from trl import DPOTrainer

        return DPOTrainer
    return Seq2SeqTrainer if task.evaluates_generations else Trainer
