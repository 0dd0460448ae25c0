"""A job's ``integrations`` checked against what this deployment offers, before the job exists: the
experiment trackers its operator enabled (FT_INTEGRATIONS), each at most once. TensorBoard needs no
operator: every job writes event files."""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.errors import bad_request
from app.schemas.integrations import Integration

NAMES = {"wandb": "Weights & Biases", "mlflow": "MLflow", "tensorboard": "TensorBoard"}
# What a client must say for each type (W&B has no default project).
REQUIRED = {"wandb": '{"type": "wandb", "wandb": {"project": "my-project"}}'}


def checked_integrations(integrations: list[Integration] | None, settings: Settings) -> list[dict[str, Any]]:
    """The integrations as the job stores them; a 400 naming the field of the first that cannot be."""
    stored: list[dict[str, Any]] = []
    for index, integration in enumerate(integrations or []):
        param, kind = f"integrations[{index}]", integration.type
        if any(earlier["type"] == kind for earlier in stored):
            raise bad_request(f"{kind} is listed twice in integrations; give each tracker once.", f"{param}.type")
        if kind != "tensorboard" and kind not in settings.integrations:
            offered = ", ".join(["tensorboard", *settings.integrations])
            raise bad_request(f"This deployment does not log to {NAMES[kind]}: its operator has not enabled it "
                              f"(FT_INTEGRATIONS). Integrations offered here: {offered}.", f"{param}.type",
                              code="integration_unavailable")
        for other in NAMES.keys() - {kind}:
            if getattr(integration, other) is not None:
                raise bad_request(f"An integration of type {kind} takes its options under '{kind}', not "
                                  f"'{other}'.", f"{param}.{other}")
        if kind in REQUIRED and getattr(integration, kind) is None:
            raise bad_request(f"A {kind} integration needs its options, e.g. {REQUIRED[kind]}.", f"{param}.{kind}")
        tags = integration.mlflow.tags if kind == "mlflow" and integration.mlflow else None
        for key in tags or {}:
            if key.startswith("mlflow."):  # MLflow's own tags (user, source, run name…) are set by MLflow
                raise bad_request("Tags beginning with 'mlflow.' are MLflow's own; choose another name.",
                                  f"{param}.mlflow.tags.{key}")
        stored.append(integration.model_dump(exclude_none=True))
    return stored
