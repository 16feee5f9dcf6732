"""Time to first chunk: from ``Runs.start`` to the run's first chunk readable, through a warm
prefork Celery worker, beside Celery's own dispatch time for a trivial task.

The harness starts ``celery -A worker worker -P prefork -c 2`` against its server, waits until
the worker answers a ping, and warms it with a few runs and pings. Then, one at a time:

- a run: ``Runs.start("demo", {...high rate...})``, then a blocking read of the run
  (``streaming.reader.read_events``) in this process until its first chunk; the time is from
  the call to that chunk. The reader is then drained to the run's end (bounded) so the next
  run finds an idle pool;
- a trivial task: ``send_task("celery.accumulate", args=(1,))`` (a builtin that returns its
  argument; this Celery has no ``celery.ping`` task) on the runs' queue and ``.get()`` on its
  result: the path a run takes (broker, a pool process, a reply through the server), minus
  our code.

The figure held to the target is the overhead of each run over the trivial task sent right
after it (the two alternate, one at a time, so each pair shares the machine's moment): the
percentiles of those paired differences, not a difference of two percentiles.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from redis.exceptions import RedisError

from streaming.client import sync_client
from streaming.reader import read_events
from tasks.api import Runs
from worker.config import WorkerConfig

from ..core import Context, Figure, Result, Target, scenario
from ..stats import percentile, summary
from .common import cleanup, run_ids
from .tiers import ServiceError, services, start_worker

NAME = "first-chunk"
TEXT = "The quick brown fox jumps over the lazy dog. " * 4
CHUNK_SIZE = 8
RATE = 100_000.0  # the generator's highest rate: its own pacing adds ~nothing
WARM = 4
PING_TIMEOUT = 30.0
RESULT_TIMEOUT = 10.0
DRAIN_TIMEOUT = 10.0


@scenario(NAME, "Time to first chunk through a prefork Celery worker")
def run(ctx: Context) -> Result:
    n = ctx.size(5, 50)
    result = Result(NAME, params={
        "runs": n, "warm_up": f"{WARM} runs and {WARM} pings",
        "worker": "celery -A worker worker -P prefork -c 2 (--without-mingle --without-gossip)",
        "run": {"generator": "demo", "chars": len(TEXT), "chunk_size": CHUNK_SIZE,
                "rate": RATE},
        "first chunk": "Runs.start() call to the first chunk from a blocking read_events() "
                       "in the harness process",
        "dispatch": "send_task('celery.accumulate', args=(1,)) on the runs' queue to its "
                    "result from .get() (Redis result backend)",
        "order": "run and ping alternate, one at a time"})
    try:
        firsts, pings, ends = _measure(ctx, n)
    finally:
        cleanup(ctx.redis_url, NAME)
    result.params["first_chunk_ms"] = summary(firsts)
    result.params["celery_dispatch_ms"] = summary(pings)
    result.params["run endings"] = ends
    seed = "n/a (the seed has no Celery tier)"
    overheads = [first - ping for first, ping in zip(firsts, pings, strict=True)]
    result.params["overhead_ms"] = summary(overheads)
    for q in (50, 99):
        result.add(Figure(f"p{q} time to first chunk", "ms", "lower", percentile(firsts, q),
                          seed))
        result.add(Figure(f"p{q} Celery dispatch (trivial task)", "ms", "lower",
                          percentile(pings, q), seed))
        result.add(Figure(f"p{q} first chunk above Celery dispatch", "ms", "lower",
                          percentile(overheads, q), seed, target=Target(limit=20.0),
                          note="of each run minus the task sent after it"))
    result.notes.append("seed: n/a, it has no Celery tier (the seed's writer is called by the "
                        "app itself)")
    return result


def _measure(ctx: Context, n: int) -> tuple[list[float], list[float], dict[str, int]]:
    config = WorkerConfig.from_env({"REDIS_URL": ctx.redis_url})
    runs = Runs.from_config(config)
    reader = sync_client(config.streaming, reader=True)
    ids = run_ids(NAME, WARM + n, "p")
    firsts: list[float] = []
    pings: list[float] = []
    ends: dict[str, int] = {}
    tasks = list(ids)  # Celery task ids: their results are deleted at the end
    try:
        with services(ctx.redis_url) as started:
            start_worker(started)
            _wait_ping(runs, started)
            for i, run_id in enumerate(ids):
                started.check()
                first, ending = _first_chunk(runs, reader, config, run_id)
                ping = _ping(runs, tasks)
                if i >= WARM:
                    firsts.append(first)
                    pings.append(ping)
                    ends[ending] = ends.get(ending, 0) + 1
    finally:
        with contextlib.suppress(RedisError):
            runs.client.delete(*(f"celery-task-meta-{task}" for task in tasks))
        reader.close()
        runs.client.close()
        runs.celery.close()
    return firsts, pings, ends


def _wait_ping(runs: Runs, started: Any) -> None:
    deadline = time.monotonic() + PING_TIMEOUT
    while not runs.celery.control.ping(timeout=1.0):
        started.check()
        if time.monotonic() > deadline:
            raise ServiceError(f"the worker did not answer a ping within {PING_TIMEOUT} s")


def _first_chunk(runs: Runs, reader: Any, config: WorkerConfig,
                 run_id: str) -> tuple[float, str]:
    """ms from ``Runs.start`` to the first chunk, and how the run ended (drained, bounded)."""
    began = time.perf_counter()
    runs.start("demo", {"text": TEXT, "rate": RATE, "chunk_size": CHUNK_SIZE}, run_id=run_id)
    events = iter(read_events(reader, run_id, config.streaming, starting_after=0))
    first = None
    deadline = time.monotonic() + DRAIN_TIMEOUT
    for event in events:
        if first is None and event.seq is not None and event.terminal is None:
            first = (time.perf_counter() - began) * 1000
        if event.terminal is not None:
            if first is None:
                raise RuntimeError(f"run {run_id} ended before any chunk: {event.data}")
            return first, str(event.event)
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"run {run_id}: no ending within {DRAIN_TIMEOUT} s")


def _ping(runs: Runs, tasks: list[str]) -> float:
    """ms from sending a trivial task to its result (its id is added to ``tasks``)."""
    began = time.perf_counter()
    sent = runs.celery.send_task("celery.accumulate", args=(1,))
    sent.get(timeout=RESULT_TIMEOUT)
    took = (time.perf_counter() - began) * 1000
    tasks.append(sent.id)
    return took
