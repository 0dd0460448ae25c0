"""The ``integrations`` of a job (OpenAI's shape): experiment trackers its training logs to. The client names
runs and tags; where they go and the credentials are the operator's (docs/monitoring.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# At most one integration of each type.
MAX_INTEGRATIONS = 3
MAX_TAGS = 20

# Printable text, no control characters: names end up in other systems' UIs, URLs and logs.
_Text = r"^[^\x00-\x1f\x7f]+$"
# W&B projects and entities: letters, digits and . _ - (W&B refuses / \ # ? % : in them).
WandbName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\w.-]+$")]
RunName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_Text)]
WandbTag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_Text)]  # W&B's own bound
# MLflow tag keys: its own rule (alphanumerics, _ - . / and spaces), 250 characters at most.
MlflowTagKey = Annotated[str, StringConstraints(min_length=1, max_length=250, pattern=r"^[\w./ -]+$")]
MlflowTagValue = Annotated[str, StringConstraints(max_length=500)]


class WandbOptions(BaseModel):
    """Weights & Biases: the run is created in ``entity/project`` (the operator's W&B account)."""

    model_config = ConfigDict(extra="forbid")

    project: WandbName = Field(description="The W&B project the run is created in.")
    name: RunName | None = Field(default=None, description="The run's display name (default: the job id).")
    entity: WandbName | None = Field(default=None, description="The W&B team or user (default: the operator's).")
    tags: list[WandbTag] | None = Field(default=None, max_length=MAX_TAGS, description="Tags on the run.")


class MlflowOptions(BaseModel):
    """MLflow: the run is created on the operator's tracking server (FT_MLFLOW_TRACKING_URI)."""

    model_config = ConfigDict(extra="forbid")

    experiment_name: RunName | None = Field(default=None, description="Created if new (default: the server's "
                                                                       "default experiment).")
    run_name: RunName | None = Field(default=None, description="Default: the job id.")
    tags: dict[MlflowTagKey, MlflowTagValue] | None = Field(default=None, max_length=MAX_TAGS)


class TensorboardOptions(BaseModel):
    """TensorBoard needs no options: every job writes event files, downloadable as a result file."""

    model_config = ConfigDict(extra="forbid")


class Integration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["wandb", "mlflow", "tensorboard"]
    wandb: WandbOptions | None = None
    mlflow: MlflowOptions | None = None
    tensorboard: TensorboardOptions | None = None
