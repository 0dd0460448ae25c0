"""Uploads scanned as they arrive (app/data/fast/feed.py): the scan reads the bytes on a thread of its own
while the API stores them, and gives the stored file's report — or hands the file to the exact path
without holding the upload back, or stops when the upload does."""

from __future__ import annotations

import asyncio
import random

import pytest

from app.data.fast.feed import Feed, UploadAborted
from app.data.scan import scan_arriving, scan_file
from app.data.fast import delimited as fast_delimited
from app.data.fast import jsonl as fast_jsonl
from tests.test_scan_fast_path import MALFORMED, WELL_FORMED, _summary


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few kilobytes: an upload spans many, and arrives in pieces smaller still."""
    monkeypatch.setattr(fast_delimited, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(fast_jsonl, "BLOCK_BYTES", 4096)


def _upload_through_feed(content: bytes, name: str, abort_after: int | None = None) -> tuple[object, int]:
    """Hand ``content`` to a scan on another thread in uneven chunks, as the API does while storing an
    upload, with little room between the two; returns the scan's answer and the bytes handed over."""
    async def run():
        loop = asyncio.get_running_loop()
        feed = Feed(loop, limit=8192)
        scanning = loop.run_in_executor(None, _scan_and_close, feed, name)
        rng, given = random.Random(len(content)), 0
        while given < len(content):
            if abort_after is not None and given >= abort_after:
                feed.abort()
                break
            size = rng.choice([1, 7, 1000, 5000, 20000])
            await asyncio.wait_for(feed.put(content[given:given + size]), timeout=30)
            given += size
        else:
            feed.end()
        return await asyncio.wait_for(scanning, timeout=60), given

    return asyncio.run(run())


def _scan_and_close(feed: Feed, name: str):
    try:
        return scan_arriving(feed, name)
    except UploadAborted:
        return "aborted"
    finally:
        feed.close()


@pytest.mark.parametrize("case", [c for c in WELL_FORMED + MALFORMED if c.id in (
    "quoted-line-breaks", "trailing-empty-lines", "bom-tsv", "example-preference", "whole-floats", "escapes",
    "ragged", "nan-infinity", "empty", "json-array")], ids=lambda c: c.id)
def test_an_upload_scanned_as_it_arrives_gets_the_stored_files_report(tmp_path, case, small_blocks):
    path = tmp_path / case.name
    path.write_bytes(case.content)
    arriving, _ = _upload_through_feed(case.content, case.name)
    stored = scan_file(path, case.name)
    if stored.errors or stored.format is None:
        assert arriving is None  # handed to the exact path, which reads the stored file
    else:
        assert arriving is not None and _summary(arriving) == _summary(stored)


def test_the_upload_goes_on_alone_once_the_scan_hands_over(small_blocks):
    content = b"text,label\na,b,c\n" + b"x,y\n" * 50_000  # ragged on line 2: handed over at once
    arriving, given = _upload_through_feed(content, "ragged.csv")
    assert arriving is None and given >= len(content)


def test_an_aborted_upload_stops_the_scan(small_blocks):
    content = b"text,label\n" + b"x,y\n" * 50_000
    arriving, given = _upload_through_feed(content, "cut.csv", abort_after=60_000)
    assert arriving in (None, "aborted") and given < len(content)
