"""Evaluations, the API's verbs: score a base model, fine-tuned model or checkpoint of the project on a file
of its task. An evaluation is a row of the jobs table (``kind="evaluation"``): queued, claimed, leased,
cancelled and reported like a fine-tuning job, so the quota, the scheduler and the reaper treat both
alike; only what the worker runs differs (worker/evaluation_runner.py). Everything the worker needs is
checked and resolved here, so nothing invalid reaches it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.data.scan import ScanLimits, iter_numbered_records
from app.db.models import File, Job, now
from app.errors import ApiError, bad_request, not_found
from app.ids import new_id
from app.jobs import states
from app.jobs.events import append_event
from app.jobs.lifecycle import transition
from app.jobs.queue import enqueue_after_commit
from app.jobs.sources import ModelSource
from app.ml.generation import CONTEXT_FIELDS
from app.ml.tasks import FieldProblem, get_task
from app.schemas.evaluations import EvaluationCreate
from app.services import lineage
from app.services.job_planning import RANGES, usable_file, model_source
from app.services.keys import ProjectRef
from app.services.quotas import check_active_jobs
from app.storage import get_storage

KIND = "evaluation"
DEFAULT_BETA = 0.1
# Rows per forward pass for a base model; a fine-tuned one evaluates as its job did (twice its batch).
DEFAULT_BATCH = 8
# What each task's evaluation reports (the names jobs report); the worker computes them with the task's own
# metrics, this list only lets a request's ``metrics`` be checked before anything is queued.
METRICS = {
    "text-classification": ("eval_loss", "eval_accuracy", "eval_f1_macro"),
    "multi-label-classification": ("eval_loss", "eval_f1_micro", "eval_f1_macro", "eval_exact_match"),
    "text-regression": ("eval_loss", "eval_mse", "eval_mae", "eval_r2"),
    "token-classification": ("eval_loss", "eval_precision", "eval_recall", "eval_f1", "eval_accuracy"),
    "question-answering": ("eval_loss", "eval_exact_match", "eval_f1"),
    "summarization": ("eval_loss", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum"),
    "text-generation": ("eval_loss", "eval_perplexity"),
}
# Preference pairs (a text-generation file of format "preference"), scored as DPO scores them.
PREFERENCE_METRICS = ("eval_loss", "eval_reward_accuracy", "eval_reward_margin", "eval_reward_chosen",
                      "eval_reward_rejected", "eval_logp_chosen", "eval_logp_rejected")


@dataclass
class PlannedEvaluation:
    source: ModelSource
    file: File
    task: Any
    mapping: dict[str, str]
    plan: dict[str, Any]
    options: dict[str, Any]  # what the worker runs with: max_seq_length, batch_size, metrics, reference, beta


def create_evaluation(session: Session, settings: Settings, project: ProjectRef, body: EvaluationCreate) -> Job:
    """The new evaluation, queued: its turn goes to the workers once the request's transaction commits."""
    check_active_jobs(session, project)  # an evaluation holds a worker like a job does
    planned = plan_evaluation(session, settings, project, body)
    source, record = planned.source, planned.file
    job = Job(id=new_id("eval"), project_id=project.id, kind=KIND, model=body.model, base_model=source.base.id,
              task=planned.task.name, training_file=record.id, seed=0, method={"type": KIND},
              hyperparameters=planned.options, column_mapping=planned.mapping, training_plan=planned.plan,
              status=states.QUEUED, attempt=0, created_at=now(), enqueued_at=now(), devices=1)
    session.add(job)
    session.flush()
    append_event(session, job.id, f"Evaluating {body.model} on {record.id}: {record.rows} rows, task "
                                  f"{planned.task.name}, columns {json.dumps(planned.mapping)}.",
                 data={"rows": record.rows})
    if planned.options.get("note"):
        append_event(session, job.id, planned.options["note"])
    append_event(session, job.id, "Evaluation queued.", data={"status": states.QUEUED})
    enqueue_after_commit(session, job.id, job.devices)
    return job


