"""The layering of docs/architecture.md holds: import-linter reads every import of app/ and worker/ and
checks the contracts in pyproject.toml (each part imports only the parts below it; the worker knows no
API service or schema; the API reaches the queue only through app.jobs.queue; nothing below the API
knows the web framework; schemas know no ORM)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_import_respects_the_layers():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
