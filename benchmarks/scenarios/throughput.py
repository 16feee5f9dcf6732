"""Throughput: many runs written interleaved by one process, until every chunk is readable.

Each side writes ``runs x chunks`` in a fresh process: chunk k of every run, then chunk k+1,
... The clock stops when the last chunk is stored (the project's ``flush()``, the seed's
``stop()``, which flushes what it still buffers). Stream lengths are checked afterwards.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from streaming.settings import Settings
from streaming.writer import StreamWriter

from ..core import Context, Figure, Result, Target, scenario
from ..procs import Channel, Child, answer_async
from ..server import append_ceiling, xadd_ceiling
from .common import (
    chunk_data,
    cleanup,
    load_seed,
    open_runs,
    run_ids,
    seed_client,
    sse_frame,
    stream_lengths,
)

NAME = "throughput"


@scenario(NAME, "Throughput: runs x chunks written interleaved by one process, until readable")
def run(ctx: Context) -> Result:
    runs, chunks = ctx.size(20, 100), ctx.size(250, 1000)
    repeats = ctx.size(1, 3)
    result = Result(NAME, params={
        "runs": runs, "chunks_per_run": chunks, "repeats": repeats, "chunk_bytes": 100,
        "figure": "median of the repeats", "order": "project and seed take turns"})
    makers: dict[str, Any] = {"p": lambda ids: Child(
        project_side, ctx.redis_url, ids, chunks, name="throughput-project")}
    if ctx.seed is not None:
        makers["s"] = lambda ids: Child(seed_side, ctx.redis_url, ctx.seed_path, ids, chunks,
                                        name="throughput-seed")
    each: dict[str, list[float]] = {side: [] for side in makers}
    for _ in range(repeats):  # the sides take turns: a busy neighbour hits both
        for side, make in makers.items():
            each[side].append(_rate(ctx.redis_url, make, runs, chunks, side))
    project = float(statistics.median(each["p"]))
    seed: float | str = float(statistics.median(each["s"])) if "s" in each else ctx.seed_missing
    cluster_url = ctx.cluster_url()
    cluster = None
    if cluster_url is not None:  # the same writer, the store a Redis Cluster
        cluster = float(statistics.median(_rate(cluster_url, lambda ids: Child(
            project_side, cluster_url, ids, chunks, name="throughput-cluster"), runs, chunks, "c")
            for _ in range(repeats)))
    ceiling = ctx.ceiling("xadd", lambda: xadd_ceiling(ctx.redis_url,
                                                       ctx.size(200_000, 1_000_000)))
    ours = ctx.ceiling("append", lambda: append_ceiling(ctx.redis_url, runs, chunks))
    result.add(Figure("written until readable", "chunks/s", "higher", project, seed,
                      ceiling=ceiling["per_second"],
                      ceiling_source=ceiling["source"],
                      target=Target(limit=450_000, gain=3), cluster=cluster))
    result.add(Figure("written until readable, beside our write step's ceiling", "chunks/s",
                      "higher", project, seed, ceiling=ours["per_second"],
                      ceiling_source=ours["source"], cluster=cluster))
    result.params["rates of each repeat"] = each
    cleanup(ctx.redis_url, NAME)
    return result


def _rate(url: str, make: Any, runs: int, chunks: int, side: str) -> float:
    """Chunks/s of one repeat of ``side`` (its child made by ``make(ids)``), checked stored."""
    ids = run_ids(NAME, runs, side)
    with make(ids) as child:
        seconds = child.channel.expect("result", 300)["seconds"]
    stored = stream_lengths(url, ids)
    if stored < runs * chunks:
        raise RuntimeError(f"{side}: only {stored} of {runs * chunks} chunks stored")
    cleanup(url, NAME)
    return float(runs * chunks / seconds)


def project_side(channel: Channel, url: str, ids: list[str], chunks: int) -> None:
    writer = StreamWriter(Settings(redis_url=url)).start()
    handles = open_runs(writer, ids)
    data = chunk_data()
    started = time.perf_counter()
    for _ in range(chunks):
        for handle in handles:
            handle.send(data)
    writer.flush(120)
    seconds = time.perf_counter() - started
    writer.stop()
    channel.send("result", {"seconds": seconds})


def seed_side(channel: Channel, url: str, seed_path: str, ids: list[str], chunks: int) -> None:
    seed = load_seed(seed_path)
    answer_async(channel, _seed_write(seed, url, ids, chunks))


async def _seed_write(seed: Any, url: str, ids: list[str], chunks: int) -> dict[str, Any]:
    writer = seed.RedisSSEStreamWriter(seed_client(seed, url))
    await writer.start()
    frame = sse_frame(chunk_data())
    started = time.perf_counter()
    for _ in range(chunks):
        for run_id in ids:
            await writer.write_chunk(run_id, frame)
    await writer.stop()
    seconds = time.perf_counter() - started
    return {"seconds": seconds}
