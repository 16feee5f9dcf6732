"""The hub: many concurrent readers in one process, each on its own run, every run live.

A producer process writes one chunk a second to each of N runs (round robin, evenly spread);
one reader process follows all N runs (the project: one ``ReaderHub`` on one event loop; the
seed: one polling generator per run). Delivery delay is receipt minus send time, per chunk.
The seed cannot poll 10,000 runs from one process (100,000 ``XRANGE``/s): both designs are
measured at a smaller N (1,000), taking turns, then the project alone at 10,000. The seed's
readers get a waiting pool of the hub's size (``common.seed_client``).
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

NAME = "fan-out"
RATE = 1.0
GRACE = 5.0
#: The producer sends the chunks due in each 10 ms back to back: pacing 10,000 chunks/s one
#: by one would cost the producer more CPU than the readers (two cores for all of it).
TICK = 0.01


@scenario(NAME, "Hub: N concurrent readers in one process, each run 1 chunk/s")
def run(ctx: Context) -> Result:
    n, seed_n = ctx.size(500, 10_000), ctx.size(200, 1000)
    seconds, repeats = ctx.size(1.5, 10.0), ctx.size(1, 2)
    result = Result(NAME, params={"readers": n, "seed_readers": seed_n, "seconds": seconds,
                                  "chunks_per_second_per_run": RATE, "producer_tick": TICK,
                                  "repeats": repeats,
                                  "order": "project and seed take turns at the seed's N",
                                  "figure": "percentiles over every sample of every repeat",
                                  "reader": "ReaderHub, 1 blocking connection"})
    if ctx.seed:
        result.notes.append(f"seed at N={n:,}: not practical, its readers would send "
                            f"{n / 0.1:,.0f} XRANGE/s from one process")
    # Both designs at the N the seed can manage, then the project alone at N.
    hub_rows(ctx, result, NAME, 20.0, n, seed_n, repeats,
             lambda readers, side: _measure(ctx, readers, seconds, side), "n/a (not practical)")
    return result


def _measure(ctx: Context, n: int, seconds: float, side: str) -> dict[str, Any]:
    ids = run_ids(NAME, n, side)
    if side == "p":
        producer = Child(project_producer, ctx.redis_url, ids, RATE, seconds, {}, TICK,
                         name="fan-out-project-producer")
        make = lambda: Child(hub_readers, ctx.redis_url, ids, {}, 1, GRACE,  # noqa: E731
                             name="fan-out-project-readers")
    else:
        producer = Child(seed_producer, ctx.redis_url, ctx.seed_path, ids, RATE, seconds, TICK,
                         name="fan-out-seed-producer")
        make = lambda: Child(seed_readers, ctx.redis_url, ctx.seed_path, ids, GRACE,  # noqa: E731
                             name="fan-out-seed-readers")
    produced, read = run_pair(producer, make, ids, seconds, GRACE)
    return {"sent": sum(produced["sent"]), **read}

