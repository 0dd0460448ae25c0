"""Turn a GGUF file (llama.cpp's format) into a base-model folder this service offers: config.json,
safetensors weights, tokenizer files and generation_config.json, under ``FT_BASE_MODELS_DIR/name``.

Weights are dequantized by transformers and saved as plain float32 (or bfloat16) tensors, so the
folder loads like any Hugging Face checkpoint: training, LoRA and serving never see GGUF. Checks
that cost nothing (the file, its magic bytes, the name, the target, the disk space) run before the
minute of loading, and the folder appears under its name in one rename, only once it is complete."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from app.ml.base_models import inspect_folder

GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16")
# One or two segments (`name`, `org/name`) as on the Hugging Face Hub. A segment must start with a
# letter or digit: no `.`/`..`, no hidden folders (the staging folders below are hidden).
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
# Staging lives inside the models folder (same file system, so the final rename is atomic) but
# three levels down: list_base_models looks for */config.json and */*/config.json only, so a half
# written model is never listed, not even as an unusable one.
_STAGING_PREFIX = ".importing-"


class GgufImportError(Exception):
    """A problem the operator can fix (a wrong file, name or option); the message says which."""


def validate_name(name: str) -> str:
    parts = name.split("/")
    if not 1 <= len(parts) <= 2 or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise GgufImportError(
            f"invalid model name {name!r}: use 'name' or 'org/name', each part made of letters, digits, '.', '_' "
            "or '-' and starting with a letter or digit (at most 96 characters)")
    return name


def check_gguf_file(path: Path) -> None:
    """Fail fast on a path that is not a GGUF file, before transformers spends a minute on it."""
    if not path.is_file():
        raise GgufImportError(f"{path}: no such file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise GgufImportError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")


def read_header(path: Path) -> tuple[str, int]:
    """The file's architecture and its number of weights (for the disk-space check)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)  # memory-mapped: reads the header, not the tensors
        field = reader.fields.get("general.architecture")
        architecture = str(field.contents()) if field is not None else "unknown"
        elements = sum(int(tensor.n_elements) for tensor in reader.tensors)
    except Exception as exc:  # the gguf package raises anything from ValueError to struct errors on bad files
        raise GgufImportError(f"{path} cannot be read as GGUF: {exc}") from exc
    return architecture, elements


def import_gguf(path: str | os.PathLike, name: str, models_dir: str | os.PathLike, dtype: str = "float32",
                force: bool = False) -> Path:
    """Convert the GGUF file at ``path`` into ``models_dir/name`` and return that folder.

    Raises GgufImportError for anything the operator can fix; the target is left untouched then."""
    path, models_dir = Path(path).expanduser().resolve(), Path(models_dir).expanduser()
    check_gguf_file(path)
    validate_name(name)
    if dtype not in DTYPES:
        raise GgufImportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    target = models_dir / name
    if (target.exists() or target.is_symlink()) and not force:
        raise GgufImportError(f"{target} already exists: choose another name, or pass --force to replace it")
    if target.parent.exists() and not target.parent.is_dir():
        raise GgufImportError(f"{target.parent} is a file, not a folder")
    architecture, elements = read_header(path)
    models_dir.mkdir(parents=True, exist_ok=True)
    needed = elements * (4 if dtype == "float32" else 2) + (64 << 20)  # weights + tokenizer and margin
    free = shutil.disk_usage(models_dir).free
    if free < needed:
        raise GgufImportError(f"{models_dir} has {free / 1e9:.1f} GB free; this model needs about "
                              f"{needed / 1e9:.1f} GB in {dtype}")

    import torch

    model, tokenizer = _load(path, architecture)
    _strip_quantization(model)
    _set_context_length(tokenizer, model.config)
    # Loaded as exact float32 dequantized values; bfloat16 rounds each of them once. save_pretrained
    # records the dtype in config.json.
    model.to(getattr(torch, dtype))

    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=models_dir))
    try:
        folder = staging / "new" / "model"
        model.save_pretrained(folder)  # transformers 5 always writes safetensors (no pickle option left)
        tokenizer.save_pretrained(folder)
        _check_written(folder, name, bool(getattr(tokenizer, "chat_template", None)))
        _move_into_place(folder, target, staging, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _load(path: Path, architecture: str):
    """Tokenizer and dense model from the file; an architecture transformers cannot read is the
    operator's problem (a message naming it), not a traceback."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(path.parent), path.name
    try:
        # The config first: it is where transformers rejects an architecture, in seconds.
        config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    except (ValueError, KeyError) as exc:
        raise GgufImportError(f"transformers {transformers.__version__} cannot load GGUF architecture "
                              f"{architecture!r}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        # dequantize=True: every weight unpacked into a plain tensor, never kept in GGUF blocks (which
        # transformers does where a matmul kernel is installed, and which cannot be saved or trained).
        # dtype=float32: otherwise a file stored as float16 would load (and be saved) as float16.
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, config=config, dtype=torch.float32,
                                                     quantization_config=_dequantizing_config())
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise GgufImportError(f"transformers {transformers.__version__} cannot load this GGUF "
                              f"({architecture!r}, {type(config).__name__}) as a causal language model: {exc}"
                              ) from exc
    return model, tokenizer


def _dequantizing_config():
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers < 5.x: GGUF weights were always dequantized
        return None
    return GgufConfig(dequantize=True)


def _strip_quantization(model) -> None:
    """A GGUF-loaded model remembers where it came from: ``hf_quantizer``, ``config.quantization_config``
    (quant_method "gguf") and ``is_quantized``. transformers drops them itself when dequantize=True, but
    not for the architectures of its legacy GGUF loader (llama among them: the weights are dense, the
    marks stay). With the marks, save_pretrained refuses ("not serializable"), and a saved config would
    make every later from_pretrained look for a GGUF file. The weights are plain tensors either way."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for holder, attribute in ((model, "hf_quantizer"), (model, "quantization_method"),
                              (model.config, "quantization_config")):
        if hasattr(holder, attribute):
            delattr(holder, attribute)
    model.is_quantized = False
    packed = [n for n, p in model.named_parameters() if not p.dtype.is_floating_point]
    if packed:  # would save GGUF blocks as if they were weights
        raise GgufImportError(f"some weights are still packed after loading (e.g. {packed[0]}); cannot save them")


def _set_context_length(tokenizer, config) -> None:
    """GGUF carries no tokenizer length, so the tokenizer comes back with transformers' "no limit"
    sentinel (1e30); the model's position count is the real one (what the Hub tokenizer says too)."""
    positions = getattr(config, "max_position_embeddings", None)
    current = getattr(tokenizer, "model_max_length", None)
    if positions and (current is None or current > 10**9):
        tokenizer.model_max_length = int(positions)


def _check_written(folder: Path, name: str, had_chat_template: bool) -> None:
    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config:
        raise GgufImportError("the saved config.json still names a quantization; refusing to offer it")
    found = inspect_folder(name, folder)
    if not found.usable:
        raise GgufImportError(f"the converted folder would not be usable: {found.problem}")
    if had_chat_template and not _saved_chat_template(folder):
        raise GgufImportError("the GGUF's chat template was lost on saving the tokenizer")


def _saved_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def _move_into_place(folder: Path, target: Path, staging: Path, force: bool) -> None:
    """One rename makes the model appear complete. A replaced model is first renamed into staging
    (deleted with it), so between the two renames the name is briefly absent, never half written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        if not force:  # created by someone else during the minute of loading
            raise GgufImportError(f"{target} appeared while importing; pass --force to replace it")
        os.replace(target, staging / "old")  # a symlink is moved itself, what it points to is untouched
    os.replace(folder, target)
