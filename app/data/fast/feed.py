"""An upload's bytes handed, as they arrive, from the event loop (which writes them to storage) to a
thread that scans them: the scan runs alongside the upload instead of after it, on the other core.

At most ``limit`` bytes wait between the two: when the scan falls behind, the upload waits for it (the
client's sending slows down), so memory stays bounded. When the scan gives up (the file is one for the
exact path), it closes the feed and the upload goes on alone; when the upload fails, it aborts the feed
and the scan stops."""

from __future__ import annotations

import asyncio
import threading
from collections import deque

DEFAULT_LIMIT = 8 << 20


class UploadAborted(Exception):
    """The upload stopped before its end (too large, the client went away, a bad request)."""


class Feed:
    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = DEFAULT_LIMIT):
        self._loop = loop
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._state = "open"  # then "ended" (all bytes given), "aborted" (upload failed), "closed" (scan gave up)
        self._lock = threading.Condition()
        self._room = asyncio.Event()
        self._room.set()

    # The event loop's side --------------------------------------------------------------------------------------

    async def put(self, chunk: bytes) -> None:
        """Hand over the next bytes, once there is room for them (at once, if the scan gave up)."""
        while True:
            with self._lock:
                if self._state != "open" or self._size < self._limit:
                    if self._state == "open" and chunk:
                        self._chunks.append(chunk)
                        self._size += len(chunk)
                        self._lock.notify_all()
                    return
                self._room.clear()
            await self._room.wait()

    def end(self) -> None:
        self._finish("ended")

    def abort(self) -> None:
        self._finish("aborted")

    def _finish(self, state: str) -> None:
        with self._lock:
            if self._state == "open":
                self._state = state
            self._lock.notify_all()

    # The scanning thread's side -------------------------------------------------------------------------------

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes, waiting for them as a file read would; b"" at the end of the upload."""
        with self._lock:
            while self._state == "open" and (size < 0 or self._size < size):
                self._lock.wait()
            if self._state == "aborted":
                raise UploadAborted()
            if self._state == "closed":
                return b""
            taken, got = [], 0
            while self._chunks and (size < 0 or got < size):
                chunk = self._chunks.popleft()
                if size >= 0 and got + len(chunk) > size:
                    self._chunks.appendleft(chunk[size - got:])
                    chunk = chunk[:size - got]
                taken.append(chunk)
                got += len(chunk)
            self._size -= got
        self._make_room()
        return b"".join(taken)

    def close(self) -> None:
        """The scan is done with the feed (finished, or handing the file to the exact path)."""
        with self._lock:
            if self._state == "open":
                self._state = "closed"
            self._chunks.clear()
            self._size = 0
        self._make_room()

    def _make_room(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._room.set)
        except RuntimeError:  # the loop has closed: nobody is waiting
            pass


class Tee:
    """An upload source whose bytes also go to a feed, as storage reads them."""

    def __init__(self, source, feed: Feed):
        self._source, self._feed = source, feed

    async def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        if hasattr(chunk, "__await__"):
            chunk = await chunk
        await self._feed.put(chunk)
        return chunk
