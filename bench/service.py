"""Start this service (`finetune serve`: API and one worker, embedded storage) for a benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def start_service(root: Path, port: int, key: str, base_models_dir: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "FT_DATA_DIR": str(root), "FT_API_PORT": str(port), "FT_BOOTSTRAP_API_KEY": key,
           "HF_HUB_OFFLINE": "1", **({"FT_BASE_MODELS_DIR": str(base_models_dir)} if base_models_dir else {})}
    log = open(root / "serve.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO, env=env, stdout=log,
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
