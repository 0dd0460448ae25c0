"""Request and response shapes of evaluations: a model (base, fine-tuned or checkpoint) scored on a file."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.schemas.jobs import JobError, Progress

# How many metric names one request may restrict its answer to: every task has fewer.
MAX_METRICS = 32


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=700, description="A base model, or a fine-tuned model (`ft:…`) or "
                       "checkpoint (`ft:…:ckpt-step-N` or `ftckpt-…`) of the project.")
    file: str = Field(min_length=1, max_length=64, description="A processed file of the project, with rows of the "
                      "model's task (for a base model: of a task whose head it has).")
    metrics: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] | None = Field(
        default=None, min_length=1, max_length=MAX_METRICS,
        description="Only these metrics (e.g. `[\"eval_accuracy\"]`); default: all of the task's.")
    reference_model: str | None = Field(default=None, min_length=1, max_length=700, description="Preference files: "
                                        "the model the rewards are measured against (default: the model's base).")
    beta: float | None = Field(default=None, ge=1e-3, le=10.0, description="Preference files: the reward scale β in "
                               "β·(log p_model − log p_reference) (default 0.1).")
    chat_template: str | None = Field(default=None, max_length=50_000, description="text-generation: a Jinja chat "
                                      "template for a base model that has none (or to replace the model's).")


class EvaluationObject(BaseModel):
    id: str
    object: Literal["evaluation"] = "evaluation"
    model: str = Field(description="The model evaluated, as the request named it.")
    base_model: str = Field(description="The base model its weights go back to.")
    reference_model: str | None = Field(description="Preference files: what the rewards were measured against.")
    file: str
    task: str
    status: str = Field(description="`queued`, `running`, `succeeded`, `failed` or `cancelled`.")
    metrics: dict[str, Any] | None = Field(description="The task's metrics (`eval_…`), once succeeded.")
    result_files: list[str] = Field(description="The per-row predictions (JSONL), once succeeded.")
    progress: Progress | None
    error: JobError | None
    note: str | None = Field(default=None, description="What the numbers stand for where it is not plain "
                             "(a reference model chosen by default).")
    created_at: int
    finished_at: int | None
