"""Time to a stored ending: a producer killed with SIGKILL, and a queued run no worker takes.

A dead producer: a ``StreamWriter`` in a child process stores a few chunks of a run and keeps
its lease alive; three readers follow the run: a hub reader that holds its connection, a hub
reader that drops and resumes from its cursor every 2 s (0.4 s in quick mode: an API
gateway's cap, shortened), and a blocking reader (``read_events``). Then the child is killed
with SIGKILL.
Figures: the time from the kill to each reader's ending (the stored ``lost``, with its id),
the worst over the samples, against the documented bound ``lease_ttl + producer_timeout`` plus
one second.

A queued run: ``mark_pending`` and a holding hub reader; the time from the mark to the reader's
stored ``timeout``, against ``queue_timeout`` plus one second (the full run shortens
``queue_timeout`` to 30 s: 15 minutes per sample is too long for a benchmark).

No worker runs its sweep here: the readers store the endings themselves (the last resort), so
these are the bounds when no worker is alive. Quick mode uses short settings; the full run
uses the defaults (``lease_ttl`` 10 s, ``producer_timeout`` 30 s, ``liveness_interval`` 25 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

from streaming import ReaderHub, Settings, Terminal, mark_pending, read_events
from streaming.client import sync_client

from ..core import Context, Figure, Result, Target, scenario
from .common import cleanup, run_ids

NAME = "ending-bound"
#: The seed column: its readers wait forever for a producer that died (its NOTES.md).
NO_ENDING = "n/a (the seed has no endings of its own: its readers wait forever)"
PRODUCER = textwrap.dedent("""
    import sys
    from streaming import Settings, StreamWriter
    settings = Settings(redis_url=sys.argv[1], lease_ttl=float(sys.argv[3]))
    writer = StreamWriter(settings).start()
    run = writer.open(sys.argv[2])
    for i in range(3):
        run.send(f"chunk {i}")
    run.flush()
    print("ready", flush=True)
    sys.stdin.readline()
""")


@scenario(NAME, "Time to a stored ending: producer killed, queued run never taken")
def run(ctx: Context) -> Result:
    samples = ctx.size(1, 2)
    overrides = ctx.size({"lease_ttl": 0.6, "producer_timeout": 1.0, "liveness_interval": 5.0,
                          "block_timeout": 5.0, "queue_timeout": 1.0},
                         {"queue_timeout": 30.0})
    settings = ctx.settings(**overrides)
    every = ctx.size(0.4, 2.0)
    result = Result(NAME, params={"samples": samples, "settings": overrides or "defaults",
                                  "reconnect_every_s": every})
    lost_bound = settings.lease_ttl + settings.producer_timeout + 1
    worst: dict[str, float] = {}
    for run_id in run_ids(NAME, samples, "p"):
        for reader, seconds in _killed_producer(settings, run_id, every).items():
            worst[reader] = max(worst.get(reader, 0.0), seconds)
    for reader, seconds in worst.items():
        result.add(Figure(f"producer SIGKILL to stored lost, {reader}", "s", "lower", seconds,
                          NO_ENDING, target=Target(limit=lost_bound)))
    queued = max(_queued_run(settings, run_id) for run_id in run_ids(NAME, samples, "q"))
    result.add(Figure("queued to stored timeout, holding hub reader", "s", "lower", queued,
                      NO_ENDING, target=Target(limit=settings.queue_timeout + 1)))
    cleanup(ctx.redis_url, NAME)
    return result


def _killed_producer(settings: Settings, run_id: str, every: float) -> dict[str, float]:
    child = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(settings.redis_url), run_id, str(settings.lease_ttl)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        return asyncio.run(_race(settings, run_id, child, every))
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait(10)


async def _race(settings: Settings, run_id: str, child: subprocess.Popen[str],
                every: float) -> dict[str, float]:
    ended: dict[str, float] = {}
    bound = settings.lease_ttl + settings.producer_timeout + settings.liveness_interval + 30
    blocking = threading.Thread(target=_blocking_reader, args=(settings, run_id, ended),
                                daemon=True)
    async with ReaderHub(settings) as hub:
        tasks = [asyncio.create_task(_holding(hub, run_id, ended)),
                 asyncio.create_task(_reconnecting(hub, run_id, ended, every))]
        blocking.start()
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*tasks), bound)
        await asyncio.to_thread(blocking.join, bound)
    return {reader: at - killed for reader, at in ended.items()}


async def _holding(hub: ReaderHub, run_id: str, ended: dict[str, float]) -> None:
    async for event in hub.read(run_id):
        if event.terminal is not None:
            _check(event.terminal, event.seq)
            ended["holding hub reader"] = time.monotonic()


async def _reconnecting(hub: ReaderHub, run_id: str, ended: dict[str, float],
                        every: float) -> None:
    cursor: int | None = None
    while True:
        try:
            async with asyncio.timeout(every):
                async for event in hub.read(run_id, starting_after=cursor):
                    cursor = event.seq if event.seq is not None else cursor
                    if event.terminal is not None:
                        _check(event.terminal, event.seq)
                        ended[f"hub reader reconnecting every {every:g} s"] = time.monotonic()
                        return
        except TimeoutError:
            continue


def _blocking_reader(settings: Settings, run_id: str, ended: dict[str, float]) -> None:
    client = sync_client(settings, reader=True)
    try:
        for event in read_events(client, run_id, settings):
            if event.terminal is not None:
                _check(event.terminal, event.seq)
                ended["blocking reader"] = time.monotonic()
    finally:
        client.close()


def _check(kind: Terminal, seq: int | None) -> None:
    if seq is None or kind not in (Terminal.LOST, Terminal.TIMEOUT):
        raise AssertionError(f"expected a stored lost or timeout ending, got {kind} ({seq})")


def _queued_run(settings: Settings, run_id: str) -> float:
    async def follow() -> float:
        async with ReaderHub(settings) as hub:
            await asyncio.to_thread(_mark, settings, run_id)
            marked = time.monotonic()
            ended: dict[str, Any] = {}
            await asyncio.wait_for(_holding(hub, run_id, ended),
                                   settings.queue_timeout + settings.liveness_interval + 30)
            return float(ended["holding hub reader"]) - marked
    return asyncio.run(follow())


def _mark(settings: Settings, run_id: str) -> None:
    client = sync_client(settings)
    try:
        mark_pending(client, run_id, settings)
    finally:
        client.close()
