"""The folder a fine-tuned model (or checkpoint) is stored as, and how it is loaded back for serving:
full weights (safetensors + config + tokenizer), or a LoRA adapter to put on its base model; either
way with ``finetune_service.json`` saying which task and plan it was trained with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.ml.adapters import adapter_base_path

SERVICE_CONFIG = "finetune_service.json"
# What a download may hold: weights as safetensors, configs, tokenizer and template files. Checkpoint
# folders also hold optimizer and RNG state as pickles (for resuming), which are never handed out.
DOWNLOADABLE = (".safetensors", ".json", ".jinja", ".txt", ".model", ".md")


def read_service_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / SERVICE_CONFIG).read_text())
    except (OSError, ValueError):
        return {}


def inference_device():
    """GPU with bf16 where there is one (fp16 on GPUs without bf16), else CPU in fp32."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def _ready(model):
    device, dtype = inference_device()
    return model.to(device=device, dtype=dtype).eval()


def load_full(task, path: Path):
    return _ready(task.load_trained(str(path)))


def load_base_for_adapters(task, plan: dict[str, Any], path: Path, base_path: Path | None, adapter_name: str):
    """The base model with this task's head, wrapped by peft with its first adapter. ``base_path`` is
    where this deployment keeps the base model (None: where it was at training time)."""
    from peft import PeftModel

    base = base_path or adapter_base_path(path)
    if base is None or not Path(base).is_dir():
        raise FileNotFoundError(f"the base model of adapter {path.name} is not on this machine")
    model = PeftModel.from_pretrained(task.load_model(str(base), plan), str(path), adapter_name=adapter_name,
                                      is_trainable=False)
    return _ready(model)


def load_adapter_into(model, path: Path, adapter_name: str) -> None:
    model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=False)
    _ready(model)  # the new adapter's weights join the model's device and dtype


def iter_archive(path: Path, chunk_bytes: int = 2**20) -> Iterator[bytes]:
    """A gzipped tar of the model folder's downloadable files, produced while it is sent: no temporary
    copy on disk, and memory bounded by one chunk whatever the model's size, so parallel downloads can
    neither fill the disk nor the memory. Safetensors weights barely compress: level 1 keeps the CPU
    cost of a download low."""
    import tarfile
    import zlib

    gzip = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: the gzip container

    def compressed(data: bytes) -> Iterator[bytes]:
        out = gzip.compress(data)
        if out:
            yield out

    for file in sorted(path.iterdir()):
        if not (file.is_file() and file.name.endswith(DOWNLOADABLE)):
            continue
        stat = file.stat()
        info = tarfile.TarInfo(file.name)
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield from compressed(info.tobuf(format=tarfile.PAX_FORMAT))
        with open(file, "rb") as handle:
            sent = 0
            while sent < info.size and (block := handle.read(min(chunk_bytes, info.size - sent))):
                sent += len(block)
                yield from compressed(block)
        if sent != info.size:
            raise OSError(f"{file.name} changed while it was being sent")
        yield from compressed(b"\0" * (-info.size % tarfile.BLOCKSIZE))  # members fill whole 512-byte blocks
    yield from compressed(b"\0" * (2 * tarfile.BLOCKSIZE))  # the end-of-archive marker
    yield gzip.flush()
