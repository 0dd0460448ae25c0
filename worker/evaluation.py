"""The pure evaluation core: (spec, data file, reporter) → the task's metrics and one prediction per row.
No Celery, no database: the runner (worker/evaluation_runner.py) does those.

Evaluation does what training does, so that a fine-tuned model scored on its job's validation file gets
the job's own final numbers: rows read by the reader that validated the file (worker/preparation.py),
tokenized by the task with the model's plan and max_seq_length, scored by a transformers Trainer with
the task's collator, metrics and derived metrics (perplexity). Models load as serving loads them
(app/ml/artifacts.py); each row's prediction is what the task's ``predict`` answers on ``/predict``,
or for text generation a greedy answer.

Preference pairs are scored as DPO scores them (worker/pair_scoring.py)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback

from app.ml.adapters import ADAPTER_CONFIG
from app.ml.chat_templates import TemplateError
from app.ml.tasks import get_task
from app.ml.tasks.preference import PromptTooLong
from worker.callbacks import DerivedMetricsCallback, NullReporter, Reporter
from worker.preparation import DataFile, template_failure, load_rows

# What the result file keeps of each input, prediction and reference: enough to read, bounded per row.
MAX_TEXT_CHARS = 300
MAX_LISTED = 5  # labels, answers, entities listed per row, best first
# New tokens of a generated answer (greedy) at most, as a prediction request gets by default.
NEW_TOKENS = 64


@dataclass(frozen=True)
class ModelFiles:
    """A model's base model folder, and its fine-tuned weights (full, or a LoRA adapter) unless it is the base."""

    base_path: str
    weights_path: str | None = None


@dataclass
class EvaluationSpec:
    task: str
    model: ModelFiles
    column_mapping: dict[str, str]
    plan: dict[str, Any]
    max_seq_length: int
    batch_size: int = 8
    metrics: list[str] | None = None  # only these (eval_… names); None: all
    reference: ModelFiles | None = None  # preference pairs: the rewards' reference (None: the model itself)
    beta: float = 0.1
    seed: int = 0


@dataclass
class EvaluationOutcome:
    metrics: dict[str, float]
    rows: int
    stopped: str | None = None  # "cancel" when stopped on request


