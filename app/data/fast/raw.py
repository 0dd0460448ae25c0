"""The bytes of a text upload as Arrow reads them, looked at on the way: the facts about a whole file
the fast path needs and Arrow does not tell (its physical lines, a NUL byte, a carriage return that is
not part of a line break, a double quote anywhere) cost a memchr or a count per chunk, not a pass of
their own. Empty lines at the very end are left out: the exact reader skips them, Arrow would make
rows of them. The source is anything with a blocking ``read(n)``: a file, or an upload still arriving
(feed.py), so a file is read once whichever it is."""

from __future__ import annotations

import io
import threading

# A run of line breaks at the end of what has been read is held back until more comes (it is dropped
# if nothing does); past this many bytes it is not worth holding, and the rows will tell.
_MAX_HELD = 64 * 1024


class RawText(io.RawIOBase):
    def __init__(self, source, head: bytes = b""):
        super().__init__()
        self._source = source
        self._head = head  # bytes already read from the source (to find the header), read again first
        self._ready = b""
        self._held = b""
        self._ended = False
        self.newlines = 0
        self.has_nul = False
        self.lone_cr = False  # a "\r" not followed by "\n": a line break to Arrow, not to the exact reader
        self.quote_seen = False
        self.last_byte = b""
        self._carriage_returns = 0
        self._crlf = 0
        self._reading = threading.Lock()  # Arrow reads on a thread of its own: one read at a time, whatever

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes, fewer only at the end: Arrow takes a short read for a short block, and a record
        may straddle two blocks, not three."""
        with self._reading:
            return self._read(size)

    def _read(self, size: int) -> bytes:
        if size is None or size < 0:
            size = 1 << 62
        parts, got = [], 0
        while got < size:
            if not self._ready:
                self._fill(size - got)
                if not self._ready:
                    break
            part, self._ready = self._ready[:size - got], self._ready[size - got:]
            parts.append(part)
            got += len(part)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        if out:
            self._look(out)
        return out

    def _fill(self, size: int) -> None:
        while not self._ready and not self._ended:
            chunk, self._head = (self._head, b"") if self._head else (self._source.read(size), b"")
            if not chunk:
                self._ended = True
                self._ready, self._held = self._held[:2 if self._held.startswith(b"\r\n") else 1], b""
                return
            data = self._held + chunk if self._held else chunk
            cut = len(data) - _trailing_breaks(data)
            if len(data) - cut > _MAX_HELD:
                cut = len(data)
            self._ready, self._held = data[:cut], data[cut:]

    def _look(self, chunk: bytes) -> None:
        self.newlines += chunk.count(b"\n")
        self.has_nul = self.has_nul or b"\x00" in chunk
        self.quote_seen = self.quote_seen or b'"' in chunk
        if self.last_byte == b"\r" and chunk[:1] == b"\n":
            self._crlf += 1
        if b"\r" in chunk:
            self._carriage_returns += chunk.count(b"\r")
            self._crlf += chunk.count(b"\r\n")
        self.lone_cr = self._carriage_returns > self._crlf + (chunk[-1:] == b"\r")
        self.last_byte = chunk[-1:]

    def physical_lines(self) -> int:
        """Lines as the exact reader counts them: one per "\\n", and a last one without it."""
        self.lone_cr = self._carriage_returns > self._crlf  # a file ending in "\r"
        return self.newlines + (1 if self.last_byte not in (b"", b"\n") else 0)


def _trailing_breaks(data: bytes) -> int:
    """Bytes of the run of "\\n" and "\\r\\n" that ends ``data``."""
    end = len(data)
    while end and data[end - 1] == 0x0A:
        end -= 1
        if end and data[end - 1] == 0x0D:
            end -= 1
        if len(data) - end > _MAX_HELD:
            break
    return len(data) - end


def read_up_to(source, size: int) -> bytes:
    """``size`` bytes from the source, fewer only at its end (a stream may hand out less per read)."""
    parts, got = [], 0
    while got < size:
        part = source.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)
