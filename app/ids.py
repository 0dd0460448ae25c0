"""Prefixed random ids (``file-…``, ``ftjob-…``) as the OpenAI API uses them."""

from __future__ import annotations

import secrets

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def random_token(length: int = 24) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}-{random_token(length)}"


def short_job_id(job_id: str) -> str:
    """The part of a job id that goes into the fine-tuned model's name."""
    return job_id.split("-", 1)[1][:8]