class EvaluationError(Exception):
    """A failure the user can act on; ``code`` and the message end up in the evaluation's ``error``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Stopped(Exception):
    """Raised between batches when a stop was asked for."""


def evaluate(spec: EvaluationSpec, data: DataFile, predictions_path: Path, reporter: Reporter | None = None,
             work_dir: Path | None = None, progress_interval_s: float = 2.0) -> EvaluationOutcome:
    """Scores the model on every row of ``data`` and writes one JSON line per row to ``predictions_path``:
    ``{"line", "input", "prediction", "reference"}``."""
    from transformers import set_seed

    reporter = reporter or NullReporter()
    work_dir = work_dir or predictions_path.parent / "evaluation.work"
    set_seed(spec.seed)
    task = get_task(spec.task)
    tokenizer = _tokenizer(task, spec.model, spec.plan)
    rows = load_rows(data, task, spec.column_mapping, spec.plan, work_dir / "datasets")
    if len(rows) == 0:
        raise EvaluationError("empty_file", "The file has no rows to evaluate on.")
    features = _tokenized(task, tokenizer, spec, rows)
    reporter.event(f"Tokenized {len(rows)} rows into {len(features)} examples (at most {spec.max_seq_length} "
                   "tokens each).", data={"rows": len(rows), "examples": len(features)})
    model = load_model(task, spec.model, spec.plan)
    pairs = spec.plan.get("format") == "preference"
    size = max(1, spec.batch_size)
    batches = math.ceil(len(features) / size) + (0 if pairs else math.ceil(len(rows) / size))
    progress = _Progress(reporter, batches, progress_interval_s)
    try:
        with open(predictions_path, "w") as out:
            if pairs:
                from worker.pair_scoring import score_pairs

                metrics = score_pairs(spec, task, tokenizer, model, rows, features, progress, out)
            else:
                metrics = _score(spec, task, tokenizer, model, features, progress, work_dir)
                _predict(spec, task, tokenizer, model, rows, progress, out)
        progress.check()  # a cancel asked for during the last batch still cancels
        reporter.progress(progress.snapshot())
    except Stopped:
        return EvaluationOutcome({}, len(rows), stopped="cancel")
    if spec.metrics:
        metrics = {name: value for name, value in metrics.items() if name in spec.metrics}
    return EvaluationOutcome(metrics, len(rows))


def _tokenizer(task, files: ModelFiles, plan: dict[str, Any]):
    """The tokenizer the model was trained with: saved with its weights (a checkpoint's too), else the base's."""
    from transformers import AutoTokenizer

    weights = Path(files.weights_path) if files.weights_path else None
    folder = weights if weights is not None and (weights / "tokenizer_config.json").exists() else files.base_path
    return task.prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)), plan)


def load_model(task, files: ModelFiles, plan: dict[str, Any]):
    """The model as serving loads it: full weights, or the base with its LoRA adapter; a base model with the
    task's head, which for the tasks a base model may be evaluated on is its own (language-model) head."""
    from app.ml.artifacts import inference_device, load_base_for_adapters, load_full

    if files.weights_path is None:
        device, dtype = inference_device()
        return task.load_model(files.base_path, plan).to(device=device, dtype=dtype).eval()
    weights = Path(files.weights_path)
    if (weights / ADAPTER_CONFIG).exists():
        return load_base_for_adapters(task, plan, weights, Path(files.base_path), adapter_name="evaluated")
    return load_full(task, weights)


def _tokenized(task, tokenizer, spec: EvaluationSpec, rows):
    """The rows as model inputs, exactly as training tokenizes its evaluation rows."""
    def encode(batch):
        out = task.tokenize(batch, tokenizer, spec.plan, spec.max_seq_length)
        if "length" not in out:
            out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    try:
        return rows.map(encode, batched=True, remove_columns=rows.column_names)
    except TemplateError as exc:
        raise template_failure(exc, "file") from None
    except PromptTooLong as exc:
        raise EvaluationError("prompt_too_long", f"Line {exc.line} of file: the prompt is {exc.tokens} tokens, which "
                              f"leaves no room for an answer within the model's max_seq_length {exc.limit}. Shorten "
                              "or remove the row.") from None


class _Progress:
    """Counts batches, tells the reporter every ``interval_s``, and reads the cancel flag between batches
    (at most once a second, and always after the first batch)."""

    def __init__(self, reporter: Reporter, total: int, interval_s: float):
        self.reporter, self.total, self.interval_s = reporter, max(1, total), interval_s
        self.done = self.rows = 0
        self.started = self.last_report = time.monotonic()
        self.last_check = 0.0

    def advance(self, rows: int = 0) -> None:
        self.done, self.rows = self.done + 1, self.rows + rows
        moment = time.monotonic()
        if moment - self.last_check >= min(1.0, self.interval_s):
            self.check()
        if moment - self.last_report >= self.interval_s:
            self.last_report = moment
            self.reporter.progress(self.snapshot())

    def check(self) -> None:
        self.last_check = time.monotonic()
        if self.reporter.should_stop():
            raise Stopped()  # an evaluation has nothing to pause for: any stop request cancels

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        eta = (self.total - self.done) * elapsed / self.done if self.done else None
        return {"step": self.done, "total_steps": self.total, "percent": round(100.0 * self.done / self.total, 2),
                "eta_seconds": round(eta, 1) if eta is not None else None,
                "samples_per_second": round(self.rows / elapsed, 3)}


class _BatchDone(TrainerCallback):
    """The Trainer's evaluation loop calls this after each batch: progress, and the place to stop."""

    def __init__(self, progress: _Progress, examples: int, batch_size: int):
        self.progress, self.left, self.batch_size = progress, examples, batch_size

    def on_prediction_step(self, args, state, control, **kwargs):
        rows, self.left = min(self.left, self.batch_size), max(0, self.left - self.batch_size)
        self.progress.advance(rows=rows)


# --- metrics, as training evaluates ----------------------------------------------------------------

def _score(spec: EvaluationSpec, task, tokenizer, model, features, progress: _Progress, work_dir: Path):
    """One evaluation pass of a transformers Trainer set up as the job's own evaluations were: the task's
    collator and metrics, rows in dataset order, generation for seq2seq, perplexity derived from loss."""
    import torch
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    from worker.sampling import service_sampling
    from worker.trainer_setup import trainer_class

    on_gpu = torch.cuda.is_available()
    generating = task.evaluates_generations
    arguments = Seq2SeqTrainingArguments if generating else TrainingArguments
    extra = {"predict_with_generate": True, "generation_max_length": int(spec.plan["max_target_length"])} \
        if generating else {}
    args = arguments(**extra, output_dir=str(work_dir / "trainer"), per_device_eval_batch_size=spec.batch_size,
                     label_names=list(task.label_names), report_to="none", disable_tqdm=True, use_cpu=not on_gpu,
                     seed=spec.seed, dataloader_pin_memory=on_gpu)

    def compute_metrics(predictions):
        return task.metrics(predictions.predictions, predictions.label_ids, spec.plan, features=features,
                            tokenizer=tokenizer)

    trainer = service_sampling(trainer_class(task))(
        model=model, args=args, eval_dataset=features, processing_class=tokenizer,
        data_collator=task.collator(tokenizer, model, pad_to_multiple_of=8 if on_gpu else None),
        compute_metrics=compute_metrics if task.metrics_from_predictions else None,
        callbacks=[DerivedMetricsCallback(task), _BatchDone(progress, len(features), spec.batch_size)])
    evaluated = trainer.evaluate()
    return {name: float(value) for name, value in evaluated.items() if isinstance(value, (int, float))
            and not name.endswith(("_runtime", "_per_second", "_preparation_time")) and name != "epoch"}


# --- per-row predictions -----------------------------------------------------------------------------

def _predict(spec: EvaluationSpec, task, tokenizer, model, rows, progress: _Progress, out: TextIO) -> None:
    from app.ml.inference import FairLock, LoadedModel

    served = LoadedModel(task.name, model, tokenizer, FairLock(), spec.plan, spec.max_seq_length)
    for start in range(0, len(rows), spec.batch_size):
        records = row_records(rows[start:start + spec.batch_size])
        with served.hold():
            answers = _answers(task, served, records)
        for record, answer in zip(records, answers):
            out.write(json.dumps({"line": record["line"], "input": clip(_shown_input(record)),
                                  "prediction": clip(answer), "reference": clip(_reference(record, spec.plan))})
                      + "\n")
        progress.advance(rows=len(records))


def row_records(columns: dict[str, list]) -> list[dict[str, Any]]:
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def _answers(task, served, records: list[dict[str, Any]]) -> list[Any]:
    """What the model answers each row: the task's own wire-format prediction, or for text generation a
    greedy answer to the prompt (a chat's conversation up to its last answer, in its chat template)."""
    if "completion" not in records[0]:
        return task.predict(served, [_wire_input(record) for record in records], {})
    from app.ml.generation import context_window, generate
    from app.ml.tasks.text_generation import render, turn_end_ids

    chat = records[0]["messages"] is not None
    prompts = [render(served.tokenizer, _conversation(record), add_generation_prompt=True) if chat
               else record["prompt"] for record in records]
    # Room for an answer twice as long as the longest reference (at most NEW_TOKENS): enough to read what
    # the model says, without paying for long rambles of a model that never stops.
    references = [_reference(record, {}) or "" for record in records]
    longest = max(len(served.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in references)
    new_tokens = min(NEW_TOKENS, 2 * longest + 8)
    # Long prompts keep their last tokens, so that the answer fits the context, as `truncate` does.
    room = max(1, context_window(served.model, served.tokenizer) - new_tokens)
    results = generate(served, prompts, {"max_new_tokens": new_tokens, "truncate": room}, new_tokens,
                       add_special_tokens=not chat, end_token_ids=turn_end_ids(served.tokenizer) if chat else None,
                       param="file")
    return [result.text for result in results]


def _last_answer(messages: list[dict[str, str]]) -> int:
    return max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))


