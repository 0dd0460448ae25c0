"""How a job's things are named: the ids clients see (``ft:…`` models, ``…:ckpt-step-N`` checkpoints) and
the storage keys of a project's files, a job's model and its checkpoints. Keys are made here, never from a
name a client gave."""

from __future__ import annotations

from app.ids import short_job_id


def fine_tuned_model_id(base_model: str, suffix: str | None, job_id: str) -> str:
    """``ft:<base model>:<suffix or empty>:<the job's short id>``, as OpenAI names fine-tuned models."""
    return f"ft:{base_model}:{suffix or ''}:{short_job_id(job_id)}"


def checkpoint_model_id(model_id: str, step: int) -> str:
    """A checkpoint, servable like the model it would become."""
    return f"{model_id}:ckpt-step-{step}"


def file_key(project_id: str, file_id: str) -> str:
    return f"files/{project_id}/{file_id}"


def model_key(project_id: str, job_id: str) -> str:
    return f"models/{project_id}/{job_id}"


def checkpoints_prefix(project_id: str, job_id: str) -> str:
    """The folder of a job's checkpoints (one ``checkpoint-<step>`` folder each), kept across attempts."""
    return f"checkpoints/{project_id}/{job_id}"


def checkpoint_key(prefix: str, step: int) -> str:
    return f"{prefix}/checkpoint-{step}"
