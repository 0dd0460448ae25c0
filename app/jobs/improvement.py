"""How much better a job made its model: the evaluation before the first step against the last one, in
the task's headline metric ("eval accuracy 0.50 → 0.91", "eval perplexity 24.1 → 9.7"). The worker
stores the "before" on the job as soon as it is measured (``baseline``), so a paused or resumed job keeps
it; the job object, the metrics series (step 0) and the "succeeded" event show it next to the final score."""

from __future__ import annotations

from typing import Any


def baseline(metric: str, metrics: dict[str, float], note: str | None) -> dict[str, Any]:
    """What is stored on the job: the headline metric's name, every metric before training, and what
    the "before" stands for where it is not the base model's own skill (a new head, a DPO reference)."""
    return {"metric": metric, "metrics": metrics, "note": note}


def _number(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def label(metric: str) -> str:
    return metric.replace("_", " ")


def summary(stored: dict[str, Any] | None, after: dict[str, Any] | None) -> str | None:
    """``eval accuracy 0.50 → 0.91``, or None where either side lacks the headline metric."""
    if not stored:
        return None
    metric = stored.get("metric")
    before, final = (stored.get("metrics") or {}).get(metric), (after or {}).get(metric)
    if not isinstance(before, (int, float)) or not isinstance(final, (int, float)):
        return None
    return f"{label(metric)} {_number(before)} → {_number(final)}"


def evaluation_view(stored: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """The job object's ``evaluation``: before, after (the latest evaluation while the job runs) and
    the summary line."""
    if not stored:
        return None
    metric = stored.get("metric")
    return {"metric": metric, "before": (stored.get("metrics") or {}).get(metric),
            "after": (after or {}).get(metric), "summary": summary(stored, after), "note": stored.get("note"),
            "before_metrics": stored.get("metrics") or {}}
