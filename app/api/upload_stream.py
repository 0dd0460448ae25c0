"""An upload's multipart/form-data body, parsed as it arrives: its text fields, and its one file, whose
bytes are read straight from the network by storage (hashed and written in the same pass). Nothing is
spooled to a temporary file first, so a 400 MB upload crosses the disk once, not three times.

The rules are those of ``request.form(max_files=1, max_fields=8)``, which this replaces for uploads:
text fields of at most MAX_FIELD_BYTES, at most MAX_FIELDS of them, one file part. Problems answer
400 naming the field; the body size itself is bounded by the gate (app/api/gate.py)."""

from __future__ import annotations

from collections import deque

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.errors import ApiError

FILE_FIELD = "file"
MAX_FIELDS = 8
MAX_FIELD_BYTES = 1024 * 1024


def _bad_body(message: str, param: str | None = FILE_FIELD, code: str | None = "invalid_multipart") -> ApiError:
    return ApiError(400, message, param=param, code=code)


class UploadStream:
    """Call ``open`` (reads up to the file's first byte), then ``read`` the file to its end, then
    ``finish`` (reads the rest: fields after the file). ``fields`` holds the text fields seen so far."""

    def __init__(self, request: Request):
        self._request = request
        self._chunks = request.stream()
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._data: deque[bytes] = deque()  # the file's bytes parsed but not yet read
        self._part: dict = {}
        self._header_name = self._header_value = b""
        self._files = 0
        self._in_file = self._file_done = self._body_done = False

    async def open(self) -> None:
        content_type, params = parse_options_header(self._request.headers.get("content-type", ""))
        if content_type != b"multipart/form-data" or not params.get(b"boundary"):
            raise _bad_body(f"Send the dataset as the multipart field '{FILE_FIELD}' (multipart/form-data).",
                            code="missing_file")
        self._parser = MultipartParser(params[b"boundary"], {
            "on_part_begin": self._part_begins, "on_part_data": self._part_data, "on_part_end": self._part_ends,
            "on_header_field": self._header_field, "on_header_value": self._header_value_part,
            "on_header_end": self._header_ends, "on_headers_finished": self._headers_finished})
        while not self._in_file and not self._file_done:
            if not await self._feed():
                break
        if self.filename is None:
            raise _bad_body(f"Send the dataset as the multipart field '{FILE_FIELD}'.", code="missing_file")

    async def read(self, size: int = -1) -> bytes:
        """The file's next bytes (however many have arrived: ``size`` is a hint); b"" at its end."""
        while not self._data and not self._file_done:
            if not await self._feed():
                raise _bad_body("The upload ended before its file did.")
        return self._data.popleft() if self._data else b""

    async def finish(self) -> dict[str, str]:
        """Read what follows the file; returns every text field."""
        while await self._feed():
            pass
        return self.fields

    async def discard(self) -> None:
        """Read the rest of the body without keeping it, so that the client, still sending, gets the
        answer rather than a reset connection (the gate bounds how much that can be)."""
        try:
            async for _ in self._chunks:
                if self._body_done:
                    break
        except Exception:  # a client that went away: nothing to answer anyway
            pass

    async def _feed(self) -> bool:
        """Parse the next chunk of the body; False at its end."""
        if self._body_done:
            return False
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            chunk = b""
        if not chunk:
            self._body_done = True
            try:
                self._parser.finalize()
            except FormParserError:
                raise _bad_body("The multipart body is cut short or malformed.") from None
            return False
        try:
            self._parser.write(chunk)
        except FormParserError:
            raise _bad_body("The multipart body is malformed.") from None
        return True

    # python-multipart's callbacks ------------------------------------------------------------------------------

    def _part_begins(self) -> None:
        self._part = {"disposition": b"", "data": bytearray(), "file": False}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        if len(self._header_name) > MAX_FIELD_BYTES:
            raise _bad_body("A part's header is too long.")

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > MAX_FIELD_BYTES:
            raise _bad_body("A part's header is too long.")

    def _header_ends(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._part["disposition"] = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._part["disposition"])
        if b"name" not in options:
            raise _bad_body('Each multipart part needs a Content-Disposition "name".')
        name = options[b"name"].decode("utf-8", "replace")
        self._part["name"] = name
        if b"filename" in options:
            self._files += 1
            if name != FILE_FIELD:
                raise _bad_body(f"'{name[:60]}' must be a text field; send the dataset as the field "
                                f"'{FILE_FIELD}'.", param=name[:60] if name == "purpose" else FILE_FIELD,
                                code="missing_file" if name != "purpose" else None)
            if self._files > 1:
                raise _bad_body("Send one file per upload.")
            self.filename = options[b"filename"].decode("utf-8", "replace")
            self._part["file"] = self._in_file = True
        elif len(self.fields) >= MAX_FIELDS:
            raise _bad_body(f"Too many fields; at most {MAX_FIELDS}.", param=None)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part.get("file"):
            self._data.append(data[start:end])
            return
        self._part["data"] += data[start:end]
        if len(self._part["data"]) > MAX_FIELD_BYTES:
            raise _bad_body(f"A field is larger than {MAX_FIELD_BYTES} bytes.", param=self._part.get("name"))

    def _part_ends(self) -> None:
        if self._part.get("file"):
            self._in_file, self._file_done = False, True
        else:
            self.fields[self._part["name"]] = self._part["data"].decode("utf-8", "replace")
