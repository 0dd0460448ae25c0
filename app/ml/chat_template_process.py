"""The helper process that renders chat templates, run as ``python -m app.ml.chat_template_process``
by ``app.ml.chat_templates`` (never imported by the API or the worker).

A chat template is a client's program. Jinja's immutable sandbox stops it from reaching Python
internals, but not from looping for hours or building a string of gigabytes: one C-level operation
(``"x" * 10**9``) allocates before any Python-level check could run. So templates render here, in a
fresh interpreter that bounds itself before it reads a request:

- memory: RLIMIT_DATA a fixed headroom above what the interpreter needs at rest, so a memory bomb is a
  ``MemoryError`` in this process, never the kernel's OOM killer choosing the API or a worker;
- time: SIGALRM after the time limit of each rendering interrupts the template between bytecodes,
  and RLIMIT_CPU per request is the backstop should a single C-level operation outlast it (the
  parent also kills a helper that misses its deadline);
- output: a rendering longer than the limit is refused here, before it is sent;
- life: PR_SET_PDEATHSIG, and end of stdin, stop the helper with its parent.

Protocol, one JSON object per line. The helper first writes ``{"ready": true, "pid", "rss_kb"}``. A
request is ``{"template", "variables", "items": [{"messages", "add_generation_prompt", "spans"}],
"timeout_s", "max_chars", "budget_s", "budget_chars"}``; the answer is one line per item,
``{"text"}`` (plus ``"spans"`` when asked), in order, up to the first item that fails, then
``{"done": true, "error": null or {"index", "kind", "message"}, "retire"}`` where ``kind`` is ``template`` (it
raised), ``time``, ``memory``, ``output`` (a limit of one rendering), ``total_time`` or
``total_output`` (the request's budget). After a request that used much memory (a ``memory`` error
included) the helper returns it to the system; in the rare case it cannot, its ``done`` line says
``"retire": true`` and the parent replaces it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

# Memory a template may use beyond the interpreter's own: room for the largest legitimate rendering
# (a few MB of text, copied a few times while rendering and encoding), far below what hurts a machine.
MEMORY_HEADROOM_BYTES = 256 * 2**20
# RLIMIT_CPU slack on top of a request's time: it only fires when SIGALRM could not interrupt.
CPU_BACKSTOP_SLACK_S = 2
PARENT_PID_ENV = "FT_TEMPLATE_PARENT_PID"
# After a request that rendered this much, freed memory is handed back to the system; a helper still
# this far above its baseline afterwards asks to be replaced.
LARGE_OUTPUT_CHARS = 1_000_000
RETIRE_ABOVE_BASELINE_KB = 64 * 1024
# Compiled templates kept (transformers caches up to 128; a 50,000-character template compiles to
# about a MB of code, which would otherwise eat into the headroom of a helper serving many models).
KEEP_COMPILED_TEMPLATES = 16


class RenderTimeout(BaseException):
    """Raised by SIGALRM inside a rendering. A BaseException, so no ``except Exception`` on the way
    (Jinja's attribute lookups have some) can swallow it."""


class RequestFailed(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def _on_alarm(signum, frame):
    raise RenderTimeout()


def _die_with_parent() -> None:
    """SIGKILL when the thread that started us ends (the parent keeps one thread alive for that);
    exits now if the parent is already gone (it may have died before the prctl)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):
        sys.exit(0)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _limit_memory(baseline_kb: int) -> None:
    """RLIMIT_DATA counts the heap and private anonymous mappings (Linux ≥ 4.7), which is where every
    Python object lives, but not the shared libraries already mapped: so the bound is a headroom
    above this moment's data size, unlike RLIMIT_AS which would also count reserved address space."""
    limit = baseline_kb * 1024 + MEMORY_HEADROOM_BYTES
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _arm_cpu_backstop(seconds: float) -> None:
    """RLIMIT_CPU counts the process's whole life, so each request moves the soft limit to what it
    has used plus this request's allowance (the hard limit stays unlimited so it can move again)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + seconds) + CPU_BACKSTOP_SLACK_S
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


class Renderer:
    """One request's renderings, each under the per-rendering limits, all under the request's budget."""

    def __init__(self, request: dict):
        self.template = request["template"]
        self.variables = request.get("variables") or {}
        self.timeout_s = float(request["timeout_s"])
        self.max_chars = int(request["max_chars"])
        budget_s = request.get("budget_s")
        self.deadline = time.monotonic() + float(budget_s) if budget_s is not None else None
        self.chars_left = request.get("budget_chars")

    def render(self, messages: list, add_generation_prompt: bool) -> str:
        """What ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=…)``
        returns: the same normalisation (keys whose value is None dropped) and the same renderer, with
        the tokenizer's special tokens as template variables."""
        from transformers.utils.chat_template_utils import _normalize_chat_messages, render_jinja_template

        seconds, kind = self.timeout_s, "time"
        if self.deadline is not None and self.deadline - time.monotonic() < seconds:
            seconds, kind = self.deadline - time.monotonic(), "total_time"
            if seconds <= 0:
                raise RequestFailed("total_time", "budget spent")
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                rendered, _ = render_jinja_template(conversations=[_normalize_chat_messages(messages)],
                                                    chat_template=self.template,
                                                    add_generation_prompt=add_generation_prompt, **self.variables)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except RenderTimeout:
            raise RequestFailed(kind, f"rendering ran past {seconds:.3g} s") from None
        text = rendered[0]
        if len(text) > self.max_chars:
            raise RequestFailed("output", f"rendering produced {len(text)} characters")
        return text

    def item(self, item: dict) -> dict:
        messages, with_spans = item["messages"], bool(item.get("spans"))
        full = self.render(messages, bool(item.get("add_generation_prompt")) and not with_spans)
        answer: dict = {"text": full}
        if with_spans:
            # Each assistant turn is what rendering it adds after the generation prompt; a template whose
            # renderings are not prefixes of one another gives none (text_generation.assistant_spans).
            spans = []
            for i, message in enumerate(messages):
                if not isinstance(message, dict) or message.get("role") != "assistant":
                    continue
                prefix = self.render(messages[:i], True)
                upto = self.render(messages[: i + 1], False)
                if upto.startswith(prefix) and full.startswith(upto):
                    spans.append([len(prefix), len(upto)])
            answer["spans"] = spans
        if self.chars_left is not None:
            self.chars_left -= len(full)
            if self.chars_left < 0:
                raise RequestFailed("total_output", "the request's renderings passed its character budget")
        return answer


def _write(out, payload: dict) -> None:
    # ensure_ascii: lone surrogates in a client's text survive the round trip instead of failing to encode.
    out.write(json.dumps(payload).encode("ascii") + b"\n")
    out.flush()


def _release_memory() -> None:
    """Gives a large rendering's freed memory back to the system: glibc keeps freed heap for reuse, and
    a helper that once held a few hundred MB would otherwise go on holding them."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _answer(request: dict, out) -> tuple[dict | None, int]:
    """Renders a request's items, writing one line per item until one fails. (the failure, the
    characters rendered)."""
    renderer = Renderer(request)
    items = request["items"]
    allowance = renderer.timeout_s * sum(1 + 2 * len(item["messages"]) for item in items)
    if renderer.deadline is not None:
        allowance = min(allowance, renderer.deadline - time.monotonic())
    _arm_cpu_backstop(allowance + 1)
    rendered = 0
    for index, item in enumerate(items):
        try:
            answer = renderer.item(item)
            rendered += len(answer["text"])
            _write(out, answer)
        except RequestFailed as failure:
            return {"index": index, "kind": failure.kind, "message": failure.message}, rendered
        except MemoryError:  # rendering, or the answer's JSON: the limit either way
            return {"index": index, "kind": "memory", "message": "out of memory"}, rendered
        except Exception as exc:  # the template raised: raise_exception(), a syntax error, a bad filter…
            return {"index": index, "kind": "template", "message": str(exc)[:2000]}, rendered
    return None, rendered


def serve(line: bytes, out, baseline_kb: int) -> None:
    """One request line, answered by its item lines and a last ``{"done": true, "error", "retire"}``.
    After a request that used much memory, the memory goes back to the system first; should it not
    (fragmentation), ``retire`` asks the parent to replace this helper."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    if _compile_jinja_template.cache_info().currsize > KEEP_COMPILED_TEMPLATES:
        _compile_jinja_template.cache_clear()
    try:
        error, rendered = _answer(json.loads(line), out)
    except MemoryError:  # the request itself did not fit
        error, rendered = {"index": 0, "kind": "memory", "message": "request too large"}, 0
    retire = False
    if (error and error["kind"] == "memory") or rendered > LARGE_OUTPUT_CHARS:
        _release_memory()
        retire = _status_kb("VmData") > baseline_kb + RETIRE_ABOVE_BASELINE_KB
    _write(out, {"done": True, "error": error, "retire": retire})


def main() -> None:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # anything else printed (a library's notice) must not corrupt the answers
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which then ends us
    signal.signal(signal.SIGALRM, _on_alarm)
    # Imported (and a template compiled) before the memory limit is measured, so the headroom is all
    # the template's.
    from transformers.utils.chat_template_utils import render_jinja_template

    render_jinja_template(conversations=[[{"role": "user", "content": "warm-up"}]], chat_template="{{ messages }}")
    baseline_kb = _status_kb("VmData")
    _limit_memory(baseline_kb)
    _write(out, {"ready": True, "pid": os.getpid(), "rss_kb": _status_kb("VmRSS")})
    for line in sys.stdin.buffer:  # ends when the parent closes our stdin, or dies
        serve(line, out, baseline_kb)


if __name__ == "__main__":
    main()
