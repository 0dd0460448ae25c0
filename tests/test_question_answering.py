"""Unanswerable questions (SQuAD 2.0): a window whose [CLS] start and end outweigh every span says
"no answer"; evaluation scores data with unanswerable rows that way, and prediction offers it with the
pipeline's ``handle_impossible_answer``. Pure functions on chosen logits; the trained model's
predictions are checked in tests/test_tasks.py."""

from __future__ import annotations

import numpy as np
import pytest

from app.ml.tasks import get_task
from app.ml.tasks.question_answering import no_answer_wins, window_answers

# A window of 6 tokens: [CLS] question [SEP] "the cat sat" (three context tokens) … no [SEP] needed here.
OFFSETS = [None, None, None, (0, 3), (4, 7), (8, 11)]
CONTEXT = "the cat sat"


def _logits(start_at: int, end_at: int, peak: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    start, end = np.zeros(len(OFFSETS)), np.zeros(len(OFFSETS))
    start[start_at], end[end_at] = peak, peak
    return start, end


def test_a_window_weighs_its_spans_against_no_answer():
    spans, null = window_answers(*_logits(4, 4), OFFSETS)
    assert spans[0][1:] == (4, 7) and CONTEXT[4:7] == "cat"
    assert spans[0][0] > 0.9 and null < 0.01 and not no_answer_wins(spans, null)

    spans, null = window_answers(*_logits(0, 0), OFFSETS)  # the model points at [CLS]
    assert null > 0.9 and all(p < 0.01 for p, _, _ in spans) and no_answer_wins(spans, null)
    # Probabilities share one normaliser (context and [CLS]), so they compare and never exceed 1.
    assert null + sum(p for p, _, _ in window_answers(*_logits(0, 0), OFFSETS, n_best=9)[0]) <= 1 + 1e-9


def test_a_window_without_cls_cannot_say_no_answer():
    offsets = [(0, 3), (4, 7), (8, 11)]
    spans, null = window_answers(np.array([0.0, 5.0, 0.0]), np.array([0.0, 5.0, 0.0]), offsets)
    assert null == 0.0 and spans[0][1:] == (4, 7)


@pytest.mark.parametrize("unanswerable_in_data, expected_exact", [(True, 100.0), (False, 50.0)])
def test_evaluation_scores_no_answer_only_on_data_that_has_unanswerable_rows(unanswerable_in_data, expected_exact):
    task = get_task("question-answering")
    window = [list(o) if o else [-1, -1] for o in OFFSETS]
    answered, unanswered = _logits(4, 4), _logits(0, 0)
    features = [{"example_id": 0, "offsets": window, "context": CONTEXT, "answer_texts": ["cat"]},
                {"example_id": 1, "offsets": window, "context": CONTEXT,
                 "answer_texts": [] if unanswerable_in_data else ["cat"]}]
    starts = np.stack([answered[0], unanswered[0]])
    ends = np.stack([answered[1], unanswered[1]])
    scores = task.metrics((starts, ends), None, {}, features=features)
    # SQuAD 2.0 data: the [CLS] window predicts "" and is right. SQuAD 1.1 data: the best span is
    # predicted whatever [CLS] says, and here it is wrong.
    assert scores["exact_match"] == expected_exact, scores
