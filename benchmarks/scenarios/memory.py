"""Memory: the writer's resident size under volume, and during a Redis outage.

Volume: one process writes ``runs x chunks`` (1,000,000 in full mode) as fast as it can; its
RSS and buffered bytes are sampled as it goes. Outage: producers write 1,000 chunks/s while
the harness kills the server (SIGKILL), waits, and starts it again on the same port. That
server keeps an append-only file (``appendfsync always``), so what it acknowledged survives
the restart and the count of stored chunks can be checked against the accepted ones. The
project's writer runs with a small ``max_buffer_bytes`` so the outage reaches the bound.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
from typing import Any

from streaming.embedded import EmbeddedServer
from streaming.errors import WriterError
from streaming.settings import Settings
from streaming.writer import StreamWriter

from ..core import Context, Figure, Result, Target, scenario
from ..procs import Channel, Child, answer_async
from .common import (
    chunk_data,
    cleanup,
    load_seed,
    open_runs,
    rss_bytes,
    run_ids,
    sse_frame,
    stream_audit,
)

NAME = "memory"
MIB = 2**20
OUTAGE_RUNS, OUTAGE_RATE = 10, 1000.0


@scenario(NAME, "Memory: writer RSS over many chunks, and during a Redis outage")
def run(ctx: Context) -> Result:
    result = Result(NAME)
    _volume(ctx, result)
    _outage(ctx, result)
    return result


# -- volume ------------------------------------------------------------------------------------


def _volume(ctx: Context, result: Result) -> None:
    runs, chunks = 100, ctx.size(1000, 10_000)
    defaults = Settings()
    bound = defaults.max_buffer_bytes
    # What the writer may hold: the buffer's bound plus the pipeline being sent (README,
    # Performance: "the pipeline being sent comes on top").
    held = bound + defaults.max_pipeline_bytes
    result.params["volume"] = {"runs": runs, "chunks_per_run": chunks,
                               "max_buffer_bytes": bound,
                               "max_pipeline_bytes": defaults.max_pipeline_bytes}
    with Child(project_volume, ctx.redis_url, run_ids(NAME, runs, "p"), chunks,
               name="memory-project") as child:
        project = child.channel.expect("result", 600)
    seed = None
    if ctx.seed:
        with Child(seed_volume, ctx.redis_url, ctx.seed_path, run_ids(NAME, runs, "s"),
                   chunks, name="memory-seed") as child:
            seed = child.channel.expect("result", 600)
    cleanup(ctx.redis_url, NAME)
    total = f"{runs * chunks:,} chunks"
    result.add(Figure(f"RSS growth over {total}", "MiB", "lower", _growth(project),
                      _growth(seed) if seed else ctx.seed_missing,
                      target=Target(limit=held / MIB),
                      note="target: the buffer's bound plus the pipeline being sent"))
    result.add(Figure(f"RSS growth over the second half ({runs * chunks // 2:,} chunks)", "MiB",
                      "lower", _late_growth(project),
                      _late_growth(seed) if seed else ctx.seed_missing))
    result.add(Figure(f"peak buffered, {total}", "MiB", "lower", project["buffered_peak"] / MIB,
                      seed["buffered_peak"] / MIB if seed else ctx.seed_missing,
                      target=Target(limit=bound / MIB)))
    result.params["volume"].update(project=_brief(project), seed=_brief(seed))
    if project["buffered_peak"] > 0:
        ratio = (project["rss_peak"] - project["rss_start"]) / project["buffered_peak"]
        result.notes.append(f"project: RSS grew {ratio:.1f} MiB per MiB counted against "
                            "max_buffer_bytes (each chunk counts its frame plus its "
                            "bookkeeping; a pipeline being sent, up to max_pipeline_bytes, "
                            "comes on top)")


def project_volume(channel: Channel, url: str, ids: list[str], chunks: int) -> None:
    writer = StreamWriter(Settings(redis_url=url)).start()
    handles = open_runs(writer, ids)
    data = chunk_data()
    meter = _Meter(lambda: writer.stats().buffered_bytes)
    for k in range(chunks):
        for handle in handles:
            handle.send(data)
        if k % 97 == 0:  # not a multiple of the seed's flush size (50)
            meter.sample()
    writer.flush(120)
    meter.sample()
    writer.stop()
    channel.send("result", meter.result())


def seed_volume(channel: Channel, url: str, seed_path: str, ids: list[str], chunks: int) -> None:
    seed = load_seed(seed_path)
    answer_async(channel, _seed_volume(seed, url, ids, chunks))


async def _seed_volume(seed: Any, url: str, ids: list[str], chunks: int) -> dict[str, Any]:
    writer = seed.RedisSSEStreamWriter(seed.AsyncRedisClient(url))
    await writer.start()
    frame = sse_frame(chunk_data())
    meter = _Meter(lambda: _seed_buffered(writer))
    for k in range(chunks):
        for run_id in ids:
            await writer.write_chunk(run_id, frame)
        if k % 97 == 0:  # not a multiple of its flush size (50)
            meter.sample()
    await writer.stop()
    meter.sample()
    return meter.result()


# -- outage ------------------------------------------------------------------------------------


def _outage(ctx: Context, result: Result) -> None:
    down = ctx.size(2.0, 30.0)
    bound = ctx.size(64 * 1024, MIB)
    result.params["outage"] = {
        "runs": OUTAGE_RUNS, "chunks_per_second": OUTAGE_RATE, "outage_seconds": down,
        "project_max_buffer_bytes": bound,
        "server": "private embedded server with appendonly yes, appendfsync always"}
    directory = tempfile.mkdtemp(prefix="bench-outage-")
    server = EmbeddedServer(extra_args=["--appendonly", "yes", "--appendfsync", "always",
                                        "--dir", directory]).start()
    try:
        sides = _outage_sides(ctx, server, down, bound)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    project, seed = sides.get("p"), sides.get("s")
    assert project is not None
    result.add(Figure(f"RSS growth during a {down:g} s outage", "MiB", "lower",
                      _growth(project), _growth(seed) if seed else ctx.seed_missing))
    result.add(Figure(f"peak buffered during a {down:g} s outage", "KiB", "lower",
                      project["buffered_peak"] / 1024,
                      seed["buffered_peak"] / 1024 if seed else ctx.seed_missing,
                      target=Target(limit=bound / 1024)))
    result.add(Figure("writes that raised into the producer", "%", "lower",
                      project["raised_percent"],
                      seed["raised_percent"] if seed else ctx.seed_missing))
    for key, name in (("missing", "kept chunks missing after the restart"),
                      ("duplicated", "chunks stored twice")):
        result.add(Figure(name, "chunks", "lower", project[key],
                          seed[key] if seed else ctx.seed_missing, target=Target(limit=0)))
    result.params["outage"].update(project=_brief(project), seed=_brief(seed))
    if seed:
        result.notes.append("seed: a write whose flush fails raises into the producer, but "
                            "the chunk stays buffered (no bound) and is written later")


def _outage_sides(ctx: Context, server: EmbeddedServer, down: float,
                  bound: int) -> dict[str, dict[str, Any]]:
    ids = {"p": run_ids(NAME, OUTAGE_RUNS, "p"), "s": run_ids(NAME, OUTAGE_RUNS, "s")}
    children = {"p": Child(project_outage, server.url, ids["p"], bound, name="outage-project")}
    if ctx.seed:
        children["s"] = Child(seed_outage, server.url, ctx.seed_path, ids["s"],
                              name="outage-seed")
    for child in children.values():
        child.__enter__()
    try:
        for child in children.values():
            child.channel.expect("ready", 120)
            child.channel.send("go")
        time.sleep(ctx.size(1.0, 2.0))
        server.kill()
        time.sleep(down)
        server.start()
        time.sleep(ctx.size(1.5, 5.0))
        for child in children.values():
            child.channel.send("stop")
        sides = {side: child.channel.expect("result", 120) for side, child in children.items()}
    finally:
        for child in children.values():
            child.stop()
    for side, found in sides.items():
        audit = stream_audit(server.url, ids[side])
        found.update(audit, missing=max(found["kept"] - audit["unique"], 0),
                     duplicated=audit["entries"] - audit["unique"])
    return sides


def project_outage(channel: Channel, url: str, ids: list[str], bound: int) -> None:
    logging.disable(logging.CRITICAL)  # the writer logs every failed retry
    writer = StreamWriter(Settings(redis_url=url, max_buffer_bytes=bound)).start()
    handles = open_runs(writer, ids)
    meter = _Meter(lambda: writer.stats().buffered_bytes)
    stop = threading.Event()
    tally = {"calls": 0, "kept": 0, "raised": 0}

    def send(i: int) -> None:
        tally["calls"] += 1
        try:
            handles[i].send(chunk_data())
            tally["kept"] += 1
        except WriterError as exc:  # refused: the chunk is not kept, and the producer knows
            tally["raised"] += 1
            tally[type(exc).__name__] = tally.get(type(exc).__name__, 0) + 1

    channel.send("ready")
    channel.expect("go", 120)
    producer = threading.Thread(target=_steady, args=(len(ids), send, stop, meter))
    producer.start()
    channel.expect("stop", 600)
    stop.set()
    producer.join(30)
    writer.flush(60)
    meter.sample()
    writer.stop()
    channel.send("result", {**meter.result(), **tally, **_refused(tally)})


def seed_outage(channel: Channel, url: str, seed_path: str, ids: list[str]) -> None:
    logging.disable(logging.CRITICAL)  # the seed logs every failed flush
    seed = load_seed(seed_path)
    answer_async(channel, _seed_outage(channel, seed, url, ids))


async def _seed_outage(channel: Channel, seed: Any, url: str, ids: list[str]) -> dict[str, Any]:
    writer = seed.RedisSSEStreamWriter(seed.AsyncRedisClient(url))
    await writer.start()
    meter = _Meter(lambda: _seed_buffered(writer))
    tally = {"calls": 0, "kept": 0, "raised": 0}
    stopping = asyncio.Event()

    async def produce() -> None:
        interval, k = 1.0 / OUTAGE_RATE, 0
        due = time.monotonic()
        while not stopping.is_set():
            due = max(due + interval, time.monotonic() - 0.1)
            await asyncio.sleep(max(due - time.monotonic(), 0))
            tally["calls"] += 1
            tally["kept"] += 1  # the seed keeps a chunk even when its flush raises
            try:
                await writer.write_chunk(ids[k % len(ids)], sse_frame(chunk_data()))
            except Exception:  # the seed re-raises whatever its flush raised
                tally["raised"] += 1
            k += 1
            if k % 100 == 0:
                meter.sample()

    channel.send("ready")
    await asyncio.to_thread(channel.expect, "go", 120)
    task = asyncio.create_task(produce())
    await asyncio.to_thread(channel.expect, "stop", 600)
    stopping.set()
    await asyncio.wait_for(task, 60)
    await asyncio.wait_for(writer.stop(), 60)
    meter.sample()
    return {**meter.result(), **tally, **_refused(tally)}


def _steady(runs: int, send: Any, stop: threading.Event, meter: _Meter) -> None:
    """Call ``send(run index)`` at ``OUTAGE_RATE`` per second until ``stop``; time lost in a
    blocked call is not made up."""
    interval, k = 1.0 / OUTAGE_RATE, 0
    due = time.monotonic()
    while not stop.is_set():
        due = max(due + interval, time.monotonic() - 0.1)
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        send(k % runs)
        k += 1
        if k % 100 == 0:
            meter.sample()


# -- measuring ---------------------------------------------------------------------------------


class _Meter:
    """Samples this process's RSS and the writer's buffered bytes."""

    def __init__(self, buffered: Any) -> None:
        self._buffered = buffered
        self.start = rss_bytes()
        self.rss_peak = self.start
        self.buffered_peak = 0
        self.samples: list[tuple[float, int, int]] = []
        self._t0 = time.monotonic()

    def sample(self) -> None:
        rss, buffered = rss_bytes(), int(self._buffered())
        self.rss_peak = max(self.rss_peak, rss)
        self.buffered_peak = max(self.buffered_peak, buffered)
        self.samples.append((round(time.monotonic() - self._t0, 3), rss, buffered))

    def result(self) -> dict[str, Any]:
        return {"rss_start": self.start, "rss_peak": self.rss_peak, "rss_end": rss_bytes(),
                "buffered_peak": self.buffered_peak, "samples": self.samples[:: max(
                    len(self.samples) // 200, 1)]}


def _seed_buffered(writer: Any) -> int:
    return sum(len(chunk["data"]) for chunks in writer.buffer.values() for chunk in chunks)


def _refused(tally: dict[str, int]) -> dict[str, float]:
    return {"raised_percent": 100 * tally["raised"] / max(tally["calls"], 1)}


def _growth(side: dict[str, Any] | None) -> float:
    if side is None:
        return float("nan")
    return float(side["rss_peak"] - side["rss_start"]) / MIB


def _late_growth(side: dict[str, Any]) -> float:
    """RSS growth from the middle of the run to its end: about zero when memory is flat."""
    rss = [sample[1] for sample in side["samples"]]
    middle = len(rss) // 2
    return (max(rss[middle:]) - rss[middle]) / MIB if rss else float("nan")


def _brief(side: dict[str, Any] | None) -> dict[str, Any] | None:
    if side is None:
        return None
    return {key: value for key, value in side.items() if key != "samples"} | {
        "samples (s, rss, buffered)": side["samples"]}
