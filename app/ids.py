"""Prefixed random ids (``file-…``, ``ftjob-…``) as the OpenAI API uses them."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def random_token(length: int = 24) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    """Ids sort in creation order (13 hex digits of microseconds, then randomness), so cursor paging by
    id is stable even when many objects share one created_at second."""
    return f"{prefix}-{time.time_ns() // 1000:013x}{random_token(length - 13)}"


def short_job_id(job_id: str) -> str:
    """The part of a job id that goes into the fine-tuned model's name."""
    # The random tail, not the time prefix: jobs created close together still get distinct names.
    return job_id.split("-", 1)[1][-8:]
