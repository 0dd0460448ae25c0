"""The OpenAI ``method`` object a job shows: its training method, carrying its resolved hyperparameters."""

from __future__ import annotations

from typing import Any


def method_object(kind: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """``{"type": "dpo", "dpo": {"hyperparameters": {…}}}``, as OpenAI's job objects show it."""
    return {"type": kind, kind: {"hyperparameters": hyperparameters}}


def method_type(method: dict[str, Any] | None) -> str:
    return (method or {}).get("type") or "supervised"
