"""A job that trains on from one of the project's fine-tuned models or checkpoints: what it inherits
(task, labels, chat template, LoRA adapter) and what it may not change. Each refusal names the field
(or the line) and says what to do instead."""

from __future__ import annotations

from typing import Any

from app.data.profile import value_key
from app.jobs.sources import ModelSource
from app.ml.tasks import FieldProblem

# Where a task keeps its labels in a row (classification and multilabel: "label"; NER: "tags").
_LABEL_ROLES = ("label", "tags")


def inherited_plan(source: ModelSource, plan: dict[str, Any], chat_template_given: bool) -> dict[str, Any]:
    """The new job's plan with what its parent's head and tokenizer fixed: the labels, in the head's
    order, and a chat template the job does not replace."""
    if source.is_base:
        return plan
    plan = dict(plan)
    if "labels" in source.plan:
        plan["labels"] = list(source.plan["labels"])
        plan.pop("label_counts", None)  # of the parent's file; this file's counts no longer line up
    if not chat_template_given and source.plan.get("chat_template") and "chat_template" in plan:
        plan["chat_template"] = source.plan["chat_template"]
    return plan


def continued_adapter(source: ModelSource, requested: dict[str, Any] | None) -> dict[str, Any] | None:
    """A LoRA parent goes on with its own adapter (rank, targets and weights are the parent's); a full
    parent goes on as a full model. Asking for another adapter is refused rather than ignored."""
    if source.is_base:
        return requested
    if source.adapter is None:
        if requested:
            raise FieldProblem("adapter", f"'{source.id}' is a fully fine-tuned model, so it trains on as a full "
                               "model. Leave adapter out, or start the LoRA job from its base model "
                               f"'{source.base.id}'.")
        return None
    if requested:
        differs = {k: v for k, v in requested.items() if k != "type" and source.adapter.get(k) != v}
        if requested.get("type", "lora") != "lora" or differs:
            raise FieldProblem("adapter", f"'{source.id}' carries a LoRA adapter (r={source.adapter.get('r')}, "
                               f"alpha={source.adapter.get('alpha')}) and trains on with that same adapter; "
                               f"{', '.join(sorted(differs)) or 'type'} cannot change. Leave adapter out.")
    return dict(source.adapter)


def check_known_labels(source: ModelSource, task, records, mapping: dict[str, str], plan: dict[str, Any],
                       param: str) -> None:
    """Every label of the file is one the parent's head knows; the first line with another is named."""
    if source.is_base or "labels" not in source.plan:
        return
    known = set(source.plan["labels"])
    column = next((mapping[role] for role in _LABEL_ROLES if role in mapping), None)
    if column is None:
        return
    for line, record in records:
        value = record.get(column)
        values = value if isinstance(value, list) else [value]
        unknown = sorted({value_key(v) for v in values if v is not None} - known)
        if unknown:
            raise FieldProblem(param, f"Line {line} of {param}: label {unknown[0]!r} is not one '{source.id}' "
                               f"knows ({', '.join(sorted(known)[:20])}). A model trained on keeps its head and "
                               "its labels: drop or relabel those rows, or start from the base model "
                               f"'{source.base.id}' to train a new head.")
