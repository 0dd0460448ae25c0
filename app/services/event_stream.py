"""Live job events as Server-Sent Events. ``id:`` is the event's sequence number, so a reconnect with
``Last-Event-ID`` replays exactly what was missed.

A stream reads the database to replay what its client missed, then waits to be woken by the process's
event bus (app.services.event_bus), which reads a job's new events once for all its followers: an idle
follower costs no query at all. Reads use short connections of their own, so a client following a job
for hours holds no database connection. Where the bus is not running (an app without its lifespan) the
stream polls every ``poll_s``, as it always did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from app.jobs.states import TERMINAL
from app.services.event_bus import PAGE, EventBus
from app.services.quotas import StreamSlot


async def follow(job_id: str, after_seq: int, bus: EventBus, slot: StreamSlot | None = None,
                 poll_s: float = 0.5) -> AsyncIterator[dict]:
    """The job's events after ``after_seq``, then new ones as they come, each once and in order; the
    stream ends after the job's last event. ``slot`` (the project's open-stream quota) is given back when
    the stream ends, however it ends."""
    last = after_seq
    subscription = bus.subscribe(job_id)
    try:
        from_database = True
        while True:
            if subscription is not None:
                subscription.arm()  # before reading: a wake-up during the read is kept
            # From the feed's memory after a wake-up, unless it does not reach back this far.
            events = None if from_database else subscription.feed.events_after(last)
            caught_up = over = True
            if events is None:
                events, status, newest = await run_in_threadpool(bus.read, job_id, last)
                # More may have committed between the two reads of bus.read: read again before waiting.
                caught_up = len(events) < PAGE and (events[-1].seq if events else last) >= newest
                over = status is None or (not events and caught_up and status in TERMINAL)
                if subscription is not None and subscription.feed.start(newest):
                    bus.read_soon(subscription.feed)  # the job moved while this stream read
            else:
                over = False
            for event in events:
                last = event.seq
                yield {"id": str(event.seq), "data": event.data}
                if event.final:
                    return  # the terminal event is the last one a job writes
            if over:
                return  # joined after the end and everything was replayed (or the job is gone)
            if not caught_up:
                from_database = True
            elif subscription is None or not bus.listening:
                await asyncio.sleep(poll_s)
                from_database = True
            else:
                await subscription.wait()
                from_database = False
    finally:
        if subscription is not None:
            subscription.close()
        if slot is not None:
            slot.release()
