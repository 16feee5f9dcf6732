"""A hub reader's silences: ``HubReader.timed(idle)`` yields ``None`` after each ``idle``
seconds without an event (a web response sends a keepalive for it), never sooner, and a
reader that woke or left keeps no timer behind."""

from __future__ import annotations

import asyncio
import contextlib
import time

from streaming import fanout
from streaming.hub import ReaderHub
from streaming.settings import Settings
from streaming.writer import StreamWriter


def pending_expiries(loop: asyncio.AbstractEventLoop) -> int:
    """The idle timers of hub readers still scheduled (asyncio's own loop keeps them here)."""
    return sum(1 for timer in loop._scheduled  # type: ignore[attr-defined]
               if not timer.cancelled() and timer._callback is fanout._expire)


async def test_silences_are_marked_after_idle_seconds_and_events_restart_the_clock(
        settings: Settings, writer: StreamWriter, run_id: str):
    handle = await writer.aopen(run_id)
    await handle.asend("first")
    await handle.aflush()
    loop = asyncio.get_running_loop()
    async with ReaderHub(settings) as hub:
        events = hub.read(run_id, starting_after=0).timed(0.3)
        first = await anext(events)
        assert first is not None and first.data == "first"
        began = time.monotonic()
        assert await anext(events) is None  # 0.3 s without an event
        assert time.monotonic() - began >= 0.29
        assert pending_expiries(loop) == 0  # the expired timer is spent

        # Events 0.1 s apart, for longer than idle: each one restarts the wait, so no
        # silence is marked in between, and no timer of an earlier wait is left running.
        async def produce() -> None:
            for i in range(8):
                await asyncio.sleep(0.1)
                await handle.asend(f"chunk {i}")
                await handle.aflush()

        producing = asyncio.create_task(produce())
        got = [await anext(events) for _ in range(8)]
        await producing
        assert [event.data for event in got if event is not None] == [
            f"chunk {i}" for i in range(8)]
        assert pending_expiries(loop) == 0

        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.1)
        assert pending_expiries(loop) == 1  # the wait for the next event
        waiting.cancel()  # the client left mid-wait
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await events.aclose()
        assert pending_expiries(loop) == 0
