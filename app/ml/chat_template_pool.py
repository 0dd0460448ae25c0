"""The helper processes that render chat templates (``app.ml.chat_template_process``), kept in a
small pool per OS process: started on first use from a fresh interpreter (never a fork of a threaded
process), reused while they behave, killed and replaced in the background when they do not, stopped
when this process exits. ``app.ml.chat_templates`` is the only user."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from app.ml.chat_template_process import PARENT_PID_ENV

POOL_SIZE = 2  # helpers per OS process: renderings are short; more would only hold memory
START_TIMEOUT_S = 60.0  # a fresh interpreter importing transformers, on a busy machine


class HelperDied(Exception):
    """The helper ended (its exit status is the message), or never said it was ready."""


class Helper:
    """One helper process: JSON lines to its stdin, answers read from its stdout with a deadline."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.buffer = bytearray()
        try:
            self.ready = self.read_line(time.monotonic() + START_TIMEOUT_S)
        except HelperDied as died:
            raise HelperDied(f"the chat template helper did not start ({died})") from None
        if not self.ready or not self.ready.get("ready"):
            raise HelperDied(f"the chat template helper did not start within {START_TIMEOUT_S:g} s")

    @property
    def pid(self) -> int:
        return self.process.pid

    def read_line(self, deadline: float) -> dict | None:
        """The next answer line, or None when the deadline passes first. HelperDied on end of output."""
        fd = self.process.stdout.fileno()
        while (end := self.buffer.find(b"\n")) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise HelperDied(self._exit_status())
            self.buffer += chunk
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return json.loads(line)

    def send(self, payload: bytes) -> None:
        try:
            self.process.stdin.write(payload)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise HelperDied(self._exit_status()) from None

    def _exit_status(self) -> str:
        try:
            code = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "it closed its output"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def stop(self) -> None:
        """Kill now: a helper is stopped only when it misbehaved or the process is ending."""
        if self.process.poll() is None:
            self.process.kill()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _helper_command() -> list[str]:
    return [sys.executable, "-m", "app.ml.chat_template_process"]


def _helper_environment() -> dict[str, str]:
    # One thread in the helper: numerical libraries imported with transformers would otherwise start
    # thread pools whose stacks count against its memory limit.
    return {**os.environ, PARENT_PID_ENV: str(os.getpid()), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def _ready_helper(process: subprocess.Popen) -> Helper:
    try:
        return Helper(process)
    except BaseException:
        process.kill()
        process.wait()
        raise


class _Spawner:
    """Starts helper processes from one thread that lives as long as this process. PR_SET_PDEATHSIG
    fires when the *thread* that started a child ends, and request threads come and go (thread pools
    shrink), so a helper started from one of them would be killed under a later request. Only the
    Popen happens here; waiting for the helper to be ready happens in the thread that needs it."""

    def __init__(self):
        self._queue: list[Future] = []
        self._wake = threading.Condition()
        threading.Thread(target=self._run, name="chat-template-spawner", daemon=True).start()

    def popen(self) -> subprocess.Popen:
        future: Future = Future()
        with self._wake:
            self._queue.append(future)
            self._wake.notify()
        return future.result()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                future = self._queue.pop(0)
            try:
                future.set_result(subprocess.Popen(_helper_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                   env=_helper_environment(), close_fds=True))
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that asked
                future.set_exception(exc)


@dataclass
class _Pool:
    size: int = POOL_SIZE
    idle: list[Helper] = field(default_factory=list)
    started: int = 0  # helpers alive or being started; never more than size
    replacing: int = 0  # of those, replacements being started in the background
    lock: threading.Condition = field(default_factory=threading.Condition)
    spawner: _Spawner | None = None

    def _popen(self) -> subprocess.Popen:
        with self.lock:
            if self.spawner is None:
                self.spawner = _Spawner()
            spawner = self.spawner
        return spawner.popen()

    def acquire(self) -> Helper:
        with self.lock:
            # A replacement already starting is ready sooner than a helper started now.
            while not self.idle and (self.started >= self.size or self.replacing):
                self.lock.wait()
            if self.idle:
                return self.idle.pop()
            self.started += 1
        try:
            return _ready_helper(self._popen())
        except BaseException:
            self._forget()
            raise

    def release(self, helper: Helper, healthy: bool) -> None:
        """Back to the pool; or, for a helper that misbehaved, killed and replaced in the background, so
        that the next rendering does not wait for a whole interpreter start."""
        if not healthy:
            helper.stop()
            with self.lock:
                self.replacing += 1
            threading.Thread(target=self._replace, name="chat-template-replace", daemon=True).start()
            return
        with self.lock:
            self.idle.append(helper)
            self.lock.notify()

    def _replace(self) -> None:
        try:
            helper = _ready_helper(self._popen())
        except BaseException:  # noqa: BLE001 - the next acquire starts one itself
            with self.lock:
                self.replacing -= 1
                self.started -= 1
                self.lock.notify_all()
            return
        with self.lock:
            self.replacing -= 1
            self.idle.append(helper)
            self.lock.notify_all()

    def _forget(self) -> None:
        with self.lock:
            self.started -= 1
            self.lock.notify()

    def close(self) -> None:
        with self.lock:
            helpers, self.idle = self.idle, []
        for helper in helpers:
            helper.stop()


_pool = _Pool()


def acquire() -> Helper:
    """A helper for this thread alone, until release(); waits while all POOL_SIZE are busy."""
    return _pool.acquire()


def release(helper: Helper, healthy: bool) -> None:
    _pool.release(helper, healthy)


def helper_pids() -> list[int]:
    """The idle helpers' process ids, the one acquire() takes next last (for tests and measurements)."""
    with _pool.lock:
        return [helper.pid for helper in _pool.idle]


def _close_pool() -> None:
    _pool.close()


def _forget_pool_after_fork() -> None:
    """A forked child (a Celery pool process) has none of the parent's threads and must not talk to its
    helpers: it closes its copies of their pipes and starts its own pool when it first renders."""
    global _pool
    for helper in _pool.idle:
        for stream in (helper.process.stdin, helper.process.stdout):
            try:
                os.close(stream.fileno())
            except (OSError, ValueError):
                pass
    _pool = _Pool()


atexit.register(_close_pool)
os.register_at_fork(after_in_child=_forget_pool_after_fork)
