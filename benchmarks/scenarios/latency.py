"""Latency: from the write call to the reader's receipt, one reader per run.

A producer process writes ``rate`` chunks/s to each run; a reader process follows every run
(the project: one ``ReaderHub``; the seed: its polling generator). Each chunk carries its send
time (``time.time_ns()``); the reader records receipt minus send for every chunk.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..core import Context, Figure, Result, Target, scenario
from ..procs import Child
from ..server import round_trip
from .common import cleanup, run_ids
from .sides import (
    delay_ms,
    hub_readers,
    project_producer,
    received_percent,
    run_pair,
    seed_producer,
    seed_readers,
)

NAME = "latency"
GRACE = 5.0


@scenario(NAME, "Latency: write call to reader receipt, one reader per run")
def run(ctx: Context) -> Result:
    runs, rate, seconds = 20, 100, ctx.size(1.5, 10.0)
    repeats = ctx.size(1, 3)
    result = Result(NAME, params={"runs": runs, "chunks_per_second_per_run": rate,
                                  "seconds": seconds, "reader": "ReaderHub, 1 connection",
                                  "project_repeats": repeats,
                                  "figure": "project: median over the repeats of each "
                                            "percentile (a busy neighbour spoils one repeat, "
                                            "not the figure); seed: one run"})
    projects = [_measure_project(ctx.redis_url, runs, rate, seconds) for _ in range(repeats)]
    seed = _measure_seed(ctx, runs, rate, seconds) if ctx.seed else None
    cluster_url = ctx.cluster_url()  # the same producer and hub, the store a Redis Cluster
    clusters = [_measure_project(cluster_url, runs, rate, seconds)
                for _ in range(repeats)] if cluster_url else []
    floor = ctx.ceiling("round_trip", lambda: round_trip(ctx.redis_url, ctx.size(5000, 20000)))
    source = f"{floor['source']}: one XADD round trip, one client"
    for q, limit in ((50, 2.0), (99, 10.0)):
        each = [delay_ms(project, q) for project in projects]
        result.params[f"project p{q} of each repeat, ms"] = each
        on_cluster = [delay_ms(cluster, q) for cluster in clusters]
        if clusters:
            result.params[f"cluster p{q} of each repeat, ms"] = on_cluster
        result.add(Figure(f"p{q} write to receipt", "ms", "lower", statistics.median(each),
                          delay_ms(seed, q) if seed else ctx.seed_missing,
                          ceiling=floor[f"p{q}_ms"], ceiling_source=source,
                          target=Target(limit=limit),
                          cluster=statistics.median(on_cluster) if clusters else None))
    result.add(Figure("chunks received", "%", "higher",
                      min(received_percent(project) for project in projects),
                      received_percent(seed) if seed else ctx.seed_missing,
                      target=Target(limit=100),
                      cluster=min((received_percent(c) for c in clusters), default=None)))
    cleanup(ctx.redis_url, NAME)
    if cluster_url:
        cleanup(cluster_url, NAME)
    return result


def _measure_project(url: str, runs: int, rate: int, seconds: float) -> dict[str, Any]:
    ids = run_ids(NAME, runs, "p")
    producer = Child(project_producer, url, ids, rate, seconds, {},
                     name="latency-project-producer")
    produced, read = run_pair(producer, lambda: Child(
        hub_readers, url, ids, {}, 1, GRACE, name="latency-project-readers"),
        ids, seconds, GRACE)
    return {"sent": sum(produced["sent"]), **read}


def _measure_seed(ctx: Context, runs: int, rate: int, seconds: float) -> dict[str, Any]:
    ids = run_ids(NAME, runs, "s")
    producer = Child(seed_producer, ctx.redis_url, ctx.seed_path, ids, rate, seconds,
                     name="latency-seed-producer")
    produced, read = run_pair(producer, lambda: Child(
        seed_readers, ctx.redis_url, ctx.seed_path, ids, GRACE, name="latency-seed-readers"),
        ids, seconds, GRACE)
    return {"sent": sum(produced["sent"]), **read}

