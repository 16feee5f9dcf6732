"""The two sides of a streaming measurement, each run in a child process, for both designs.

Producers write paced chunks (each carrying its send time) and time every write call; readers
follow runs and record, for every chunk, receipt time minus send time. Protocol with the
harness: the child sends ``ready``; a producer then waits for ``go``, writes, and sends
``result``; a reader reads until ``stop`` (with the chunk counts to expect), waits at most a
grace period for the last chunks, and sends ``result``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from streaming.hub import ReaderHub
from streaming.settings import Settings
from streaming.writer import StreamWriter

from ..procs import Channel, Child, answer_async
from ..stats import percentile
from .common import chunk_data, load_seed, open_runs, sent_at, sse_frame

__all__ = [
    "HUB_CLIENT_NOTE",
    "delay_ms",
    "hub_readers",
    "project_producer",
    "received_percent",
    "run_pair",
    "seed_producer",
    "seed_readers",
]

#: Shown with the scenarios that start many readers at once.
HUB_CLIENT_NOTE = ("the hub is given a client on a blocking pool of 50 connections: with its "
                   "default client (redis-py 8: 100 connections, then MaxConnectionsError) "
                   "readers past the 100th joining at once fail")
GO_TIMEOUT = 300.0
HUB_POOL = 50
STOP_TIMEOUT = 600.0


def paced(runs: int, rate: float, seconds: float, send: Callable[[int, str], Any],
          tick: float = 0.0) -> list[int]:
    """Call ``send(run index, chunk_data())`` ``rate`` times a second per run, round robin, for
    ``seconds``; returns the duration of each call (ns), the making of the chunk excluded.
    Late calls catch up without sleeping; ``tick`` is the shortest sleep (a coarser tick
    sends the chunks that fell due during it back to back, which costs the producer less)."""
    interval = 1.0 / (rate * runs)
    costs = []
    start = time.perf_counter()
    for k in range(int(seconds * rate * runs)):
        delay = start + k * interval - time.perf_counter()
        if delay > 0:
            time.sleep(max(delay, tick))
        data = chunk_data()
        began = time.perf_counter_ns()
        send(k % runs, data)
        costs.append(time.perf_counter_ns() - began)
    return costs


async def apaced(runs: int, rate: float, seconds: float,
                 send: Callable[[int, str], Awaitable[Any]], tick: float = 0.0) -> list[int]:
    """``paced()`` for a coroutine ``send`` on an event loop."""
    interval = 1.0 / (rate * runs)
    costs = []
    start = time.perf_counter()
    for k in range(int(seconds * rate * runs)):
        delay = start + k * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(max(delay, tick))
        frame = sse_frame(chunk_data())
        began = time.perf_counter_ns()
        await send(k % runs, frame)
        costs.append(time.perf_counter_ns() - began)
    return costs


def project_producer(channel: Channel, url: str, ids: list[str], rate: float, seconds: float,
                     overrides: dict[str, Any], tick: float = 0.0) -> None:
    """This project's writer: ``rate`` chunks/s on each run for ``seconds`` (see ``paced``)."""
    writer = StreamWriter(Settings(redis_url=url, **overrides)).start()
    handles = open_runs(writer, ids)
    channel.send("ready")
    channel.expect("go", GO_TIMEOUT)
    costs = paced(len(handles), rate, seconds, lambda i, data: handles[i].send(data), tick)
    sent = [handle.sent for handle in handles]
    writer.flush(60)
    writer.stop()
    channel.send("result", {"costs_ns": costs, "sent": sent})


def seed_producer(channel: Channel, url: str, seed_path: str, ids: list[str], rate: float,
                  seconds: float, tick: float = 0.0) -> None:
    """The seed's writer on an event loop, as the seed intends: awaited ``write_chunk``."""
    seed = load_seed(seed_path)
    answer_async(channel, _seed_produce(channel, seed, url, ids, rate, seconds, tick))


async def _seed_produce(channel: Channel, seed: Any, url: str, ids: list[str], rate: float,
                        seconds: float, tick: float) -> dict[str, Any]:
    writer = seed.RedisSSEStreamWriter(seed.AsyncRedisClient(url))
    await writer.start()
    channel.send("ready")
    await asyncio.to_thread(channel.expect, "go", GO_TIMEOUT)
    sent = [0] * len(ids)

    async def send(i: int, frame: str) -> None:
        await writer.write_chunk(ids[i], frame)
        sent[i] += 1

    costs = await apaced(len(ids), rate, seconds, send, tick)
    await writer.stop()
    return {"costs_ns": costs, "sent": sent}


class _Tally:
    """What one reader process received: delays (ns) and counts per run."""

    def __init__(self, ids: list[str]) -> None:
        self.delays: list[int] = []
        self.counts = dict.fromkeys(ids, 0)
        self.errors = 0  # reads that failed (the seed's readers then start again)

    def record(self, run_id: str, data: str) -> None:
        sent = sent_at(data)
        if sent is not None:
            self.delays.append(time.time_ns() - sent)
            self.counts[run_id] += 1

    def complete(self, expected: dict[str, int]) -> bool:
        return all(self.counts[run] >= n for run, n in expected.items())

    async def settle(self, expected: dict[str, int], grace: float) -> None:
        """Wait at most ``grace`` s for every run's expected count."""
        deadline = time.monotonic() + grace
        while not self.complete(expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"delays_ns": self.delays, "counts": self.counts, "errors": self.errors, **extra}


