"""Loaded models for prediction. The cache is bounded by a memory budget (least recently used go
first), never loads one model twice at once, and lets LoRA models that share a base model share its
weights: one peft model per (base, task head) holds every adapter, and each batch switches to its
own adapter under the base's lock."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.ml.artifacts import load_adapter_into, load_base_for_adapters, load_full, read_service_config
from app.ml.tasks import get_task
from app.observability import CACHE_ADAPTERS, CACHE_BASES, CACHE_BYTES, CACHE_MODELS


@dataclass
class LoadedModel:
    """What a prediction runs on: the model (for an adapter, the shared peft model), its tokenizer,
    what training knew (plan, max_length), and the adapter to switch to before each forward."""

    task: str
    model: Any
    tokenizer: Any
    lock: threading.Lock
    plan: dict[str, Any] = field(default_factory=dict)
    max_length: int = 512
    adapter: str | None = None
    bytes: int = 0
    base_key: str | None = None

    def activate(self) -> None:
        """Point a shared peft model at this model's adapter; call with ``lock`` held."""
        if self.adapter is not None:
            self.model.set_adapter(self.adapter)


@dataclass
class _Base:
    model: Any  # a PeftModel holding one adapter per served model
    lock: threading.Lock
    bytes: int
    adapters: set[str] = field(default_factory=set)


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


class ModelCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = max(1, budget_bytes)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._bases: dict[str, _Base] = {}
        self._guard = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def peek(self, model_id: str) -> LoadedModel | None:
        """The model if it is loaded (marked as just used), without ever loading it."""
        with self._guard:
            loaded = self._models.get(model_id)
            if loaded is not None:
                self._models.move_to_end(model_id)
            return loaded

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
            loaded = self._load(model_id, task, path, base_path)
            with self._guard:
                self._models[model_id] = loaded
                self._loading.pop(model_id, None)
                self._evict(keep=model_id)
                self._publish()
            return loaded

    def _load(self, model_id: str, task_name: str, path: Path, base_path: Path | None) -> LoadedModel:
        service = read_service_config(path)
        task = get_task(service.get("task", task_name))
        plan = service.get("plan", {})
        max_length = int(service.get("hyperparameters", {}).get("max_seq_length") or 512)
        if service.get("adapter") or (path / "adapter_config.json").exists():
            # Adapters trained with the same head configuration share one base model in memory.
            key = json.dumps([str(base_path), task.name, task.model_kwargs(plan)], sort_keys=True, default=str)
            with self._guard:
                base = self._bases.get(key)
            if base is None:
                model = load_base_for_adapters(task, plan, path, base_path, adapter_name=model_id)
                base = _Base(model, threading.Lock(), model_bytes(model))
                with self._guard:
                    self._bases[key] = base
            else:
                with base.lock:  # adding an adapter must not race a forward on another one
                    load_adapter_into(base.model, path, adapter_name=model_id)
            base.adapters.add(model_id)
            tokenizer = task.prepare_tokenizer(_tokenizer(path), plan)
            adapter_bytes = sum(f.stat().st_size for f in path.glob("adapter_model.safetensors"))
            return LoadedModel(task.name, base.model, tokenizer, base.lock, plan, max_length, model_id,
                               adapter_bytes, key)
        model = load_full(task, path)
        tokenizer = task.prepare_tokenizer(_tokenizer(path), plan)
        return LoadedModel(task.name, model, tokenizer, threading.Lock(), plan, max_length, None, model_bytes(model))

    def _used_bytes(self) -> int:
        return sum(m.bytes for m in self._models.values()) + sum(b.bytes for b in self._bases.values())

    def _evict(self, keep: str) -> None:
        """Drop least recently used models until the budget holds (never the one just loaded)."""
        while self._used_bytes() > self.budget_bytes:
            victim = next((m for m in self._models if m != keep), None)
            if victim is None:
                return
            self._forget(victim)

    def _forget(self, model_id: str) -> None:
        loaded = self._models.pop(model_id, None)
        if loaded is None or loaded.base_key is None:
            return
        base = self._bases.get(loaded.base_key)
        if base is None:
            return
        base.adapters.discard(model_id)
        if not base.adapters:
            del self._bases[loaded.base_key]  # the last adapter gone: the base weights go too
        else:
            with base.lock:
                base.model.delete_adapter(model_id)

    def drop(self, model_id: str) -> None:
        with self._guard:
            self._forget(model_id)
            self._publish()

    def _publish(self) -> None:
        CACHE_BYTES.set(self._used_bytes())
        CACHE_MODELS.set(len(self._models))
        CACHE_BASES.set(len(self._bases))
        CACHE_ADAPTERS.set(sum(1 for m in self._models.values() if m.adapter is not None))

    def stats(self) -> dict[str, Any]:
        with self._guard:
            return {"models": list(self._models), "bases": len(self._bases), "bytes": self._used_bytes(),
                    "budget_bytes": self.budget_bytes}

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._models


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def predict(loaded: LoadedModel, inputs: list[Any], parameters: dict[str, Any], batch_size: int) -> list[Any]:
    """The task's predictions, in a worker thread."""
    task = get_task(loaded.task)
    return in_sorted_batches(loaded, inputs, batch_size, lambda chunk: task.predict(loaded, chunk, parameters))


def in_sorted_batches(loaded: LoadedModel, inputs: list[Any], batch_size: int,
                      forward: Callable[[list[Any]], list[Any]]) -> list[Any]:
    """``forward`` over batches of at most ``batch_size`` inputs, sorted by length so each batch pads
    little, with the outputs put back in the inputs' order."""
    order = sorted(range(len(inputs)), key=lambda i: len(str(inputs[i])))
    outputs: list[Any] = [None] * len(inputs)
    with loaded.lock:  # one forward at a time per model (or shared base); torch already uses every core
        loaded.activate()
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for index, output in zip(chunk, forward([inputs[i] for i in chunk])):
                outputs[index] = output
    return outputs
