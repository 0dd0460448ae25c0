"""The task registry: the one place that knows which tasks exist. Training (worker) and inference
(API) both look tasks up here."""

from __future__ import annotations

from typing import Any

from app.ml.tasks.base import FieldProblem, Task
from app.ml.tasks.classification import TextClassification
from app.ml.tasks.multilabel import MultiLabelClassification
from app.ml.tasks.question_answering import QuestionAnswering
from app.ml.tasks.regression import TextRegression
from app.ml.tasks.seq2seq import Summarization
from app.ml.tasks.text_generation import TextGeneration
from app.ml.tasks.token_classification import TokenClassification

# Detection order matters: the first task whose detect() accepts a file wins. Shapes that are
# unambiguous (lists of words, SQuAD answers, chat messages) come before the plain text + label ones,
# and free-text targets (summaries) before class labels.
TASKS: dict[str, Task] = {t.name: t for t in (
    TokenClassification(), QuestionAnswering(), TextGeneration(), MultiLabelClassification(), Summarization(),
    TextClassification(), TextRegression())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise FieldProblem("task", f"Unknown task '{name}'. Use 'auto' or one of: {', '.join(TASKS)}.") from None


def detect_task(profile: dict[str, Any]) -> tuple[str, dict[str, str]] | None:
    for task in TASKS.values():
        mapping = task.detect(profile)
        if mapping:
            return task.name, mapping
    return None


__all__ = ["TASKS", "FieldProblem", "Task", "detect_task", "get_task"]