def hub_readers(channel: Channel, url: str, ids: list[str], overrides: dict[str, Any],
                connections: int, grace: float) -> None:
    """This project's readers: one ``ReaderHub`` in this process, one reader per run."""
    settings = Settings(redis_url=url, **overrides)
    answer_async(channel, _hub_read(channel, settings, ids, connections, grace))


def hub_client(settings: Settings) -> aredis.Redis:
    """The hub's client for its non-blocking commands, on a pool that waits for a free
    connection. The default client's pool (redis-py 8: at most 100 connections, raising
    ``MaxConnectionsError`` past that) fails readers when more than 100 join at once."""
    assert settings.redis_url is not None
    pool = aredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=HUB_POOL, timeout=60, decode_responses=True,
        socket_timeout=settings.socket_timeout + settings.block_timeout,
        socket_connect_timeout=settings.socket_timeout)
    return aredis.Redis(connection_pool=pool)


async def _hub_read(channel: Channel, settings: Settings, ids: list[str], connections: int,
                    grace: float) -> dict[str, Any]:
    tally = _Tally(ids)
    # A cluster hub makes its own cluster client (and bounds its commands itself).
    client = None if settings.cluster else hub_client(settings)
    async with ReaderHub(settings, client=client, connections=connections) as hub:

        async def follow(run_id: str) -> None:
            async for event in hub.read(run_id, starting_after=0):
                tally.record(run_id, event.data)

        tasks = [asyncio.create_task(follow(run_id)) for run_id in ids]
        joined = await _wait_followed(hub, len(ids), timeout=120)
        channel.send("ready", {"join_seconds": joined})
        expected = await asyncio.to_thread(channel.expect, "stop", STOP_TIMEOUT)
        await tally.settle(expected, grace)
        stats = hub.stats()
        await _cancel(tasks)
    if client is not None:
        await client.aclose()
    return tally.result(hub=stats)


async def _wait_followed(hub: ReaderHub, count: int, timeout: float) -> float:
    """Seconds until the hub follows ``count`` streams (every reader caught up and waiting)."""
    started = time.monotonic()
    while hub.stats()["followed"] < count:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"hub follows {hub.stats()['followed']} of {count} after "
                               f"{timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def seed_readers(channel: Channel, url: str, seed_path: str, ids: list[str],
                 grace: float) -> None:
    """The seed's readers: one polling ``redis_sse_stream_generator`` per run, one process."""
    seed = load_seed(seed_path)
    answer_async(channel, _seed_read(channel, seed, url, ids, grace))


async def _seed_read(channel: Channel, seed: Any, url: str, ids: list[str],
                     grace: float) -> dict[str, Any]:
    tally = _Tally(ids)
    client = seed.AsyncRedisClient(url)

    async def follow(run_id: str) -> None:
        # A failed read ends the seed's generator; a client reconnects from its last chunk.
        while True:
            try:
                async for data in seed.redis_sse_stream_generator(
                        client, run_id, starting_after=tally.counts[run_id]):
                    tally.record(run_id, data)
                return
            except RedisError:
                tally.errors += 1
                await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(follow(run_id)) for run_id in ids]
    await asyncio.sleep(0.5)  # every generator has sent its first XRANGE
    channel.send("ready", {"join_seconds": 0.5})
    expected = await asyncio.to_thread(channel.expect, "stop", STOP_TIMEOUT)
    await tally.settle(expected, grace)
    await _cancel(tasks)
    with contextlib.suppress(RedisError):
        await asyncio.wait_for((await client.get_client()).aclose(), 5)
    return tally.result()


async def _cancel(tasks: list[asyncio.Task[None]], timeout: float = 5.0) -> None:
    """Cancel the readers and wait at most ``timeout`` s: a redis-py read cancelled while it
    waits for a pooled connection can stay pending for good."""
    for task in tasks:
        task.cancel()
    done, _ = await asyncio.wait(tasks, timeout=timeout)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def delay_ms(side: dict[str, Any], q: float) -> float:
    """The ``q``-th percentile of a readers result's delays, in ms."""
    return float(percentile(side["delays_ns"], q) / 1e6)


def received_percent(side: dict[str, Any]) -> float:
    """Chunks the readers got, as a percentage of those the producer sent (``side["sent"]``)."""
    received: int = sum(side["counts"].values())
    return 100.0 * received / max(int(side["sent"]), 1)


def run_pair(producer: Child, make_readers: Callable[[], Child], ids: list[str],
             seconds: float, grace: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start the producer (it claims the runs), then the readers; stream for ``seconds``.

    Returns ``(producer result, readers result)``; the readers' includes ``join_seconds``.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(producer)
        producer.channel.expect("ready", 300)
        readers = stack.enter_context(make_readers())
        joined = readers.channel.expect("ready", 300)
        producer.channel.send("go")
        produced = producer.channel.expect("result", seconds * 3 + 120)
        readers.channel.send("stop", dict(zip(ids, produced["sent"], strict=True)))
        read = readers.channel.expect("result", grace + 120)
    read.update(joined or {})
    return produced, read