def _conversation(record: dict[str, Any]) -> list[dict[str, str]]:
    """A chat up to (not including) its last assistant answer: what the model answers."""
    return record["messages"][:_last_answer(record["messages"])]


def _wire_input(record: dict[str, Any]) -> Any:
    """A row's canonical columns as the task's prediction input (what a client would send /predict)."""
    if "question" in record and "context" in record:
        return {"question": record["question"], "context": record["context"]}
    if "tokens" in record:
        return " ".join(record["tokens"])
    if "source" in record:
        return record["source"]
    if record.get("text_pair") is not None:
        return {"text": record["text"], "text_pair": record["text_pair"]}
    return record["text"]


def _shown_input(record: dict[str, Any]) -> Any:
    if "completion" not in record:
        return _wire_input(record)
    return _conversation(record) if record.get("messages") is not None else record["prompt"]  # what is answered


def _reference(record: dict[str, Any], plan: dict[str, Any]) -> Any:
    """The row's reference answer, told as the file tells it (label names, unscaled targets)."""
    if "answer_texts" in record:
        return record["answer_texts"]
    if "target" in record:
        return record["target"]
    if record.get("messages") is not None:  # the answer the prediction answers in place of
        messages = record["messages"]
        return messages[_last_answer(messages)]["content"] if _last_answer(messages) < len(messages) else None
    if "completion" in record:
        return record["completion"]
    labels, names = record.get("labels"), plan.get("labels") or []
    if "target_std" in plan:
        return labels * plan["target_std"] + plan["target_mean"]
    if "tokens" in record:
        return [names[i] for i in labels]
    if isinstance(labels, list):
        return [name for name, present in zip(names, labels) if present]
    return names[labels] if isinstance(labels, int) and 0 <= labels < len(names) else labels


def clip(value: Any) -> Any:
    """Texts cut to MAX_TEXT_CHARS, lists to their first MAX_LISTED items: a row's line stays small."""
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT_CHARS else value[:MAX_TEXT_CHARS] + "…"
    if isinstance(value, list):
        return [clip(item) for item in value[:MAX_LISTED]]
    if isinstance(value, dict):
        return {key: clip(item) for key, item in value.items()}
    return value
