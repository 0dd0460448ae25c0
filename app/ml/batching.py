"""Dynamic batching: concurrent prediction requests for one model are coalesced into one forward.

Each model has a queue and one loop. While the model is busy, requests pile up; when it is free, the
loop takes everything waiting (up to ``max_batch`` inputs, after at most ``max_wait_s`` for more),
groups it by what runs it (a task's predict, an OpenAI completion) and its parameters, and runs each
group as one batch in a worker thread
(sorted by length inside ``predict``, so padding stays small). A lone request therefore pays no
batching delay beyond ``max_wait_s``, and a crowd gets batches as large as the model can take."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anyio.to_thread import run_sync as run_in_thread

from app.ml.inference import LoadedModel, predict
from app.ml.tasks import FieldProblem, get_task
from app.observability import BATCH_INPUTS, PREDICT_BATCHES, PREDICT_INPUTS, PREDICT_LATENCY, PREDICT_REQUESTS


# What runs a batch: (model, inputs, parameters, batch size) → one output per input, in a worker thread.
Runner = Callable[[LoadedModel, list[Any], dict[str, Any], int], list[Any]]


@dataclass
class _Request:
    inputs: list[Any]
    parameters: dict[str, Any]
    future: asyncio.Future = field(repr=False)
    run: Runner = predict
    # A request whose answer must not depend on its neighbours (a seeded sample) runs in a batch of its own.
    alone: bool = False

    @property
    def key(self) -> str:
        if self.alone:
            return uuid.uuid4().hex
        return f"{self.run.__module__}.{self.run.__qualname__}:" + json.dumps(self.parameters, sort_keys=True,
                                                                               default=str)


class MicroBatcher:
    def __init__(self, model_id: str, max_batch: int, max_wait_s: float, batch_size: int):
        self.model_id = model_id
        self.max_batch, self.max_wait_s, self.batch_size = max_batch, max_wait_s, batch_size
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._loaded: LoadedModel | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, loaded: LoadedModel, inputs: list[Any], parameters: dict[str, Any], run: Runner = predict,
                     alone: bool = False) -> list[Any]:
        PREDICT_REQUESTS.labels(loaded.task).inc()
        PREDICT_INPUTS.labels(loaded.task).inc(len(inputs))
        with PREDICT_LATENCY.labels(loaded.task).time():  # answers and errors alike: both kept a client waiting
            if run is predict:
                parameters = await _checked(loaded, inputs, parameters)
            self._loaded = loaded  # the newest load (the cache may have reloaded it)
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._run())
            request = _Request(inputs, parameters, asyncio.get_running_loop().create_future(), run, alone)
            await self._queue.put(request)
            return await request.future

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _collect(self) -> list[_Request]:
        batch = [await self._queue.get()]
        size = len(batch[0].inputs)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch:
            if self._queue.empty():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            batch.append(item)
            size += len(item.inputs)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            groups: dict[str, list[_Request]] = defaultdict(list)
            for request in batch:
                groups[request.key].append(request)
            for requests in groups.values():
                await self._forward(requests)

    async def _forward(self, requests: list[_Request]) -> None:
        inputs = [item for r in requests for item in r.inputs]
        PREDICT_BATCHES.labels(self._loaded.task).inc()
        BATCH_INPUTS.observe(len(inputs))
        try:
            outputs = await run_in_thread(requests[0].run, self._loaded, inputs, requests[0].parameters,
                                              self.batch_size)
        except FieldProblem as problem:
            if len(requests) > 1:  # one request's bad input must not fail its neighbours: run each alone
                for request in requests:
                    await self._forward([request])
                return
            _settle(requests[0], error=problem)
            return
        except Exception as exc:  # e.g. out of memory: every request of the batch gets the error
            for request in requests:
                _settle(request, error=exc)
            return
        start = 0
        for request in requests:
            _settle(request, result=outputs[start:start + len(request.inputs)])
            start += len(request.inputs)


async def _checked(loaded: LoadedModel, inputs: list[Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """A task's checks of a whole request that need the model (text generation: prompts against its
    context), before the request joins a batch: they fail this request alone, and never inside the
    model's lock. In a worker thread, as they tokenize; tasks without such checks skip the hop."""
    task = get_task(loaded.task)
    return await run_in_thread(task.checked_parameters, loaded, inputs, parameters) if task.checks_requests \
        else parameters


def _settle(request: _Request, result: Any = None, error: BaseException | None = None) -> None:
    if request.future.done():  # the client went away
        return
    if error is not None:
        request.future.set_exception(error)
    else:
        request.future.set_result(result)


class Batchers:
    """One batcher per served model id, made on first use, closed when the model is dropped."""

    def __init__(self, max_batch: int, max_wait_s: float, batch_size: int):
        self.max_batch, self.max_wait_s, self.batch_size = max_batch, max_wait_s, batch_size
        self._batchers: dict[str, MicroBatcher] = {}

    def __call__(self, model_id: str) -> MicroBatcher:
        if model_id not in self._batchers:
            self._batchers[model_id] = MicroBatcher(model_id, self.max_batch, self.max_wait_s, self.batch_size)
        return self._batchers[model_id]

    def drop(self, model_id: str) -> None:
        batcher = self._batchers.pop(model_id, None)
        if batcher is not None:
            batcher.close()

    def close(self) -> None:
        for model_id in list(self._batchers):
            self.drop(model_id)
