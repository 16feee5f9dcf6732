"""One run, many readers: N readers in one process follow the same live run at 10 chunks/s.

A shared live generation watched by many clients: a producer process writes one run at
``RATE`` chunks/s; one reader process holds N readers of that run (the project: one
``ReaderHub``; the seed: N polling generators, on a waiting pool of the hub's size). Every
reader must get every chunk: N x ``RATE`` deliveries/s. The seed is measured at a smaller N,
the two sides taking turns, then the project alone at N.
"""

from __future__ import annotations

from typing import Any

from ..core import Context, Result, scenario
from ..procs import Child
from .common import run_ids
from .sides import (
    hub_readers,
    hub_rows,
    project_producer,
    run_pair,
    seed_producer,
    seed_readers,
)

NAME = "shared-run"
RATE = 10.0
GRACE = 5.0


@scenario(NAME, "Hub: N readers of one run in one process, 10 chunks/s")
def run(ctx: Context) -> Result:
    n, seed_n = ctx.size(200, 10_000), ctx.size(100, 1000)
    seconds, repeats = ctx.size(1.5, 10.0), ctx.size(1, 2)
    result = Result(NAME, params={
        "readers": n, "seed_readers": seed_n, "seconds": seconds,
        "chunks_per_second": RATE, "deliveries_per_second": n * RATE, "repeats": repeats,
        "order": "project and seed take turns at the seed's N",
        "figure": "percentiles over every sample of every repeat"})
    hub_rows(ctx, result, NAME, 50.0, n, seed_n, repeats,
             lambda readers, side: _measure(ctx, readers, seconds, side), "n/a (not measured)")
    return result


def _measure(ctx: Context, n: int, seconds: float, side: str) -> dict[str, Any]:
    ids = run_ids(NAME, 1, side)
    if side == "p":
        producer = Child(project_producer, ctx.redis_url, ids, RATE, seconds, {},
                         name="shared-run-project-producer")
        make = lambda: Child(hub_readers, ctx.redis_url, ids, {}, 1, GRACE, n,  # noqa: E731
                             name="shared-run-project-readers")
    else:
        producer = Child(seed_producer, ctx.redis_url, ctx.seed_path, ids, RATE, seconds,
                         name="shared-run-seed-producer")
        make = lambda: Child(seed_readers, ctx.redis_url, ctx.seed_path, ids, GRACE,  # noqa: E731
                             n, name="shared-run-seed-readers")
    produced, read = run_pair(producer, make, ids, seconds, GRACE)
    return {**read, "sent": sum(produced["sent"]) * n}
