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
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from streaming.gcpolicy import GcPacer
from streaming.hub import ReaderHub
from streaming.settings import Settings
from streaming.writer import StreamWriter

from ..core import Context, Figure, Result, Target
from ..procs import Channel, Child, answer_async, use_uvloop
from ..stats import percentile
from .common import (
    SEED_POOL,
    chunk_data,
    cleanup,
    load_seed,
    open_runs,
    seed_client,
    sent_at,
    sse_frame,
)

__all__ = [
    "HUB_CLIENT_NOTE",
    "alternated",
    "delay_ms",
    "hub_readers",
    "hub_rows",
    "pooled",
    "project_producer",
    "received_percent",
    "run_pair",
    "seed_producer",
    "seed_readers",
]

#: Shown with the scenarios that start many readers at once.
HUB_CLIENT_NOTE = ("pools: the hub runs with its own default client (a waiting pool of "
                   f"{SEED_POOL} connections); the seed's readers get the same kind and "
                   "size (redis-py's BlockingConnectionPool), not redis-py's default "
                   "non-blocking pool, which fails reads past its 100 connections")
GO_TIMEOUT = 300.0
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
    writer = seed.RedisSSEStreamWriter(seed_client(seed, url))
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
        self._cpu = (time.process_time(), time.monotonic())

    def go(self) -> None:
        """The measured window starts now (the readers have joined)."""
        self._cpu = (time.process_time(), time.monotonic())

    def cpu_since_go(self) -> float:
        """This process's CPU use since ``go()`` (or creation), % of a core."""
        cpu, began = self._cpu
        return 100 * (time.process_time() - cpu) / max(time.monotonic() - began, 1e-9)

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
                connections: int, grace: float, copies: int = 1) -> None:
    """This project's readers: one ``ReaderHub`` in this process, ``copies`` readers per run,
    run as in a web process: on uvloop, with its garbage-collection pacing
    (``settings.gc_mode``, ``streaming.gcpolicy``)."""
    settings = Settings(redis_url=url, **overrides)
    use_uvloop()
    answer_async(channel, _hub_read(channel, settings, ids, connections, grace, copies))


async def _hub_read(channel: Channel, settings: Settings, ids: list[str], connections: int,
                    grace: float, copies: int) -> dict[str, Any]:
    tally = _Tally(ids)
    async with ReaderHub(settings, connections=connections) as hub:
        pacer = GcPacer(settings.gc_mode, lambda: hub.joins, lambda: hub.readers)
        pacer.start()

        async def follow(run_id: str) -> None:
            async for event in hub.read(run_id, starting_after=0):
                tally.record(run_id, event.data)

        tasks = [asyncio.create_task(follow(run_id)) for run_id in ids for _ in range(copies)]
        joined = await _wait_followed(hub, len(ids) * copies, timeout=120)
        channel.send("ready", {"join_seconds": joined})
        tally.go()
        expected = await asyncio.to_thread(channel.expect, "stop", STOP_TIMEOUT)
        cpu = tally.cpu_since_go()
        await tally.settle({run: n * copies for run, n in expected.items()}, grace)
        stats = hub.stats()
        await _cancel(tasks)
        await pacer.aclose()
    return tally.result(hub=stats, cpu_percent=cpu, gc_mode=settings.gc_mode)


async def _wait_followed(hub: ReaderHub, count: int, timeout: float) -> float:
    """Seconds until ``count`` readers follow their runs (every reader caught up, waiting)."""
    started = time.monotonic()
    while hub.stats()["following"] < count:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{hub.stats()['following']} of {count} readers follow their "
                               f"runs after {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def seed_readers(channel: Channel, url: str, seed_path: str, ids: list[str],
                 grace: float, copies: int = 1) -> None:
    """The seed's readers: ``copies`` polling ``redis_sse_stream_generator`` per run, one
    process."""
    seed = load_seed(seed_path)
    answer_async(channel, _seed_read(channel, seed, url, ids, grace, copies))


