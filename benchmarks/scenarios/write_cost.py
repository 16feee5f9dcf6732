"""Write cost: time spent inside the write call, in the producing thread.

The project's ``RunWriter.send()`` only frames the chunk and appends it to a buffer; the seed's
``await write_chunk()`` flushes inline, awaiting Redis, every 50 chunks of a run or 0.5 s.
Measured at a steady pace (the latency scenario's load, no readers) and in a burst (the
throughput scenario's load), with ``time.perf_counter_ns()`` around each call.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from streaming.settings import Settings
from streaming.wire import encode_frame
from streaming.writer import StreamWriter

from ..core import Context, Figure, Result, Target, scenario
from ..procs import Channel, Child, answer_async
from ..stats import percentile
from .common import chunk_data, cleanup, load_seed, open_runs, run_ids, seed_client, sse_frame
from .sides import paced, project_producer, seed_producer

NAME = "write-cost"


@scenario(NAME, "Write cost: time inside the write call, in the producing thread")
def run(ctx: Context) -> Result:
    paced = {"runs": 20, "rate": 100, "seconds": ctx.size(1.0, 5.0)}
    burst = {"runs": ctx.size(20, 100), "chunks": ctx.size(250, 1000)}
    result = Result(NAME, params={"paced": paced, "burst": burst,
                                  "timer": "perf_counter_ns around each call (includes ~0.1 us "
                                           "of timer overhead)"})
    measured = {"paced": _paced(ctx, **paced), "burst": _burst(ctx, **burst)}
    for load, sides in measured.items():
        for q, name in ((50, "median"), (99, "p99")):
            result.add(Figure(f"{name}, {load}", "us", "lower", _us(sides["project"], q),
                              _us(sides["seed"], q) if sides["seed"] else ctx.seed_missing,
                              target=Target(limit=5.0) if q == 50 else None))
    # What any call costs in the same place: the producer wakes from a sleep before each one,
    # in cold caches, on this machine. The last two: what waking a sleeping thread adds.
    with Child(floor_producer, paced["runs"], paced["rate"], paced["seconds"],
               name="write-cost-floor") as child:
        floors = child.channel.expect("result", 300)
    for call, costs in floors.items():
        result.add(Figure(f"median, paced, the same pacing calling {call} alone", "us", "lower",
                          _us(costs, 50)))
    cleanup(ctx.redis_url, NAME)
    return result


def _paced(ctx: Context, runs: int, rate: int, seconds: float) -> dict[str, Any]:
    project = _alone(Child(project_producer, ctx.redis_url, run_ids(NAME, runs, "p"), rate,
                           seconds, {}, name="write-cost-project"))
    seed = None
    if ctx.seed:
        seed = _alone(Child(seed_producer, ctx.redis_url, ctx.seed_path,
                            run_ids(NAME, runs, "s"), rate, seconds, name="write-cost-seed"))
    return {"project": project["costs_ns"], "seed": seed["costs_ns"] if seed else None}


def floor_producer(channel: Channel, runs: int, rate: float, seconds: float) -> None:
    """The paced load's costs with ``send()`` replaced by a no-op, by the SSE framing every
    ``send()`` does first, and (where there is ``eventfd``) by the write an idle writer's
    ``send()`` wakes its flush thread with: to a descriptor no thread waits on, then to one a
    thread sleeps on in ``epoll`` (the flush thread's case)."""
    floors = {
        "a no-op": paced(runs, rate, seconds, lambda i, data: None),
        "the SSE framing (encode_frame)": paced(
            runs, rate, seconds, lambda i, data: encode_frame(data, limit=1 << 20)),
    }
    if hasattr(os, "eventfd"):
        one = (1).to_bytes(8, sys.byteorder)
        fd = os.eventfd(0, os.EFD_NONBLOCK)
        floors["an eventfd write (no thread waiting)"] = paced(
            runs, rate, seconds, lambda i, data: os.write(fd, one))
        with _sleeper(fd):
            floors["an eventfd write that wakes a thread asleep in epoll"] = paced(
                runs, rate, seconds, lambda i, data: os.write(fd, one))
        os.close(fd)
    channel.send("result", floors)


@contextlib.contextmanager
def _sleeper(fd: int) -> Iterator[None]:
    """A thread that sleeps in ``epoll`` until ``fd`` is readable, reads it, and sleeps again."""
    stop = threading.Event()

    def sleep() -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while not stop.is_set():
                if selector.select(0.1):
                    with contextlib.suppress(BlockingIOError):
                        os.read(fd, 8)

    thread = threading.Thread(target=sleep, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _alone(producer: Child) -> dict[str, Any]:
    with producer:
        producer.channel.expect("ready", 120)
        producer.channel.send("go")
        result: dict[str, Any] = producer.channel.expect("result", 300)
    return result


def _burst(ctx: Context, runs: int, chunks: int) -> dict[str, Any]:
    with Child(project_burst, ctx.redis_url, run_ids(NAME, runs, "p"), chunks,
               name="write-cost-project-burst") as child:
        project = child.channel.expect("result", 300)
    seed = None
    if ctx.seed:
        with Child(seed_burst, ctx.redis_url, ctx.seed_path, run_ids(NAME, runs, "s"), chunks,
                   name="write-cost-seed-burst") as child:
            seed = child.channel.expect("result", 300)
    return {"project": project, "seed": seed}


def project_burst(channel: Channel, url: str, ids: list[str], chunks: int) -> None:
    writer = StreamWriter(Settings(redis_url=url)).start()
    handles = open_runs(writer, ids)
    data = chunk_data()
    costs = []
    for _ in range(chunks):
        for handle in handles:
            began = time.perf_counter_ns()
            handle.send(data)
            costs.append(time.perf_counter_ns() - began)
    writer.flush(60)
    writer.stop()
    channel.send("result", costs)


def seed_burst(channel: Channel, url: str, seed_path: str, ids: list[str], chunks: int) -> None:
    answer_async(channel, _seed_burst(load_seed(seed_path), url, ids, chunks))


async def _seed_burst(seed: Any, url: str, ids: list[str], chunks: int) -> list[int]:
    writer = seed.RedisSSEStreamWriter(seed_client(seed, url))
    await writer.start()
    frame = sse_frame(chunk_data())
    costs = []
    for _ in range(chunks):
        for run_id in ids:
            began = time.perf_counter_ns()
            await writer.write_chunk(run_id, frame)
            costs.append(time.perf_counter_ns() - began)
    await writer.stop()
    return costs


def _us(costs: list[int], q: float) -> float:
    return percentile(costs, q) / 1000
