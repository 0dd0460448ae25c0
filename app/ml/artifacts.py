"""The folder a fine-tuned model (or checkpoint) is stored as, and how it is loaded back for serving:
full weights (safetensors + config + tokenizer), or a LoRA adapter to put on its base model; either
way with ``finetune_service.json`` saying which task and plan it was trained with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.ml.adapters import adapter_base_path, is_adapter_folder, load_adapter
from app.ml.tasks import get_task

SERVICE_CONFIG = "finetune_service.json"
# What a download may hold: weights as safetensors, configs, tokenizer and template files. Checkpoint
# folders also hold optimizer and RNG state as pickles (for resuming), which are never handed out.
DOWNLOADABLE = (".safetensors", ".json", ".jinja", ".txt", ".model", ".md")


def read_service_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / SERVICE_CONFIG).read_text())
    except (OSError, ValueError):
        return {}


def load_for_inference(path: Path, task_name: str, base_path: Path | None):
    """(task, model, tokenizer) on the best device, in eval mode. ``base_path`` is where this
    deployment keeps the base model of an adapter (None: where it was at training time)."""
    import torch
    from transformers import AutoTokenizer

    service = read_service_config(path)
    task = get_task(service.get("task", task_name))
    plan = service.get("plan", {})
    if is_adapter_folder(path):
        base = base_path or adapter_base_path(path)
        if base is None or not Path(base).is_dir():
            raise FileNotFoundError(f"the base model of adapter {path.name} is not on this machine")
        model = load_adapter(task.load_model(str(base), plan), path)
    else:
        model = task.load_trained(str(path))
    max_seq_length = service.get("hyperparameters", {}).get("max_seq_length")
    if max_seq_length:
        model.config.ft_max_seq_length = int(max_seq_length)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    tokenizer = task.prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)), plan)
    return task, model, tokenizer


def write_archive(path: Path, target) -> None:
    """A gzipped tar of the model folder's downloadable files (``target``: a path or a file object)."""
    import tarfile

    with tarfile.open(fileobj=target, mode="w:gz") if hasattr(target, "write") else \
            tarfile.open(target, "w:gz") as archive:
        for file in sorted(path.iterdir()):
            if file.is_file() and file.name.endswith(DOWNLOADABLE):
                archive.add(file, arcname=file.name)
