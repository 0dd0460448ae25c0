"""The baseline a person would write by hand: a bare `transformers.Trainer` script with default
TrainingArguments, fine-tuning a sequence classifier on a TSV/CSV of (text, label) rows.

Used by the realism test (the service must be at least as accurate) and runnable alone:

    python -m bench.bare_trainer --model <folder> --train $FT_DATASETS_DIR/sst2/train.tsv \
        --eval $FT_DATASETS_DIR/sst2/validation.tsv --train-rows 2000 --eval-rows 500
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from bench.bare_common import SEED, baseline_main, seeded


def read_rows(path: Path, limit: int, text_column: str = "sentence", label_column: str = "label"):
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        rows = []
        for row in reader:
            rows.append((row[text_column], int(row[label_column])))
            if len(rows) >= limit:
                break
    return rows


def run(model_path: str, train_rows, eval_rows, **training_args) -> dict:
    import numpy as np
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    labels = sorted({label for _, label in train_rows})
    # Seeded before the new head is built, as transformers' example scripts do: TrainingArguments' seed is
    # only set inside Trainer(), after the head was drawn from whatever state the process was in (the
    # same seed then scored 62.4 and 54.1 F1 on CoNLL in two processes).
    seeded(training_args.get("seed", SEED))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(labels))

    def encode(rows):
        data = Dataset.from_dict({"text": [t for t, _ in rows], "label": [labels.index(y) for _, y in rows]})
        return data.map(lambda b: tokenizer(b["text"], truncation=True), batched=True, remove_columns=["text"])

    train_set, eval_set = encode(train_rows), encode(eval_rows)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, report_to="none", save_strategy="no", disable_tqdm=True,
                                 **training_args)
        trainer = Trainer(model=model, args=args, train_dataset=train_set, processing_class=tokenizer,
                          data_collator=DataCollatorWithPadding(tokenizer))
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        predictions = trainer.predict(eval_set).predictions.argmax(-1)
    accuracy = float(np.mean(predictions == np.asarray(eval_set["label"])))
    return {"accuracy": accuracy, "train_seconds": seconds, "steps": result.global_step,
            "samples_per_second": result.metrics.get("train_samples_per_second")}


def main() -> None:
    baseline_main(__doc__, run, read_rows, eval_rows=500)


if __name__ == "__main__":
    main()
