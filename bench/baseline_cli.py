"""The command line shared by the bare-Trainer baselines: model, train/eval files, row counts → JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def baseline_main(doc: str, run, read_rows, eval_rows: int) -> None:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--eval-rows", type=int, default=eval_rows)
    ns = parser.parse_args()
    print(json.dumps(run(ns.model, read_rows(ns.train, ns.train_rows), read_rows(ns.eval, ns.eval_rows)), indent=2))
