"""Property-based fuzzing of the live API from its own OpenAPI document, with schemathesis: every
operation, authenticated, with generated valid and invalid bodies, parameters and headers. Passes when
no answer is a server error and none breaks the schema (status codes, content types, bodies).

    python -m bench.fuzz                     # starts the embedded service, ≥ 1,000 cases
    python -m bench.fuzz --max-examples 10   # fewer per operation
    python -m bench.fuzz --url URL --key KEY # an already running service (the test suite's short run)

The fuzzed project's quotas keep it from starting real work (no job may be queued) or filling the disk."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# What the fuzzed project may do: requests answer (or 429) without queueing jobs or storing much.
QUOTAS = ("active_jobs=0", "files=20", "storage_bytes=20000000", "webhook_endpoints=5", "api_keys=10",
          "event_streams=2")


@dataclass
class FuzzRun:
    returncode: int
    output: str
    cases: int = -1  # test cases run; -1: read from the output's summary

    def __post_init__(self):
        if self.cases < 0:
            found = re.findall(r"(\d+) generated", self.output)
            self.cases = int(found[-1]) if found else 0


def fuzz(url: str, key: str, max_examples: int, seed: int = 0, report_dir: Path | None = None,
         parameters: dict[str, str] | None = None) -> FuzzRun:
    """Runs schemathesis against ``url`` (examples, coverage and fuzzing phases) with ``key``. With
    ``parameters`` (e.g. ``{"path.file_id": "file-…"}``) those path parameters take real ids, so the
    cases reach past the 404 of an unknown id into each operation's own checks."""
    report_dir = report_dir or Path(tempfile.mkdtemp(prefix="fuzz-"))
    report_dir.mkdir(parents=True, exist_ok=True)
    config = report_dir / "schemathesis.toml"
    config.write_text("[parameters]\n" + "".join(f'"{name}" = "{value}"\n' for name, value in (parameters or {}).items()))
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/openapi.json",
               "--checks", CHECKS, "--header", f"Authorization: Bearer {key}", "--max-examples", str(max_examples),
               "--seed", str(seed), "--phases", "examples,coverage,fuzzing", "--workers", "1", "--no-color",
               "--request-timeout", "60", "--suppress-health-check", "all", "--generation-database", "none",
               "--report-dir", str(report_dir / "reports")]
    done = subprocess.run(command, cwd=report_dir, capture_output=True, text=True, timeout=3600)
    return FuzzRun(done.returncode, done.stdout + done.stderr)


def fuzzed_project(cli, url: str) -> tuple[str, dict[str, str]]:
    """A new project for the fuzzer: its admin key (so key management is fuzzed too), real objects of
    each kind to aim at, and then tight quotas; ``cli(*args)`` runs `finetune` against the service's
    database, whose base models include the test suite's tiny/bert."""
    import httpx

    name = f"fuzz-{uuid.uuid4().hex[:8]}"
    key = cli("keys", "create", "--project", name, "--scope", "admin").strip()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        file_id = c.post("/v1/files", files={"file": ("fuzz.csv", (REPO / "examples" / "sentiment.csv").read_bytes())},
                         data={"purpose": "fine-tune"}).json()["id"]
        job_id = c.post("/v1/fine_tuning/jobs", json={"model": "tiny/bert", "training_file": file_id}).json()["id"]
        c.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
        endpoint_id = c.post("/v1/webhooks", json={"url": "https://93.184.216.34/hooks/fuzz"}).json()["id"]
        key_id = c.post("/v1/keys", json={"scope": "predict", "name": "fuzz"}).json()["id"]
    cli("quota", "set", *QUOTAS, "--project", name)
    return key, {"path.file_id": file_id, "path.job_id": job_id, "path.endpoint_id": endpoint_id,
                 "path.key_id": key_id}


def fuzz_both_ways(url: str, key: str, parameters: dict[str, str], max_examples: int, seed: int,
                   report_dir: Path) -> FuzzRun:
    """One pass with generated ids (mostly unknown: the 404 paths), one with the project's real ids."""
    generated = fuzz(url, key, max_examples, seed, report_dir / "generated-ids")
    real = fuzz(url, key, max_examples, seed, report_dir / "real-ids", parameters)
    return FuzzRun(max(generated.returncode, real.returncode), generated.output + "\n" + real.output,
                   generated.cases + real.cases)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start the embedded one)")
    parser.add_argument("--key", help="its API key (with --url)")
    parser.add_argument("--max-examples", type=int, default=200, help="generated cases per operation and pass (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.url:
        run = fuzz(args.url, args.key, args.max_examples, args.seed)
    else:
        from tests.support.live import LiveStack
        from tests.support.tiny_models import build_base_models

        with tempfile.TemporaryDirectory(prefix="fuzz-stack-") as root:
            root = Path(root)
            stack = LiveStack(root, build_base_models(root / "base_models"), embedded_worker=False)
            with stack.running():
                key, parameters = fuzzed_project(stack.cli, stack.url)
                run = fuzz_both_ways(stack.url, key, parameters, args.max_examples, args.seed, root / "fuzz")
    print(run.output[-6000:])
    print(f"\nschemathesis: {run.cases} cases, exit code {run.returncode} "
          f"({'no server errors, no schema violations' if run.returncode == 0 else 'FAILURES above'})")
    sys.exit(run.returncode)


if __name__ == "__main__":
    _main()
