"""Models as the API shows them (OpenAI's model object plus what this service knows of each), and the
Hugging Face prediction request."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="`system` for base models, the project for fine-tuned ones.")
    kind: Literal["base", "fine-tuned"]
    # Base models
    model_type: str | None = None
    fine_tunable: bool | None = None
    problem: str | None = Field(default=None, description="Why a base model cannot be fine-tuned.")
    # Fine-tuned models
    base_model: str | None = None
    parent: str | None = Field(default=None, description="The fine-tuned model or checkpoint it was trained on from "
                                                         "(absent when trained from the base model).")
    task: str | None = None
    job_id: str | None = None
    bytes: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class DeletedModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class PredictRequest(BaseModel):
    """The Hugging Face Inference API's request."""

    model_config = ConfigDict(extra="allow")  # the HF wire format also carries "options"
    inputs: Any = Field(description="One input or a list: a text, {\"text\", \"text_pair\"}, or for question "
                                    "answering {\"question\", \"context\"}.")
    parameters: dict[str, Any] = Field(default={}, description="Task parameters (top_k, max_new_tokens, stop…).")
