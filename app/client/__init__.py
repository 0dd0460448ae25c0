"""The `finetune` client commands (files, jobs, models, predict, chat): the service's HTTP API from a
terminal. HTTP only: nothing here imports the service's own layers (import-linter checks it)."""

from app.client.files import files_cli
from app.client.jobs import jobs_cli
from app.client.models import models_cli
from app.client.predict import chat, predict

__all__ = ["chat", "files_cli", "jobs_cli", "models_cli", "predict"]
