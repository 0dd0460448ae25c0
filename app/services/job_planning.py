"""Every check a job request goes through before the job may exist, against its files and base model,
and its hyperparameters resolved: what a job (or an estimate of one) is made from. Nothing invalid ever
reaches a worker; each refusal is a 400 naming the field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.config import Settings
from app.data.scan import ScanLimits, iter_numbered_records
from app.db.models import File
from app.errors import bad_request
from app.ml import hyperparams
from app.ml.adapters import resolve_adapter
from app.jobs.sources import ModelSource, SourceProblem, find_source
from app.ml.tasks import TASKS, FieldProblem, get_task
from app.schemas.jobs import Hyperparameters, JobCreate, Method, Supervised
from app.services import lineage
from app.services.keys import ProjectRef
from app.storage import get_storage


@dataclass
class PlannedJob:
    """A job request checked against its files and base model, hyperparameters resolved: all a job
    (or an estimate of one) is made from."""

    body: JobCreate
    task: Any
    mapping: dict[str, str]
    plan: dict[str, Any]
    hyperparameters: dict[str, Any]
    train: File
    valid: File | None
    base: Any
    method: str = "supervised"  # OpenAI's method.type: "supervised" or "dpo"
    source: ModelSource | None = None  # what it starts from: ``base``, or a fine-tuned model or checkpoint


def plan_job(session: Session, settings: Settings, project: ProjectRef, body: JobCreate) -> PlannedJob:
    """Every check a job request goes through before it may exist; raises a 400 naming the field."""
    method = body.method or _legacy_method(body)
    if method.type not in METHODS:
        raise bad_request(f"method.type '{method.type}' is not supported; use one of: {', '.join(METHODS)}.",
                          "method.type", code="unsupported_method")
    section = getattr(method, method.type)
    requested = (section.hyperparameters if section else None) or body.hyperparameters
    prefix = f"method.{method.type}.hyperparameters"
    requested_values = checked_ranges(requested, prefix) if requested else {}
    adapter_request = body.adapter or (requested.adapter if requested else None)

    source = model_source(session, settings, project, body.model)
    base = source.base
    train = usable_file(session, project, body.training_file, "training_file")
    valid = usable_file(session, project, body.validation_file, "validation_file") if body.validation_file else None

    task_name, mapping = _task_and_mapping(body, train, source.task)
    task = get_task(task_name)
    for key in set(requested_values) - set(task.default_hyperparameters):
        if any(key in other.default_hyperparameters for other in TASKS.values()):
            raise bad_request(f"{key} applies to other tasks than {task_name}.", f"{prefix}.{key}")
    if method.type == "dpo":
        for key in set(requested_values) & set(task.default_hyperparameters):
            raise bad_request(f"{key} applies to supervised training, not to DPO.", f"{prefix}.{key}")
    try:
        plan = task.plan(mapping, train.profile, valid.profile if valid else None)
        plan["method"] = method.type
        if method.type == "dpo" and plan.get("format") != "preference":
            raise FieldProblem("training_file", f"DPO trains on preference pairs, and training_file holds "
                               f"{task_name} rows of another shape. Upload one JSON object a line in OpenAI's "
                               "preference format: {\"input\": {\"messages\": […]}, \"preferred_output\": "
                               "[{\"role\": \"assistant\", …}], \"non_preferred_output\": [{\"role\": "
                               "\"assistant\", …}]}.")
        if body.chat_template is not None:
            if "chat_template" not in plan:
                raise FieldProblem("chat_template", f"chat_template applies to text-generation jobs, not {task_name}.")
            plan["chat_template"] = body.chat_template
        plan = lineage.inherited_plan(source, plan, chat_template_given=body.chat_template is not None)
        task.check_base_model(base.path, base.model_type, task.plan_with_options(plan, requested_values))
        adapter = lineage.continued_adapter(source, adapter_request.model_dump(exclude_none=True)
                                            if adapter_request else None)
        if source.is_base:
            adapter = resolve_adapter(adapter, base.model_type, base.path)
        storage = get_storage()
        for record, param in ((train, "training_file"), (valid, "validation_file")):
            if record is not None:
                def rows(record=record):
                    return iter_numbered_records(storage.local_path(record.storage_key), record.format,
                                                 ScanLimits.from_settings(settings))
                task.check_rows(rows(), mapping, param)
                lineage.check_known_labels(source, task, rows(), mapping, plan, param)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None

    mean_chars = sum(train.profile.get(mapping.get(role, ""), {}).get("text_chars_mean", 0.0)
                     for role in task.length_roles)
    config = _model_config(base.path)
    resolved = hyperparams.resolve_hyperparameters(requested_values, train.rows,
                                                   config.get("max_position_embeddings") or config.get("n_positions"),
                                                   mean_chars, has_validation_file=valid is not None, task=task,
                                                   adapter=adapter, model_width=config.get("hidden_size")
                                                   or config.get("d_model") or config.get("n_embd"),
                                                   method=method.type)
    if method.type == "dpo":
        for key in task.default_hyperparameters:  # packing, completion-only loss: supervised choices
            resolved.pop(key, None)
    return PlannedJob(body, task, mapping, plan, resolved, train, valid, base, method.type, source)


# What each hyperparameter may be, beyond its type (pydantic checks those).
RANGES = {"n_epochs": (1, 100), "batch_size": (1, 4096), "learning_rate_multiplier": (1e-3, 100),
          "learning_rate": (1e-8, 1.0), "warmup_ratio": (0.0, 0.5), "weight_decay": (0.0, 1.0),
          "gradient_accumulation_steps": (1, 1024), "max_seq_length": (8, 32768), "per_device_batch_size": (1, 4096),
          "devices": (1, 64), "eval_every": (1, 10**7), "checkpoint_every": (1, 10**7),
          "early_stopping_patience": (1, 1000), "beta": (1e-3, 10.0), "validation_split": (0.0, 0.5)}
# The training methods jobs may ask for (OpenAI's method.type); "reinforcement" is not offered.
METHODS = ("supervised", "dpo")


def checked_ranges(requested: Hyperparameters, prefix: str = "method.supervised.hyperparameters") -> dict[str, Any]:
    """The requested hyperparameters (adapter apart), each within its range; a 400 naming the first that is not."""
    values = requested.model_dump(exclude_none=True, exclude={"adapter"})
    for key, (low, high) in RANGES.items():
        value = values.get(key)
        if value is not None and value != "auto" and not low <= value <= high:
            raise bad_request(f"{key} must be between {low} and {high} (got {value}).", f"{prefix}.{key}")
    return values


def usable_file(session: Session, project: ProjectRef, file_id: str, param: str) -> File:
    record = session.get(File, file_id)
    if record is None or record.project_id != project.id:
        raise bad_request(f"No file with id '{file_id}'. Upload it with POST /v1/files first.", param,
                          code="file_not_found")
    if record.status != "processed":
        first = (record.validation.get("errors") or [{"message": "it could not be read"}])[0]
        where = f" (line {first['line']})" if first.get("line") else ""
        raise bad_request(f"{param} {file_id} has validation errors{where}: {first['message']} Fix the file and "
                          "upload it again; GET /v1/files/{id} lists every problem.", param, code="invalid_file")
    return record


def model_source(session: Session, settings: Settings, project: ProjectRef, model: str,
                 param: str = "model") -> ModelSource:
    """The base model, fine-tuned model or checkpoint ``model`` names; a 400 naming ``param`` if none."""
    try:
        return find_source(session, settings, project.id, model)
    except SourceProblem as problem:
        raise bad_request(problem.message, param, code=problem.code) from None


def _model_config(path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _legacy_method(body: JobCreate):
    return Method(type="supervised", supervised=Supervised(hyperparameters=body.hyperparameters or {}))


def _task_and_mapping(body: JobCreate, train: File, trained_for: str | None) -> tuple[str, dict[str, str]]:
    if body.task == "auto" and trained_for:
        if train.detected_task and train.detected_task != trained_for:
            raise bad_request(f"training_file holds {train.detected_task} rows, and '{body.model}' was fine-tuned "
                              f"for {trained_for}: it trains on only with {trained_for} rows.", "training_file",
                              code="task_mismatch")
        task_name = trained_for  # a model trained on keeps its task (and its head)
    elif body.task == "auto":
        if not train.detected_task:
            raise bad_request("The task could not be detected from training_file's columns "
                              f"({', '.join(train.columns)}). Set 'task' and 'column_mapping'.", "task",
                              code="task_not_detected")
        task_name = train.detected_task
    else:
        task_name = get_task_or_400(body.task).name
    if trained_for and task_name != trained_for:
        raise bad_request(f"'{body.model}' was fine-tuned for {trained_for} and trains on only as {trained_for}; "
                          f"this job asks for {task_name}. Start {task_name} from a base model.", "task",
                          code="task_mismatch")
    task = get_task(task_name)
    detected = task.detect(train.profile) or task.guess_mapping(train.profile)
    given = body.column_mapping or {}
    for role in given:
        if role not in task.roles:
            raise bad_request(f"'{role}' is not a column role of {task_name}; its roles are: "
                              f"{', '.join(task.roles)}.", f"column_mapping.{role}")
    return task_name, {**detected, **given}


def get_task_or_400(name: str):
    try:
        return get_task(name)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None
