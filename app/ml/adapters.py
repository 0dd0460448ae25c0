"""LoRA adapters (peft) for every task: resolved and checked against the base model's weights when
the job is created, wrapped around the model for training, loaded on top of the base for serving.
Only the adapter (and a task head the base model lacks) is stored, unless the job asks to merge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.ml.base_models import weight_shapes
from app.ml.tasks.base import FieldProblem

ADAPTER_CONFIG = "adapter_config.json"


def _default_targets(model_type: str) -> list[str] | None:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    found = DEFAULTS.get(model_type)
    return list(found) if found else None


def resolve_adapter(requested: dict[str, Any] | None, model_type: str, base_path: Path) -> dict[str, Any] | None:
    """The adapter request with every default filled in, or None for full fine-tuning."""
    if not requested:
        return None
    kind = requested.get("type", "lora")
    if kind != "lora":
        raise FieldProblem("adapter.type", f"Adapter type '{kind}' is not supported; use 'lora'.")
    r = int(requested.get("r") or 16)
    targets = requested.get("target_modules") or _default_targets(model_type)
    if not targets:
        raise FieldProblem("adapter.target_modules", f"There is no default LoRA target for '{model_type}' models; "
                                                     "name the linear layers to adapt, e.g. [\"q_proj\", \"v_proj\"].")
    targets = [targets] if isinstance(targets, str) else list(targets)
    # A module name matches a weight when it is one of the weight's dotted path components.
    components = {part for name in weight_shapes(base_path) for part in name.split(".")}
    missing = [t for t in targets if t not in components]
    if missing:
        raise FieldProblem("adapter.target_modules", f"The base model has no module named {', '.join(missing)}; "
                                                     f"names it has include {', '.join(sorted(components)[:20])}.")
    return {"type": "lora", "r": r, "alpha": float(requested.get("alpha") or 2 * r),
            "dropout": float(requested["dropout"]) if requested.get("dropout") is not None else 0.05,
            "target_modules": targets, "merge": bool(requested.get("merge", False))}


def wrap(model, adapter: dict[str, Any], peft_task_type: str):
    """The model with fresh LoRA weights; only those (and a new task head) are trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type=peft_task_type, r=adapter["r"], lora_alpha=adapter["alpha"],
                        lora_dropout=adapter["dropout"], target_modules=adapter["target_modules"])
    return get_peft_model(model, config)


def adapter_base_path(path: Path) -> str | None:
    """Where the base model was when the adapter was trained (a fallback when the id is unknown here)."""
    try:
        return json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
