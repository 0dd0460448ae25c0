"""What a job would cost, without creating it: steps, trained tokens and seconds per device kind.

Tokens come from tokenizing a sample of the training file exactly as the worker will (the task's own
tokenize, so QA windows and chat templates count), scaled to the file. Seconds come from training
FLOPs (6 × parameters × tokens; 4 × with a LoRA adapter, which computes no weight gradients for the
base, plus 2 × parameters per evaluated token) divided by a FLOP rate per device kind: the median
rate this deployment's own workers reached on their last jobs where there are any, else the
datasheet bf16 peak of common GPUs at an assumed 35% model-FLOPs utilisation plus a fixed cost per
step."""

from __future__ import annotations

import statistics
from itertools import islice
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.data.scan import ScanLimits, iter_numbered_records
from app.db.models import Job
from app.errors import ApiError, bad_request
from app.ml import hyperparams
from app.ml.chat_templates import TemplateError, TemplateLimitError, template_budget
from app.ml.base_models import parameter_count
from app.ml.devices import DATASHEET_PEAKS, training_flops
from app.ml.tasks.preference import PromptTooLong
from app.storage import get_storage

SAMPLE_ROWS = 256
SAMPLE_CHUNK_ROWS = 32
# Rendering the sample's chat conversations may take this many per-rendering time limits in all.
SAMPLE_RENDER_TIMEOUTS = 5
ASSUMED_MFU = 0.35
# Python, data loading and optimiser work per step that FLOPs do not capture; it dominates small models.
ASSUMED_STEP_OVERHEAD_S = 0.01
HISTORY_JOBS = 20


def tokens_per_row(planned) -> tuple[float, float]:
    """Mean (examples, tokens) one row of the training file becomes, from a sample of its rows.

    Chat templates render under a budget for the whole sample (time, and characters, which is also
    what tokenizing costs): a sample that runs out of it is estimated from the rows done so far, and
    one that cannot do a single row is refused with what to change."""
    from transformers import AutoTokenizer

    task, hyperparameters = planned.task, planned.hyperparameters
    plan = task.plan_with_options(planned.plan, hyperparameters)
    tokenizer = task.prepare_tokenizer(AutoTokenizer.from_pretrained(str(planned.base.path)), plan)
    path = get_storage().local_path(planned.train.storage_key)
    settings = get_settings()
    sampled = islice(iter_numbered_records(path, planned.train.format, ScanLimits.from_settings(settings)),
                     SAMPLE_ROWS)
    done = examples = tokens = 0
    with template_budget(SAMPLE_RENDER_TIMEOUTS * settings.template_timeout_s, settings.template_max_chars):
        # A few rows at a time: what is held at once stays small however large each row's rendering.
        # The first alone, so a template slow enough to spend the budget still gives an estimate.
        size = 1
        while chunk := list(islice(sampled, size)):
            size = SAMPLE_CHUNK_ROWS
            canonical = [task.row(record, planned.mapping, plan) for _, record in chunk]
            batch = {key: [row[key] for row in canonical] for key in canonical[0]}
            batch["line"] = [line for line, _ in chunk]  # so a row the template fails on can be named
            # As in training (worker/preparation.py): tasks that split a row into windows (QA) group by it.
            batch["row_id"] = list(range(done, done + len(chunk)))
            try:
                encoded = task.tokenize(batch, tokenizer, plan, int(hyperparameters["max_seq_length"]))
            except TemplateLimitError as exc:
                if exc.limit in ("total_time", "total_output") and done:
                    break  # estimated from the rows done within the budget
                raise _template_problem(exc) from None
            except TemplateError as exc:
                raise _template_problem(exc) from None
            except PromptTooLong as exc:
                raise bad_request(f"Line {exc.line} of training_file: the prompt is {exc.tokens} tokens, which leaves "
                                  f"no room for an answer within max_seq_length {exc.limit}. Raise "
                                  "max_seq_length, or shorten or remove the row.", "training_file",
                                  code="prompt_too_long") from None
            done += len(chunk)
            # Pairs (DPO) say their tokens themselves: both sequences, the prompt counted twice.
            lengths = encoded.get("length") or [len(ids) for ids in encoded["input_ids"]]
            examples += len(lengths)
            tokens += sum(lengths)
    if not done:
        return 0.0, 0.0
    return examples / done, tokens / done


def _template_problem(exc: TemplateError) -> ApiError:
    where = f"Line {exc.line} of training_file" if exc.line is not None else "A row of training_file"
    if isinstance(exc, TemplateLimitError):
        return bad_request(f"{where}: {exc.message}", "chat_template", code="chat_template_limit")
    # The template refused the conversation itself (raise_exception: roles that do not alternate…).
    return bad_request(f"{where}: the chat template does not render it: {exc.message}", "training_file",
                       code="chat_template_error")


def measured_rates(session: Session, project_id: str) -> dict[str, float]:
    """Median training FLOP/s per device this project's recent jobs reached."""
    rates: dict[str, list[float]] = {}
    recent = session.scalars(select(Job).where(Job.project_id == project_id, Job.status == "succeeded")
                             .order_by(Job.created_at.desc()).limit(HISTORY_JOBS))
    for job in recent:
        rate, device = (job.metrics or {}).get("train_flops_per_second"), (job.hyperparameters or {}).get("device")
        if rate and device:
            rates.setdefault(device, []).append(float(rate))
    return {device: statistics.median(values) for device, values in rates.items()}


def estimate(session: Session, project, planned) -> dict[str, Any]:
    hyperparameters = planned.hyperparameters
    train_rows = planned.train.rows - int(hyperparameters.get("holdout_rows") or 0)
    examples_per_row, row_tokens = tokens_per_row(planned)
    epochs = int(hyperparameters["n_epochs"])
    trained_tokens = int(row_tokens * train_rows * epochs)
    steps = hyperparams.total_steps(round(examples_per_row * train_rows), hyperparameters)
    eval_rows = planned.valid.rows if planned.valid is not None else planned.train.rows - train_rows
    every = hyperparameters.get("eval_every")
    evaluations = (steps // int(every) + 1) if every and eval_rows else 0
    parameters = parameter_count(planned.base.path)
    dpo = planned.method == "dpo"  # a reference model reads every token too
    flops = training_flops(parameters, trained_tokens, bool(hyperparameters.get("adapter")), reference=dpo) \
        + 2 * parameters * row_tokens * eval_rows * evaluations
    seconds, basis = {}, {}
    for kind, peak in DATASHEET_PEAKS.items():
        seconds[kind] = round(flops / (peak * ASSUMED_MFU) + steps * ASSUMED_STEP_OVERHEAD_S, 1)
        basis[kind] = (f"datasheet bf16 peak at {ASSUMED_MFU:.0%} utilisation, plus "
                       f"{ASSUMED_STEP_OVERHEAD_S * 1000:.0f} ms per step")
    for device, rate in measured_rates(session, project.id).items():
        seconds[device] = round(flops / rate, 1)
        basis[device] = "measured: median of this project's recent jobs on this device"
    return {"object": "fine_tuning.job.estimate", "model": planned.body.model, "task": planned.task.name,
            "hyperparameters": hyperparameters, "examples_per_epoch": round(examples_per_row * train_rows),
            "steps": steps,
            "trained_tokens": trained_tokens, "parameters": parameters, "training_flops": flops,
            "estimated_seconds": seconds, "basis": basis}
