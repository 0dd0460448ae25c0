"""Request and response shapes of fine-tuning jobs (OpenAI fields plus this service's extensions)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.ml.hyperparams import PRECISIONS, SCHEDULERS
from app.schemas.integrations import MAX_INTEGRATIONS, Integration

Auto = Literal["auto"]


class Adapter(BaseModel):
    """Parameter-efficient fine-tuning: train a LoRA adapter instead of every weight."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["lora"] = "lora"
    r: int | None = Field(default=None, ge=1, le=512, description="LoRA rank (default 16).")
    alpha: float | None = Field(default=None, gt=0, le=4096, description="LoRA scaling (default 2·r).")
    dropout: float | None = Field(default=None, ge=0, lt=1)
    target_modules: list[str] | str | None = Field(default=None, description="Modules to adapt (default: "
                                                                             "per architecture).")
    merge: bool = Field(default=False, description="Fold the adapter into the base weights when training ends "
                                                   "and store a standalone model.")
    quantization: Literal["4bit"] | None = Field(default=None, description="QLoRA: train on the base model "
                                                 "loaded in 4-bit NF4 (bf16 compute), about a quarter of its bf16 "
                                                 "memory. Needs a GPU worker with bitsandbytes; not with merge. "
                                                 "Served on the unquantized base like any adapter.")


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto | None = Field(default=None, description="Passes over the training file.")
    batch_size: int | Auto | None = Field(default=None, description="Examples per optimiser step.")
    learning_rate_multiplier: float | Auto | None = None
    learning_rate: float | Auto | None = None
    warmup_ratio: float | Auto | None = None
    weight_decay: float | Auto | None = None
    gradient_accumulation_steps: int | Auto | None = Field(default=None, description="Micro-batches per optimiser "
                                                          "step (default: as few as fit in device memory).")
    per_device_batch_size: int | Auto | None = Field(default=None, description="Examples per device per forward "
                                                     "pass (default: batch_size split across devices and "
                                                     "accumulation, shrunk to what fits).")
    devices: int | Auto | None = Field(default=None, description="GPUs (processes on CPU) to train on in "
                                                                 "data-parallel; default 1.")
    torch_compile: bool | Auto | None = Field(default=None, description="Compile the model with torch.compile "
                                                                        "(default: on GPU for jobs long enough "
                                                                        "to repay the compile time).")
    max_seq_length: int | Auto | None = None
    lr_scheduler: Literal[("auto", *SCHEDULERS)] | None = None
    precision: Literal[PRECISIONS] | None = None
    eval_every: int | Auto | None = Field(default=None, description="Evaluate every N optimiser steps.")
    checkpoint_every: int | Auto | None = Field(default=None, description="Save a resumable checkpoint every N steps.")
    early_stopping_patience: int | Auto | None = None
    completion_only_loss: bool | None = Field(default=None, description="text-generation: train on the completion "
                                                                        "/ assistant tokens only (default true).")
    packing: bool | None = Field(default=None, description="text-generation: lay a batch's examples end to end in "
                                                           "shared rows instead of padding each (default true).")
    group_by_length: bool | None = Field(default=None, description="Batch rows of similar length together, in a "
                                         "shuffled batch order (less padding, faster; default true). False: "
                                         "every batch a random draw of rows.")
    validation_split: float | Auto | None = Field(default=None, description="Without a validation "
                                                  "file, the fraction of the training rows held out for "
                                                  "evaluation (default auto: 5%, at most 500 rows, none under 50 "
                                                  "rows; 0: every row trains and the job reports training loss "
                                                  "only). The job shows the count as holdout_rows.")
    adapter: Adapter | None = None


class DpoHyperparameters(Hyperparameters):
    beta: float | Auto | None = Field(default=None, description="DPO: how far the policy may move from the "
                                                                "reference model; lower moves further (default 0.1).")


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters = Hyperparameters()


class Dpo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: DpoHyperparameters = DpoHyperparameters()


class Method(BaseModel):
    """OpenAI's method object. ``supervised`` trains on answers; ``dpo`` (Direct Preference Optimization)
    on pairs of a preferred and a non-preferred answer to one prompt."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: dict[str, Any] | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=500, description="A base model, or a fine-tuned model or "
                       "checkpoint of the project to train on from.")
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    # OpenAI's bounds: 16 pairs, keys up to 64 characters, values up to 512.
    metadata: dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]] \
        | None = Field(default=None, max_length=16)
    method: Method | None = None
    # The legacy top-level form the OpenAI API still accepts.
    hyperparameters: Hyperparameters | None = None
    integrations: list[Integration] | None = Field(default=None, max_length=MAX_INTEGRATIONS,
                                                   description="Experiment trackers the training logs to: "
                                                   "{\"type\": \"wandb\", \"wandb\": {\"project\", …}}, mlflow, "
                                                   "tensorboard (see docs/api.md).")
    task: str = "auto"
    column_mapping: dict[str, str] | None = None
    adapter: Adapter | None = None
    chat_template: str | None = Field(default=None, max_length=50_000,
                                      description="text-generation: a Jinja chat template for base models "
                                                  "that have none (or to replace theirs).")


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Progress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    percent: float = 0.0
    eta_seconds: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None


class JobEvaluation(BaseModel):
    """How much better the job made its model: the evaluation before the first step against the latest."""

    metric: str = Field(description="The task's headline metric (eval_accuracy, eval_perplexity, "
                                    "eval_reward_accuracy …).")
    before: float | None
    after: float | None = Field(description="The latest evaluation: the final one once the job succeeded.")
    summary: str | None = Field(description="E.g. \"eval accuracy 0.50 → 0.91\".")
    note: str | None = Field(description="What \"before\" stands for where it is not the base model's own skill "
                                         "(a new head scores at chance).")
    before_metrics: dict[str, float]


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str = Field(description="The model the job starts from: a base model, or a fine-tuned model or "
                                   "checkpoint of the project.")
    base_model: str = Field(description="The base model the job's weights go back to (equals `model` unless the "
                                        "job trains on from a fine-tuned model).")
    created_at: int
    finished_at: int | None
    status: str
    error: JobError | None
    fine_tuned_model: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    organization_id: str
    result_files: list[str]
    seed: int
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    metadata: dict[str, str] | None
    integrations: list[dict[str, Any]] = Field(default=[], description="The experiment trackers the job logs to, "
                                                                    "as asked for.")
    estimated_finish: int | None
    user_provided_suffix: str | None
    task: str
    column_mapping: dict[str, str]
    progress: Progress | None
    metrics: dict[str, Any] | None
    evaluation: JobEvaluation | None = None
    attempt: int


class EventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None = None
    seq: int


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class JobEstimate(BaseModel):
    """What a job would take, without creating it."""

    object: Literal["fine_tuning.job.estimate"] = "fine_tuning.job.estimate"
    model: str
    task: str
    hyperparameters: dict[str, Any] = Field(description="Resolved as the job would get them.")
    examples_per_epoch: int
    steps: int = Field(description="Optimiser steps in all.")
    trained_tokens: int
    parameters: int = Field(description="Parameters of the base model.")
    training_flops: float
    estimated_seconds: dict[str, float] = Field(description="Per device kind: datasheet GPUs, and the devices "
                                                            "this project's jobs ran on (measured).")
    basis: dict[str, str] = Field(description="How each device kind's seconds were estimated.")


class JobMetrics(BaseModel):
    """A job's per-step series, oldest first."""

    object: Literal["list"] = "list"
    job_id: str
    data: list[dict[str, Any]] = Field(description="One point per step: `step` and the values logged at it "
                                                   "(train_loss, learning_rate, eval_* …).")
