"""Property-based fuzzing of the live API (PostgreSQL, Redis, a real worker) from its OpenAPI document:
every operation, authenticated, with valid and invalid generated input. No answer may be a server error
or break the schema. A short run here; `python -m bench.fuzz` runs ≥ 1,000 cases (figures in
bench/RESULTS.md)."""

from __future__ import annotations

from bench.fuzz import fuzz_both_ways, fuzzed_project


def test_fuzzing_every_operation_finds_no_server_error_and_no_schema_violation(pg_stack, tmp_path):
    key, real_ids = fuzzed_project(pg_stack.cli, pg_stack.url)
    run = fuzz_both_ways(pg_stack.url, key, real_ids, max_examples=4, seed=1, report_dir=tmp_path)
    assert run.returncode == 0, run.output[-8000:]
    assert run.cases >= 1000, run.output[-2000:]
