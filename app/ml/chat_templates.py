"""Chat templates rendered under a time and an output limit, in helper processes that also bound
their memory (``app.ml.chat_template_process`` says why a process, and how it limits itself).

The API (job checks, estimates, every chat request) and the workers (every training row) render
through here, to a small pool of long-lived helpers per OS process (``app.ml.chat_template_pool``).
One round trip renders a batch of conversations, so training pays the IPC once per few rows, not
once per rendering.

``with template_budget(seconds, chars):`` bounds everything rendered inside it (one API request,
say), on top of the per-rendering limits of the settings: an estimate renders hundreds of rows,
and hundreds × the time limit must not be what a request may cost.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from app.config import get_settings
from app.ml import chat_template_pool as pool
from app.ml.chat_template_pool import HelperDied
from app.ml.chat_template_process import MEMORY_HEADROOM_BYTES

# Time a helper is allowed on top of its renderings' limits before it is presumed stuck and killed
# (it normally answers a broken limit itself, well before this).
DEADLINE_MARGIN_S = 2.0
# One request's size: keeps the helper's copy of a batch well inside its memory headroom.
MAX_REQUEST_BYTES = 8 * 2**20
MAX_REQUEST_ITEMS = 64


class TemplateError(Exception):
    """The template failed on a conversation: it raised (``raise_exception``), or is not valid Jinja.
    ``index`` is the conversation's position in the batch rendered; ``line``, where the caller knows
    it, the line of the file the conversation came from."""

    def __init__(self, message: str, index: int = 0):
        super().__init__(message)
        self.message, self.index = message, index
        self.line: int | None = None


class TemplateLimitError(TemplateError):
    """Rendering broke a limit: ``limit`` is ``time``, ``memory``, ``output`` (one rendering),
    ``total_time`` or ``total_output`` (the budget of ``template_budget``), or ``crash``."""

    def __init__(self, message: str, limit: str, index: int = 0):
        super().__init__(message, index)
        self.limit = limit


def _limit_message(kind: str, detail: str) -> str:
    settings = get_settings()
    return {
        "time": f"The chat template took longer than the server's limit of {settings.template_timeout_s:g} s to "
                "render one conversation. A template should only lay messages out: remove loops that do not "
                "walk the messages.",
        "memory": f"The chat template needed more than the server's limit of {MEMORY_HEADROOM_BYTES // 2**20} MiB "
                  "of memory to render one conversation. Remove string repetition or doubling from it.",
        "output": f"The chat template's rendering of one conversation is longer than the server's limit of "
                  f"{settings.template_max_chars} characters. Render only the messages, or shorten them.",
        "total_time": "Rendering with the chat template took longer in all than this request may take. Make the "
                      "template cheaper to render.",
        "total_output": "The chat template's renderings are longer in all than this request may produce. Render "
                        "only the messages, or shorten them.",
        "crash": f"The process rendering the chat template stopped ({detail}), most likely at a memory or time "
                 "limit. Simplify the template.",
    }[kind]


# --- the budget of a request -------------------------------------------------------------------

@dataclass
class _Budget:
    deadline: float
    chars_left: int | None
    outer: _Budget | None = None

    def spend_chars(self, chars: int) -> None:
        for budget in self._chain():  # what an inner budget spends, the outer ones spend too
            if budget.chars_left is not None:
                budget.chars_left -= chars

    def chars(self) -> int | None:
        left = [b.chars_left for b in self._chain() if b.chars_left is not None]
        return max(0, min(left)) if left else None

    def _chain(self):
        budget: _Budget | None = self
        while budget is not None:
            yield budget
            budget = budget.outer


_budget: ContextVar[_Budget | None] = ContextVar("chat_template_budget", default=None)


@contextmanager
def template_budget(seconds: float, chars: int | None = None):
    """Bounds the renderings made inside it, in all: ``seconds`` of rendering time and ``chars`` of
    output. Nested budgets each hold. A rendering that would pass one raises TemplateLimitError with
    limit ``total_time`` or ``total_output``."""
    outer = _budget.get()
    deadline = time.monotonic() + seconds
    budget = _Budget(min(deadline, outer.deadline) if outer else deadline, chars, outer)
    token = _budget.set(budget)
    try:
        yield budget
    finally:
        _budget.reset(token)


# --- rendering -----------------------------------------------------------------------------------

def _renderings(item: dict) -> int:
    """How many times the helper renders for one item: once, or once plus twice per assistant turn."""
    if not item.get("spans"):
        return 1
    return 1 + 2 * sum(1 for m in item["messages"] if isinstance(m, dict) and m.get("role") == "assistant")


def _chunks(encoded: list[bytes]) -> list[tuple[int, int]]:
    """[start, end) ranges of items, each range one request of bounded size."""
    ranges, start, size = [], 0, 0
    for i, data in enumerate(encoded):
        if i > start and (size + len(data) > MAX_REQUEST_BYTES or i - start >= MAX_REQUEST_ITEMS):
            ranges.append((start, i))
            start, size = i, 0
        size += len(data)
    if start < len(encoded):
        ranges.append((start, len(encoded)))
    return ranges


def _request_line(head: dict, encoded_items: list[bytes], limits: dict) -> bytes:
    """One request as a JSON line, spliced from items encoded once (they are also what chunks are
    sized by) rather than encoding the batch again."""
    fields = json.dumps({**head, **limits}).encode("ascii")
    return fields[:-1] + b', "items": [' + b", ".join(encoded_items) + b"]}\n"


def render_batch(template: str, variables: dict[str, Any], items: list[dict]) -> list[dict]:
    """Renders each item ``{"messages", "add_generation_prompt", "spans"}`` and answers ``{"text"}``
    (with ``"spans"``, the character ranges of the assistant turns, when asked). Raises
    TemplateError or TemplateLimitError naming the first item that failed."""
    settings = get_settings()
    head = {"template": template, "variables": variables}
    encoded = [json.dumps(item).encode("ascii") for item in items]
    results: list[dict] = []
    for start, end in _chunks(encoded):
        budget = _budget.get()
        budget_s = budget.deadline - time.monotonic() if budget else None
        if budget_s is not None and budget_s <= 0:
            raise TemplateLimitError(_limit_message("total_time", ""), "total_time", start)
        limits = {"timeout_s": settings.template_timeout_s, "max_chars": settings.template_max_chars,
                  "budget_s": budget_s, "budget_chars": budget.chars() if budget else None}
        allowed = settings.template_timeout_s * sum(_renderings(item) for item in items[start:end])
        if budget_s is not None:
            allowed = min(allowed, budget_s)
        answers = _exchange(_request_line(head, encoded[start:end], limits), allowed + DEADLINE_MARGIN_S, start)
        if budget:
            budget.spend_chars(sum(len(answer["text"]) for answer in answers))
        results.extend(answers)
    return results


def _exchange(request: bytes, allowed_s: float, first_index: int) -> list[dict]:
    """One request to a helper, its answers read until ``done`` or ``allowed_s`` seconds. A helper that
    died before it read the request (killed while idle) is replaced once, transparently; one that dies or
    misses the deadline while rendering is replaced and the item it was on is blamed."""
    for attempt in range(2):
        helper = pool.acquire()
        # The clock starts once a helper is in hand: starting one (a cold interpreter, seconds on a loaded
        # machine) is the service's cost, never charged to the client's template.
        deadline = time.monotonic() + allowed_s
        answers: list[dict] = []
        healthy = False
        try:
            try:
                helper.send(request)
            except HelperDied:
                if attempt == 0:
                    continue
                raise TemplateLimitError(_limit_message("crash", "it could not be reached"), "crash",
                                         first_index) from None
            while True:
                try:
                    line = helper.read_line(deadline)
                except HelperDied as died:
                    raise TemplateLimitError(_limit_message("crash", str(died)), "crash",
                                             first_index + len(answers)) from None
                if line is None:
                    raise TemplateLimitError(_limit_message("time", ""), "time", first_index + len(answers))
                if not line.get("done"):
                    answers.append(line)
                    continue
                error = line.get("error")
                healthy = not line.get("retire")
                if error:
                    index = first_index + error["index"]
                    if error["kind"] == "template":
                        raise TemplateError(error["message"], index)
                    raise TemplateLimitError(_limit_message(error["kind"], error["message"]), error["kind"], index)
                return answers
        finally:
            pool.release(helper, healthy)
    raise AssertionError("unreachable")