def plan_evaluation(session: Session, settings: Settings, project: ProjectRef,
                    body: EvaluationCreate) -> PlannedEvaluation:
    """Every check an evaluation request goes through; a 400 naming the field."""
    source = model_source(session, settings, project, body.model)
    record = usable_file(session, project, body.file, "file")
    trained = session.get(Job, source.job_id) if source.job_id else None
    task, mapping = _task_and_mapping(body, source, record, trained)
    try:
        plan = _plan(task, source, record, mapping, body.chat_template)
        # For a fine-tuned model too: its chat template (the plan's, or its base's) must lay out this
        # file's conversations, which it may never have seen (a prompt/completion model on chats).
        task.check_base_model(source.base.path, source.base.model_type, plan)
        _check_rows(settings, task, source, record, mapping, plan)
    except FieldProblem as problem:
        param = problem.param if problem.param in ("model", "chat_template") else "file"
        raise bad_request(problem.message, param) from None
    preference = plan.get("format") == "preference"
    options: dict[str, Any] = {
        "max_seq_length": _max_seq_length(source, trained),
        "batch_size": _batch_size(trained),
        "metrics": _metrics(task.name, preference, body.metrics),
    }
    if preference:
        options.update(_reference(session, settings, project, body, source))
    elif body.reference_model is not None or body.beta is not None:
        raise bad_request("reference_model and beta apply to preference files (pairs of a preferred and a "
                          f"non-preferred answer); file {record.id} holds {task.name} rows of another shape.",
                          "reference_model" if body.reference_model is not None else "beta")
    return PlannedEvaluation(source, record, task, mapping, plan, options)


def _task_and_mapping(body: EvaluationCreate, source: ModelSource, record: File,
                      trained: Job | None) -> tuple[Any, dict[str, str]]:
    """The task (the model's; for a base model the file's) and which column plays which role."""
    profile = record.profile or {}
    if source.is_base:
        if not record.detected_task:
            raise bad_request(f"The task could not be detected from file {record.id}'s columns "
                              f"({', '.join(record.columns) or 'none'}), so a base model cannot be evaluated on it.",
                              "file", code="task_not_detected")
        task = get_task(record.detected_task)
        if task.head_is_new:
            raise bad_request(f"Base model '{body.model}' has no trained {task.name} head: fine-tuning puts a new one "
                              f"on it, so before that it would score at chance. Evaluate a fine-tuned model "
                              f"(ft:…) of this task instead.", "model", code="model_not_evaluable")
        return task, dict(record.detected_column_mapping or task.detect(profile) or {})
    task = get_task(source.task)
    # The roles the model was trained with, where the file has those columns: a hint that wins over the
    # file's own detection (the same file layout as training, read the same way).
    hints = {role: column for role, column in ((trained.column_mapping if trained else None) or {}).items()
             if column in (record.columns or [])}
    if record.detected_task == task.name:
        detected = dict(record.detected_column_mapping or {})
    else:
        detected = task.detect(profile) or {}
    if detected:
        return task, {**detected, **{role: column for role, column in hints.items() if role in detected}}
    required = [role for role, needed in task.roles.items() if needed]
    if required and all(role in hints for role in required):
        return task, hints
    holds = f"{record.detected_task} rows" if record.detected_task else \
        f"rows of no task this service detects (columns: {', '.join(record.columns) or 'none'})"
    raise bad_request(f"'{body.model}' is a {task.name} model, so it is evaluated on {task.name} rows; file "
                      f"{record.id} holds {holds}. Upload a file of {task.name} rows (roles: "
                      f"{', '.join(task.roles)}).", "file", code="task_mismatch")


def _plan(task, source: ModelSource, record: File, mapping: dict[str, str], chat_template: str | None):
    """What tokenizing needs to know: the file's shape (its format), and for a fine-tuned model what its
    head and tokenizer fixed when it was trained (labels, target scaling, chat template)."""
    try:
        plan = task.plan(mapping, record.profile or {}, None)
    except FieldProblem:
        if source.is_base:
            raise
        # Refusals meant for training files (a single class, a constant target) say nothing about
        # evaluating a trained head; every row is read below instead.
        plan = {}
    if not source.is_base:
        shape = {key: plan[key] for key in ("format", "chat") if key in plan}
        plan = {**plan, **source.plan, **shape}
    if chat_template is not None:
        if "chat_template" not in plan:
            raise FieldProblem("chat_template", f"chat_template applies to text-generation, not {task.name}.")
        plan["chat_template"] = chat_template
    if plan.get("format") == "preference":
        plan["method"] = "dpo"  # rows become pairs (app.ml.tasks.preference), scored as DPO scores them
    else:
        plan.pop("method", None)
    # Perplexity of the reference answers: the answer tokens only, whatever the model trained on.
    return task.plan_with_options(plan, {"completion_only_loss": True})


def _check_rows(settings: Settings, task, source: ModelSource, record: File, mapping: dict[str, str],
                plan: dict[str, Any]) -> None:
    """Every row reads as the task's row for this model (the worker reads them the same way)."""
    storage = get_storage()

    def rows():
        return iter_numbered_records(storage.local_path(record.storage_key), record.format,
                                     ScanLimits.from_settings(settings))

    task.check_rows(rows(), mapping, "file")
    lineage.check_known_labels(source, task, rows(), mapping, plan, "file")
    for line, row in rows():
        try:
            task.row(row, mapping, plan)
        except FieldProblem as problem:
            raise FieldProblem("file", problem.message) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            missing = [column for column in mapping.values() if column not in row]
            why = f"it has no column {missing[0]!r}" if missing else f"{type(exc).__name__}: {str(exc)[:100]}"
            raise FieldProblem("file", f"Line {line} of file cannot be read as a {task.name} row for this model "
                                       f"({why}).") from None


