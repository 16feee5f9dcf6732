"""Latency: from the write call to the reader's receipt, one reader per run.

A producer process writes ``rate`` chunks/s to each run; a reader process follows every run
(the project: one ``ReaderHub``; the seed: its polling generator). Each chunk carries its send
time (``time.time_ns()``); the reader records receipt minus send for every chunk. The project
is measured again with doorbells off (``STREAMING_DOORBELL=false``: one blocking ``XREAD``
over every run, one round trip less per chunk); the three take turns.
"""

from __future__ import annotations

from typing import Any

from ..core import Context, Figure, Result, Target, scenario
from ..procs import Child
from ..server import round_trip
from .common import cleanup, run_ids
from .sides import (
    alternated,
    delay_ms,
    hub_readers,
    pooled,
    project_producer,
    received_percent,
    run_pair,
    seed_producer,
    seed_readers,
)

NAME = "latency"
GRACE = 5.0
NO_DOORBELL = {"doorbell": False}


@scenario(NAME, "Latency: write call to reader receipt, one reader per run")
def run(ctx: Context) -> Result:
    runs, rate, seconds = 20, 100, ctx.size(1.5, 10.0)
    repeats = ctx.size(1, 3)
    result = Result(NAME, params={"runs": runs, "chunks_per_second_per_run": rate,
                                  "seconds": seconds, "reader": "ReaderHub, 1 connection",
                                  "repeats": repeats,
                                  "order": "project, project without doorbells and seed take "
                                           "turns",
                                  "figure": "percentiles over every sample of every repeat"})
    sides = {"p": lambda: _measure_project(ctx.redis_url, runs, rate, seconds),
             "d": lambda: _measure_project(ctx.redis_url, runs, rate, seconds, NO_DOORBELL)}
    if ctx.seed:
        sides["s"] = lambda: _measure_seed(ctx, runs, rate, seconds)
    found = alternated(sides, repeats)
    project, seed = found["p"], found.get("s")
    cluster_url = ctx.cluster_url()  # the same producer and hub, the store a Redis Cluster
    cluster = pooled([_measure_project(cluster_url, runs, rate, seconds)
                      for _ in range(repeats)]) if cluster_url else None
    floor = ctx.ceiling("round_trip", lambda: round_trip(ctx.redis_url, ctx.size(5000, 20000)))
    source = f"{floor['source']}: one XADD round trip, one client"
    for q, limit in ((50, 0.5), (99, 2.0)):
        result.add(Figure(f"p{q} write to receipt", "ms", "lower", delay_ms(project, q),
                          delay_ms(seed, q) if seed else ctx.seed_missing,
                          ceiling=floor[f"p{q}_ms"], ceiling_source=source,
                          target=Target(limit=limit),
                          cluster=delay_ms(cluster, q) if cluster else None))
    for q in (50, 99):
        result.add(Figure(f"p{q} write to receipt, doorbells off (STREAMING_DOORBELL=false)",
                          "ms", "lower", delay_ms(found["d"], q), "-"))
    result.add(Figure("chunks received", "%", "higher",
                      min(received_percent(side) for side in (project, found["d"])),
                      received_percent(seed) if seed else ctx.seed_missing,
                      target=Target(limit=100),
                      cluster=received_percent(cluster) if cluster else None))
    for name, side in (("project", project), ("doorbells off", found["d"]), ("seed", seed),
                       ("cluster", cluster)):
        if side:
            result.params[f"{name}: p99 of each repeat, ms"] = side["each_p99_ms"]
    result.notes.append("doorbells off: the hub follows every run with one blocking XREAD, "
                        "which returns as the entry is written; with doorbells a flush rings "
                        "and the hub then reads what rang (one round trip more), which is what "
                        "keeps a round's cost to the runs that changed at thousands of runs")
    cleanup(ctx.redis_url, NAME)
    if cluster_url:
        cleanup(cluster_url, NAME)
    return result


def _measure_project(url: str, runs: int, rate: int, seconds: float,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    ids = run_ids(NAME, runs, "p")
    producer = Child(project_producer, url, ids, rate, seconds, overrides or {},
                     name="latency-project-producer")
    produced, read = run_pair(producer, lambda: Child(
        hub_readers, url, ids, overrides or {}, 1, GRACE, name="latency-project-readers"),
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

