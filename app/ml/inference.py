"""Loaded models for prediction: an LRU cache that never loads one model twice at once, and batched
forward passes run off the event loop."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.ml.artifacts import load_for_inference
from app.ml.tasks import get_task


@dataclass
class LoadedModel:
    task: str
    model: Any
    tokenizer: Any
    lock: threading.Lock


class ModelCache:
    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._guard = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, model_id: str, task: str, path: Path, base_path: Path | None = None) -> LoadedModel:
        with self._guard:
            if model_id in self._models:
                self._models.move_to_end(model_id)
                return self._models[model_id]
            load_lock = self._loading.setdefault(model_id, threading.Lock())
        with load_lock:  # concurrent first requests wait for one load instead of each loading
            with self._guard:
                if model_id in self._models:
                    return self._models[model_id]
            loaded = _load(task, path, base_path)
            with self._guard:
                self._models[model_id] = loaded
                self._loading.pop(model_id, None)
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            return loaded

    def drop(self, model_id: str) -> None:
        with self._guard:
            self._models.pop(model_id, None)

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._models


def _load(task_name: str, path: Path, base_path: Path | None) -> LoadedModel:
    task, model, tokenizer = load_for_inference(path, task_name, base_path)
    return LoadedModel(task.name, model, tokenizer, threading.Lock())


def predict(loaded: LoadedModel, inputs: list[Any], parameters: dict[str, Any], batch_size: int) -> list[Any]:
    """Run in a worker thread. Inputs are sorted by length so each batch pads little, then put back."""
    task = get_task(loaded.task)
    order = sorted(range(len(inputs)), key=lambda i: len(str(inputs[i])))
    outputs: list[Any] = [None] * len(inputs)
    with loaded.lock:  # one forward at a time per model; torch already uses every core for one
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for index, output in zip(chunk, task.predict(loaded.model, loaded.tokenizer,
                                                         [inputs[i] for i in chunk], parameters)):
                outputs[index] = output
    return outputs
