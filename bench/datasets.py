"""Where the public datasets for the realism tests and the benchmarks live (SST-2, CoNLL-2003, AG News,
HH-RLHF): the folder ``FT_DATASETS_DIR`` names, by default ``shared/data`` beside this repository."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS_DIR = Path(os.environ.get("FT_DATASETS_DIR") or REPO.parent / "shared" / "data")


def dataset(name: str) -> Path:
    return DATASETS_DIR / name


def missing(name: str) -> str:
    """Why a test that needs the dataset skips: where it was looked for, and how to point elsewhere."""
    return f"dataset {name} is not in {DATASETS_DIR}; set FT_DATASETS_DIR to the folder that holds it"