async def _seed_read(channel: Channel, seed: Any, url: str, ids: list[str],
                     grace: float, copies: int) -> dict[str, Any]:
    tally = _Tally(ids)
    client = seed_client(seed, url)

    async def follow(run_id: str) -> None:
        got = 0
        # A failed read ends the seed's generator; a client reconnects from its last chunk.
        while True:
            try:
                async for data in seed.redis_sse_stream_generator(
                        client, run_id, starting_after=got):
                    got += 1
                    tally.record(run_id, data)
                return
            except RedisError:
                tally.errors += 1
                await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(follow(run_id)) for run_id in ids for _ in range(copies)]
    await asyncio.sleep(0.5)  # every generator has sent its first XRANGE
    channel.send("ready", {"join_seconds": 0.5})
    tally.go()
    expected = await asyncio.to_thread(channel.expect, "stop", STOP_TIMEOUT)
    cpu = tally.cpu_since_go()
    await tally.settle({run: n * copies for run, n in expected.items()}, grace)
    await _cancel(tasks)
    with contextlib.suppress(RedisError):
        await asyncio.wait_for((await client.get_client()).aclose(), 5)
    return tally.result(cpu_percent=cpu)


async def _cancel(tasks: list[asyncio.Task[None]], timeout: float = 5.0) -> None:
    """Cancel the readers and wait at most ``timeout`` s: a redis-py read cancelled while it
    waits for a pooled connection can stay pending for good."""
    for task in tasks:
        task.cancel()
    done, _ = await asyncio.wait(tasks, timeout=timeout)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def alternated(sides: dict[str, Callable[[], dict[str, Any]]],
               repeats: int) -> dict[str, dict[str, Any]]:
    """Each side measured ``repeats`` times, the sides taking turns (p, s, p, s, ...: a busy
    neighbour hits both, not one), each side's repeats then ``pooled``."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, measure in sides.items():
            runs[name].append(measure())
    return {name: pooled(found) for name, found in runs.items()}


def pooled(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Several repeats of one side as one: percentiles then come from every sample of every
    repeat; counts are summed; each repeat's p99 is kept beside."""
    return {
        "delays_ns": [d for one in repeats for d in one["delays_ns"]],
        "counts": {run: n for one in repeats for run, n in one["counts"].items()},
        "sent": sum(int(one["sent"]) for one in repeats),
        "errors": sum(one["errors"] for one in repeats),
        "join_seconds": max(one.get("join_seconds", 0.0) for one in repeats),
        "cpu_percent": max(one.get("cpu_percent", math.nan) for one in repeats),
        "each_p99_ms": [round(delay_ms(one, 99), 2) for one in repeats],
        "hub": repeats[-1].get("hub"),
    }


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


def delivery_rows(p99_limit: float, result: Result, n: int, project: dict[str, Any],
                  seed: dict[str, Any] | None, missing: str | None) -> None:
    """The rows of a delivery scenario at N readers: p50, p99 (its target ``p99_limit`` ms),
    chunks received, reader CPU; ``missing`` stands where the seed was not measured."""
    for q, target in ((50, None), (99, Target(limit=p99_limit))):
        result.add(Figure(f"p{q} delivery, N={n:,}", "ms", "lower", delay_ms(project, q),
                          delay_ms(seed, q) if seed else missing, target=target))
    result.add(Figure(f"chunks received, N={n:,}", "%", "higher", received_percent(project),
                      received_percent(seed) if seed else missing, target=Target(limit=100)))
    result.add(Figure(f"reader process CPU, N={n:,}", "% of a core", "lower",
                      project["cpu_percent"], seed["cpu_percent"] if seed else missing,
                      note="worst repeat, while streaming"))
    result.params[f"p99 of each repeat at N={n}, ms"] = {
        "project": project["each_p99_ms"], **({"seed": seed["each_p99_ms"]} if seed else {})}
    if seed:
        result.params[f"seed_read_errors at N={n}"] = seed["errors"]


def hub_rows(ctx: Context, result: Result, name: str, p99_limit: float, n: int, seed_n: int,
             repeats: int, measure: Callable[[int, str], dict[str, Any]], absent: str) -> None:
    """The rows of a hub scenario: both designs at ``seed_n`` readers taking turns, then the
    project alone at ``n`` (``absent`` stands for the seed there); ``measure(readers, side)``
    runs one repeat of side ``"p"`` or ``"s"``. Cleans the scenario's keys up."""
    if ctx.seed:
        sides = alternated({"p": lambda: measure(seed_n, "p"),
                            "s": lambda: measure(seed_n, "s")}, repeats)
        delivery_rows(p99_limit, result, seed_n, sides["p"], sides["s"], None)
    project = pooled([measure(n, "p") for _ in range(repeats)])
    delivery_rows(p99_limit, result, n, project, None, absent if ctx.seed else ctx.seed_missing)
    result.add(Figure("readers joined and waiting", "s", "lower", project["join_seconds"],
                      note=f"N={n:,}"))
    result.params["hub"] = project.get("hub")
    result.notes.append(HUB_CLIENT_NOTE)
    cleanup(ctx.redis_url, name)