def _max_seq_length(source: ModelSource, trained: Job | None) -> int:
    """Tokens per row: what the model was trained with, or the base model's context."""
    trained_length = ((trained.hyperparameters if trained else None) or {}).get("max_seq_length")
    if isinstance(trained_length, int):
        return trained_length
    try:
        config = json.loads((source.base.path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    config = config.get("text_config") or config
    context = next((config[name] for name in CONTEXT_FIELDS if isinstance(config.get(name), int)), 1024)
    return int(min(max(context, RANGES["max_seq_length"][0]), RANGES["max_seq_length"][1]))


def _batch_size(trained: Job | None) -> int:
    per_device = ((trained.hyperparameters if trained else None) or {}).get("per_device_batch_size")
    # Twice the training micro-batch, as the job's own evaluations ran (no gradients to hold).
    return 2 * per_device if isinstance(per_device, int) else DEFAULT_BATCH


def _metrics(task_name: str, preference: bool, requested: list[str] | None) -> list[str] | None:
    if not requested:
        return None
    valid = PREFERENCE_METRICS if preference else METRICS.get(task_name)
    names = [name if name.startswith("eval_") else f"eval_{name}" for name in requested]
    unknown = [asked for asked, name in zip(requested, names) if valid is not None and name not in valid]
    if unknown:
        kind = "preference files" if preference else task_name
        raise bad_request(f"Unknown metric {unknown[0]!r}: the metrics of {kind} are {', '.join(valid)}.", "metrics")
    return list(dict.fromkeys(names))


def _reference(session: Session, settings: Settings, project: ProjectRef, body: EvaluationCreate,
               source: ModelSource) -> dict[str, Any]:
    """The model preference rewards are measured against: the one asked for, or the model's base."""
    beta = body.beta if body.beta is not None else DEFAULT_BETA
    if body.reference_model is None:
        note = (f"No reference_model given: rewards are measured against the base model '{source.base.id}'"
                + (" itself, so every pair ties (reward accuracy 0.5)." if source.is_base else "."))
        return {"reference_model": source.base.id, "beta": beta, "note": note}
    reference = model_source(session, settings, project, body.reference_model, param="reference_model")
    if reference.task not in (None, "text-generation"):
        raise bad_request(f"'{body.reference_model}' is a {reference.task} model; a reference for preference pairs "
                          "is a text-generation model.", "reference_model")
    if reference.base.id != source.base.id:
        raise bad_request(f"'{body.reference_model}' goes back to base model '{reference.base.id}', and "
                          f"'{body.model}' to '{source.base.id}': log-probabilities compare only on one tokenizer. "
                          "Use a model of the same base as the reference.", "reference_model")
    return {"reference_model": body.reference_model, "beta": beta, "note": None}


# --- reading and stopping ---------------------------------------------------------------------

def get_evaluation(session: Session, project: ProjectRef, evaluation_id: str) -> Job:
    job = session.get(Job, evaluation_id)
    if job is None or job.project_id != project.id or job.kind != KIND:
        raise not_found("evaluation", evaluation_id, "evaluation_id")
    return job


def list_evaluations(session: Session, project: ProjectRef, file: str | None, model: str | None,
                     after: str | None, limit: int) -> list[Job]:
    query = select(Job).where(Job.project_id == project.id, Job.kind == KIND)
    if file:
        query = query.where(Job.training_file == file)
    if model:
        query = query.where(Job.model == model)
    if after:
        query = query.where(Job.id < get_evaluation(session, project, after).id)  # ids are time-ordered
    return list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))


def cancel_evaluation(session: Session, project: ProjectRef, evaluation_id: str) -> Job:
    """A queued evaluation is cancelled at once; a running one gets the flag its worker reads between batches."""
    job = get_evaluation(session, project, evaluation_id)
    if job.status in states.TERMINAL:
        raise ApiError(409, f"Evaluation {evaluation_id} has already {job.status}; there is nothing to cancel.",
                       param="evaluation_id", code="evaluation_not_cancellable")
    if not transition(session, job.id, frozenset({states.QUEUED, states.PAUSED}), states.CANCELLED,
                      "Evaluation cancelled."):
        job.cancel_requested = True
        append_event(session, job.id, "Cancellation requested; the worker will stop after the current batch.")
    session.flush()
    session.refresh(job)
    return job
