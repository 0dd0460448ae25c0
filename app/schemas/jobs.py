"""Request and response shapes of fine-tuning jobs (OpenAI fields plus this service's extensions)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.db.models import Checkpoint, Job

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
    lr_scheduler: Literal["auto", "linear", "cosine", "constant", "constant_with_warmup", "polynomial",
                          "cosine_with_restarts"] | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = None
    eval_every: int | Auto | None = Field(default=None, description="Evaluate every N optimiser steps.")
    checkpoint_every: int | Auto | None = Field(default=None, description="Save a resumable checkpoint every N steps.")
    early_stopping_patience: int | Auto | None = None
    completion_only_loss: bool | None = Field(default=None, description="text-generation: train on the completion "
                                                                        "/ assistant tokens only (default true).")
    packing: bool | None = Field(default=None, description="text-generation: lay a batch's examples end to end in "
                                                           "shared rows instead of padding each (default true).")
    adapter: Adapter | None = None

    def checked(self) -> dict[str, Any]:
        """Range checks that pydantic's types cannot express, each naming its field."""
        from app.errors import bad_request

        limits = {"n_epochs": (1, 100), "batch_size": (1, 4096), "learning_rate_multiplier": (1e-3, 100),
                  "learning_rate": (1e-8, 1.0), "warmup_ratio": (0.0, 0.5), "weight_decay": (0.0, 1.0),
                  "gradient_accumulation_steps": (1, 1024), "max_seq_length": (8, 32768),
                  "per_device_batch_size": (1, 4096), "devices": (1, 64),
                  "eval_every": (1, 10**7), "checkpoint_every": (1, 10**7), "early_stopping_patience": (1, 1000)}
        values = self.model_dump(exclude_none=True, exclude={"adapter"})
        for key, (lo, hi) in limits.items():
            value = values.get(key)
            if value is not None and value != "auto" and not lo <= value <= hi:
                raise bad_request(f"{key} must be between {lo} and {hi} (got {value}).",
                                  f"method.supervised.hyperparameters.{key}")
        return values


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters = Hyperparameters()


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: Supervised | None = None
    dpo: dict[str, Any] | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
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
    integrations: list[Any] | None = None
    task: str = "auto"
    column_mapping: dict[str, str] | None = None
    adapter: Adapter | None = None
    chat_template: str | None = Field(default=None, max_length=50_000,
                                      description="text-generation: a Jinja chat template for base models "
                                                  "that have none (or to replace theirs).")


def supervised_method(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI ``method`` object a job shows, carrying its resolved hyperparameters."""
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


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


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str
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
    integrations: list[Any] = []
    estimated_finish: int | None
    user_provided_suffix: str | None
    task: str
    column_mapping: dict[str, str]
    progress: Progress | None
    metrics: dict[str, Any] | None
    attempt: int

    @classmethod
    def of(cls, job: Job) -> "JobObject":
        return cls(
            id=job.id, model=job.model, created_at=job.created_at, finished_at=job.finished_at, status=job.status,
            error=JobError(**job.error) if job.error else None, fine_tuned_model=job.fine_tuned_model,
            hyperparameters=job.hyperparameters, method=job.method, organization_id=job.project_id,
            result_files=job.result_files or [], seed=job.seed, trained_tokens=job.trained_tokens,
            training_file=job.training_file, validation_file=job.validation_file, metadata=job.metadata_,
            estimated_finish=job.estimated_finish, user_provided_suffix=job.suffix, task=job.task,
            column_mapping=job.column_mapping, progress=Progress(**job.progress) if job.progress else None,
            metrics=job.metrics, attempt=job.attempt,
        )


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

    @classmethod
    def of(cls, c: Checkpoint) -> "CheckpointObject":
        return cls(id=c.id, created_at=c.created_at, fine_tuned_model_checkpoint=c.model_id, fine_tuning_job_id=c.job_id,
                   metrics=c.metrics, step_number=c.step)
