"""Files → tokenized training and evaluation sets: read through the same reader that validated the
files, hold rows out for evaluation when there is no validation file, tokenize with the task, and
remember the result in the tokenization cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.data.scan import ScanLimits, iter_numbered_records
from app.ml.chat_templates import TemplateError, TemplateLimitError
from app.ml.hyperparams import holdout_rows
from app.ml.tasks.preference import PromptTooLong
from worker.token_cache import TokenCache, cache_key, file_identity, tokenizer_identity


@dataclass
class DataFile:
    path: Path
    format: str
    sha256: str | None = None  # the uploaded file's digest: identifies it in the tokenization cache
    # The deployment's limits on a record, as the upload was scanned with: rows read the same way here.
    limits: ScanLimits = field(default_factory=ScanLimits)


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

    def rows(path: str, fmt: str, limits: ScanLimits):
        for number, (line, record) in enumerate(iter_numbered_records(Path(path), fmt, limits)):
            # row_id lets tasks that split one row into several windows (QA) put them back together;
            # line names the row in the file when tokenizing it fails (a chat template's limit).
            yield {"row_id": number, "line": line, **task.row(record, column_mapping, plan)}

    return Dataset.from_generator(rows, gen_kwargs={"path": str(data.path), "fmt": data.format, "limits": data.limits},
                                  cache_dir=str(cache_dir) if cache_dir else None)


def template_failure(exc: TemplateError, file_param: str) -> Exception:
    """The job's error for a row its chat template could not render: which line, and why."""
    from worker.training import TrainingError  # training imports this module

    where = f"Line {exc.line} of {file_param}" if exc.line is not None else f"A row of {file_param}"
    if isinstance(exc, TemplateLimitError):
        return TrainingError("chat_template_limit", f"{where}: {exc.message}")
    return TrainingError("chat_template_error", f"{where}: the chat template does not render it: {exc.message}")


def _prompt_too_long(exc: PromptTooLong, file_param: str) -> Exception:
    from worker.training import TrainingError  # training imports this module

    where = f"Line {exc.line} of {file_param}" if exc.line is not None else f"A row of {file_param}"
    return TrainingError("prompt_too_long", f"{where}: the prompt is {exc.tokens} tokens, which leaves no room for "
                         f"an answer within max_seq_length {exc.limit}. Raise hyperparameters.max_seq_length, or "
                         "shorten or remove the row.")


def prepare(task, tokenizer, tokenizer_path: str, column_mapping: dict[str, str], plan: dict[str, Any],
            max_length: int, seed: int, train_file: DataFile, valid_file: DataFile | None,
            work_dir: Path, cache: TokenCache, validation_split: float | None = None) -> Prepared:
    key = cache_key(task=task.name, plan=plan, column_mapping=column_mapping, max_length=max_length, seed=seed,
                    validation_split=validation_split,
                    train=file_identity(train_file.path, train_file.sha256),
                    valid=file_identity(valid_file.path, valid_file.sha256) if valid_file else None,
                    tokenizer=tokenizer_identity(tokenizer_path))

    def build() -> dict[str, Any]:
        train_rows = load_rows(train_file, task, column_mapping, plan, work_dir / "datasets")
        eval_rows = load_rows(valid_file, task, column_mapping, plan, work_dir / "datasets") if valid_file else None
        if len(train_rows) == 0:
            raise EmptyTrainingFile()
        # Rows are held out before tokenizing, so that all windows of one row land on the same side.
        held_out = holdout_rows(len(train_rows), valid_file is not None, validation_split)
        if held_out:
            split = train_rows.train_test_split(test_size=held_out, seed=seed, shuffle=True)
            train_rows, eval_rows = split["train"], split["test"]

        def tokenized(rows, file_param: str):
            def encode(batch):
                out = task.tokenize(batch, tokenizer, plan, max_length)
                # Lengths for length-grouped batches (the Trainer would otherwise read every row); pairs
                # (DPO) give their own, both sequences counted.
                if "length" not in out:
                    out["length"] = [len(ids) for ids in out["input_ids"]]
                return out
            try:
                return rows.map(encode, batched=True, remove_columns=rows.column_names)
            except TemplateError as exc:
                raise template_failure(exc, file_param) from None
            except PromptTooLong as exc:
                raise _prompt_too_long(exc, file_param) from None

        train_set = tokenized(train_rows, "training_file")
        eval_set = tokenized(eval_rows, "validation_file" if valid_file else "training_file") \
            if eval_rows is not None else None
        return {"train": train_set, "eval": eval_set,
                "meta": {"rows": len(train_rows), "held_out": held_out,
                         "tokens_per_epoch": int(sum(train_set["length"]))}}

    built, hit = cache.get_or_build(key, build)
    meta = built["meta"]
    return Prepared(built["train"], built["eval"], meta["rows"], meta["held_out"], meta["tokens_per_epoch"], hit)
