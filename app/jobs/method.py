"""The OpenAI ``method`` object a job shows: its training method, carrying its resolved hyperparameters."""

from __future__ import annotations

from typing import Any


def supervised_method(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
