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
# How a job's base model may be quantized under its adapter while training (QLoRA); serving always
# loads the base unquantized (docs/models.md says why).
QUANTIZATIONS = ("4bit",)


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
    quantization = requested.get("quantization")
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise FieldProblem("adapter.quantization", f"adapter.quantization '{quantization}' is not supported; use "
                                                   "'4bit' (a 4-bit NF4 base, GPU only) or leave it out.")
    merge = bool(requested.get("merge", False))
    if quantization and merge:
        raise FieldProblem("adapter.merge", "An adapter trained on a 4-bit base cannot be merged: merging into the "
                                            "4-bit base would round the merged weights to 4 bits. Train with "
                                            "quantization and serve the adapter (merge false), or merge without "
                                            "quantization.")
    return {"type": "lora", "r": r, "alpha": float(requested.get("alpha") or 2 * r),
            "dropout": float(requested["dropout"]) if requested.get("dropout") is not None else 0.05,
            "target_modules": targets, "merge": merge, "quantization": quantization}


def quantized_load_kwargs(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The from_pretrained arguments that load a job's base model for QLoRA, or {} for a job without
    quantization: NF4 weights (the 4-bit type fitted to normally distributed weights), double quantization
    (the per-block scales quantized too: ~0.4 bit/parameter less), bf16 compute, and the whole model on
    this process's GPU (bitsandbytes quantizes while loading, on the device)."""
    adapter = hyperparameters.get("adapter") or {}
    if adapter.get("quantization") != "4bit":
        return {}
    import os

    import torch
    from transformers import BitsAndBytesConfig

    # fp16 on GPUs without bf16 (T4, V100), as the worker's precision choice there.
    compute = torch.float16 if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else torch.bfloat16
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute)
    # One GPU per process under a multi-process launch (LOCAL_RANK), so each loads its own copy.
    return {"quantization_config": config, "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))},
            "dtype": compute}


def prepare_quantized(model, hyperparameters: dict[str, Any]):
    """A 4-bit base made trainable under an adapter: frozen, its few unquantized weights (norms,
    embeddings, a task head) in fp32 for stable updates. Gradient checkpointing stays what the job chose
    (peft would switch it on by default)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=bool(hyperparameters.get("gradient_checkpointing", False)))


def lora_config(adapter: dict[str, Any], peft_task_type: str):
    from peft import LoraConfig

    return LoraConfig(task_type=peft_task_type, r=adapter["r"], lora_alpha=adapter["alpha"],
                      lora_dropout=adapter["dropout"], target_modules=adapter["target_modules"])


def wrap(model, adapter: dict[str, Any], peft_task_type: str):
    """The model with fresh LoRA weights; only those (and a new task head) are trainable."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(adapter, peft_task_type))


def adapter_base_path(path: Path) -> str | None:
    """Where the base model was when the adapter was trained (a fallback when the id is unknown here)."""
    try:
        return json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
