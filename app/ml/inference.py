"""Loaded models for prediction. The cache is bounded by a memory budget (least recently used go
first), never loads one model twice at once, and lets LoRA models that share a base model share its
weights: one peft model per (base, task head) holds every adapter, and each batch switches to its
own adapter under the base's lock.

That lock is shared by every project whose adapters sit on the base, so it is fair: waiters take
turns by model (see ``FairLock``), and work that holds it for long (a generation, a list of batches)
hands it over between decoding steps or batches whenever someone waits (``LoadedModel.let_others_run``).
One tenant's long generations therefore delay another's request by a step each, not by their length."""

from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.ml.artifacts import load_adapter_into, load_base_for_adapters, load_full, read_service_config
from app.ml.tasks import get_task
from app.observability import CACHE_ADAPTERS, CACHE_BASES, CACHE_BYTES, CACHE_MODELS


class FairLock:
    """The lock of a model, or of a base model its adapters share. Waiters take turns by owner (the
    model they run: one tenant's), oldest first within an owner, so a tenant with many requests
    waiting gets one turn per round like any other. (``threading.Lock`` has no order at all: a
    thread that releases and re-takes it usually wins again, starving the others.)"""

    def __init__(self):
        self._state = threading.Condition(threading.Lock())
        # Owner → its waiters' tickets, oldest first; owners in the order of their turns.
        self._turns: OrderedDict[Hashable, deque[object]] = OrderedDict()
        self._waiting = 0
        self._held = False

    def acquire(self, owner: Hashable = None) -> None:
        ticket = object()
        with self._state:
            self._turns.setdefault(owner, deque()).append(ticket)
            self._waiting += 1
            while self._held or next(iter(self._turns)) != owner or self._turns[owner][0] is not ticket:
                self._state.wait()
            tickets = self._turns.pop(owner)
            tickets.popleft()
            if tickets:  # the owner's other waiters: after every other owner's turn
                self._turns[owner] = tickets
            self._waiting -= 1
            self._held = True

    def release(self) -> None:
        with self._state:
            self._held = False
            self._state.notify_all()

    @property
    def waiting(self) -> int:
        """Threads waiting for the lock. Read without the lock: at worst a hand-over comes a step late."""
        return self._waiting

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *_) -> None:
        self.release()


@dataclass
class LoadedModel:
    """What a prediction runs on: the model (for an adapter, the shared peft model), its tokenizer,
    what training knew (plan, max_length), and the adapter to switch to before each forward."""

    task: str
    model: Any
    tokenizer: Any
    lock: FairLock
    plan: dict[str, Any] = field(default_factory=dict)
    max_length: int = 512
    adapter: str | None = None
    bytes: int = 0
    base_key: str | None = None
    shared: _Base | None = None  # for an adapter: the base it sits on (who is using which adapter)

    def activate(self) -> None:
        """Point a shared peft model at this model's adapter; call with ``lock`` held."""
        if self.adapter is not None and self.model.active_adapter != self.adapter:
            self.model.set_adapter(self.adapter)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """The model to run on: its lock taken and its adapter active. While held, evicting the
        model does not delete its adapter (the run may have handed the lock to the evicter); the
        last run using an evicted adapter deletes it."""
        self.lock.acquire(self.adapter)
        try:
            if self.shared is not None:
                self.shared.users[self.adapter] += 1
            try:
                self.activate()
                yield
            finally:
                if self.shared is not None:
                    self.shared.done_with(self.adapter)
        finally:
            self.lock.release()

    def let_others_run(self) -> None:
        """Between two decoding steps or batches of a run inside ``hold()``: when other requests wait
        for the lock, let them go first (a turn each per owner), then take it back and switch to this
        model's adapter again. The random number generator's state is kept across the hand-over,
        so a seeded sample draws the same numbers whoever ran in between."""
        if not self.lock.waiting:
            return
        rng = _rng_state()
        self.lock.release()
        self.lock.acquire(self.adapter)
        _restore_rng(rng)
        self.activate()


def _rng_state() -> tuple[Any, Any]:
    import torch

    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


def _restore_rng(state: tuple[Any, Any]) -> None:
    import torch

    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class _Base:
    model: Any  # a PeftModel holding one adapter per served model
    lock: FairLock
    bytes: int
    adapters: set[str] = field(default_factory=set)
    users: Counter[str] = field(default_factory=Counter)  # runs in progress per adapter (under lock)
    retired: set[str] = field(default_factory=set)  # evicted while in use: deleted by their last run

    def done_with(self, adapter: str) -> None:
        """A run on ``adapter`` ended (lock held)."""
        self.users[adapter] -= 1
        if self.users[adapter] <= 0:
            del self.users[adapter]
            if adapter in self.retired:
                self.retired.discard(adapter)
                self.model.delete_adapter(adapter)


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
                base = _Base(model, FairLock(), model_bytes(model))
                with self._guard:
                    self._bases[key] = base
            else:
                with base.lock:  # adding an adapter must not race a forward on another one
                    if model_id in base.retired:  # evicted but still generating: its weights are there
                        base.retired.discard(model_id)
                    else:
                        load_adapter_into(base.model, path, adapter_name=model_id)
            base.adapters.add(model_id)
            tokenizer = task.prepare_tokenizer(_tokenizer(path), plan)
            adapter_bytes = sum(f.stat().st_size for f in path.glob("adapter_model.safetensors"))
            return LoadedModel(task.name, base.model, tokenizer, base.lock, plan, max_length, model_id,
                               adapter_bytes, key, base)
        model = load_full(task, path)
        tokenizer = task.prepare_tokenizer(_tokenizer(path), plan)
        return LoadedModel(task.name, model, tokenizer, FairLock(), plan, max_length, None, model_bytes(model))

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
                if base.users[model_id]:
                    base.retired.add(model_id)  # a run still uses it (see LoadedModel.hold)
                else:
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
    little, with the outputs put back in the inputs' order. One forward at a time per model (or
    shared base): torch already uses every core; others waiting get their turn between batches."""
    order = sorted(range(len(inputs)), key=lambda i: len(str(inputs[i])))
    outputs: list[Any] = [None] * len(inputs)
    with loaded.hold():
        for start in range(0, len(order), batch_size):
            if start:
                loaded.let_others_run()
            chunk = order[start:start + batch_size]
            for index, output in zip(chunk, forward([inputs[i] for i in chunk])):
                outputs[index] = output
    return outputs
