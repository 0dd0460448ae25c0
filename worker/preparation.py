"""Files → tokenized training and evaluation sets: read through the same reader that validated the
files, hold rows out for evaluation when there is no validation file, tokenize with the task, and
remember the result in the tokenization cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.data.scan import iter_records
from app.ml.hyperparams import holdout_rows
from worker.token_cache import TokenCache, cache_key, file_identity, tokenizer_identity


@dataclass
class DataFile:
    path: Path
    format: str
    sha256: str | None = None  # the uploaded file's digest: identifies it in the tokenization cache


@dataclass
class Prepared:
    train: Any  # datasets.Dataset of model inputs plus a "length" column (non-pad tokens per example)
    eval: Any | None
    rows: int
    held_out: int
    tokens_per_epoch: int
    from_cache: bool


class EmptyTrainingFile(Exception):
    pass


def load_rows(data: DataFile, task, column_mapping: dict[str, str], plan: dict[str, Any], cache_dir: Path | None):
    """A file → a ``datasets.Dataset`` of the task's canonical columns, written to Arrow on disk as it
    is read (never held whole in memory)."""
    from datasets import Dataset

    def rows(path: str, fmt: str):
        for number, record in enumerate(iter_records(Path(path), fmt)):
            # row_id lets tasks that split one row into several windows (QA) put them back together.
            yield {"row_id": number, **task.row(record, column_mapping, plan)}

    return Dataset.from_generator(rows, gen_kwargs={"path": str(data.path), "fmt": data.format},
                                  cache_dir=str(cache_dir) if cache_dir else None)


def prepare(task, tokenizer, tokenizer_path: str, column_mapping: dict[str, str], plan: dict[str, Any],
            max_length: int, seed: int, train_file: DataFile, valid_file: DataFile | None,
            work_dir: Path, cache: TokenCache) -> Prepared:
    key = cache_key(task=task.name, plan=plan, column_mapping=column_mapping, max_length=max_length, seed=seed,
                    train=file_identity(train_file.path, train_file.sha256),
                    valid=file_identity(valid_file.path, valid_file.sha256) if valid_file else None,
                    tokenizer=tokenizer_identity(tokenizer_path))

    def build() -> dict[str, Any]:
        train_rows = load_rows(train_file, task, column_mapping, plan, work_dir / "datasets")
        eval_rows = load_rows(valid_file, task, column_mapping, plan, work_dir / "datasets") if valid_file else None
        if len(train_rows) == 0:
            raise EmptyTrainingFile()
        # Rows are held out before tokenizing, so that all windows of one row land on the same side.
        held_out = holdout_rows(len(train_rows), valid_file is not None)
        if held_out:
            split = train_rows.train_test_split(test_size=held_out, seed=seed, shuffle=True)
            train_rows, eval_rows = split["train"], split["test"]

        def tokenized(rows):
            def encode(batch):
                out = task.tokenize(batch, tokenizer, plan, max_length)
                # Lengths for length-grouped batches (the Trainer would otherwise read every row).
                out["length"] = [len(ids) for ids in out["input_ids"]]
                return out
            return rows.map(encode, batched=True, remove_columns=rows.column_names)

        train_set = tokenized(train_rows)
        return {"train": train_set, "eval": tokenized(eval_rows) if eval_rows is not None else None,
                "meta": {"rows": len(train_rows), "held_out": held_out,
                         "tokens_per_epoch": int(sum(train_set["length"]))}}

    built, hit = cache.get_or_build(key, build)
    meta = built["meta"]
    return Prepared(built["train"], built["eval"], meta["rows"], meta["held_out"], meta["tokens_per_epoch"], hit)
