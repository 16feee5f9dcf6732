"""Helpers and test-only generators of the Celery-side tests (one module, imported once)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import redis

from streaming.reader import read_events
from streaming.settings import Settings
from streaming.wire import Event as StreamEvent
from tasks.framing import Event
from tasks.registry import Params, RunContext, register


def stream_settings(redis_url: str, **changes: Any) -> Settings:
    """Writer and reader settings for worker tests: short leases, a reader that waits for
    queued runs (producer_timeout) longer than any test needs."""
    values: dict[str, Any] = dict(redis_url=redis_url, lease_ttl=1.0, liveness_interval=0.5,
                                  producer_timeout=15.0, block_timeout=1.0)
    return Settings(**(values | changes))


def read_run(client: redis.Redis, run_id: str, settings: Settings,
             starting_after: int = 0) -> list[StreamEvent]:
    """Every event of the run until its ending (bounded by the reader's producer_timeout)."""
    return list(read_events(client, run_id, settings, starting_after=starting_after))


def texts(events: list[StreamEvent]) -> str:
    return "".join(json.loads(e.data).get("text", "") for e in events
                   if e.terminal is None and e.event == "message")


def shown_text(events: list[StreamEvent]) -> str:
    """The text a client shows under the client rule: a ``restarted`` event whose ``resume``
    is false drops everything received before it; one whose ``resume`` is true keeps it."""
    kept: list[StreamEvent] = []
    for event in events:
        if event.event == "restarted" and not json.loads(event.data).get("resume"):
            kept = []
        kept.append(event)
    return texts(kept)


def restarts(events: list[StreamEvent]) -> list[dict[str, Any]]:
    """The data of every ``restarted`` event."""
    return [json.loads(e.data) for e in events if e.event == "restarted"]


# -- test-only generators (registered in this process only) -------------------------------

#: What the test generators observed, by run id.
observed: dict[str, dict[str, Any]] = {}


class TickParams(Params):
    interval: float = 0.25
    count: int = 1000


@register("test.ticks", TickParams)
def ticks(params: TickParams, context: RunContext) -> Iterator[str]:
    """A sync generator that records whether it was closed."""
    seen = observed.setdefault(context.run_id, {"closed": False})
    try:
        for index in range(params.count):
            yield f"tick {index}"
            time.sleep(params.interval)
    finally:
        seen["closed"] = True


class CountParams(Params):
    count: int = 40
    rate: float = 10.0


@register("test.count", CountParams)
def count(params: CountParams, context: RunContext) -> Iterator[dict[str, Any]]:
    """Not resumable: a later attempt starts over from 0 (``resumed_chunks`` stays 0)."""
    observed.setdefault(context.run_id, {})[context.attempt] = context.resumed_chunks
    for index in range(params.count):
        yield {"text": f"{index},"}
        time.sleep(1 / params.rate)


class FlakyParams(Params):
    fail_attempts: int = 1
    chunks: int = 3


class Flaky(ConnectionError):
    """A transient failure: the task retries it."""


@register("test.flaky", FlakyParams, retry_for=(Flaky,))
def flaky(params: FlakyParams, context: RunContext) -> Iterator[dict[str, Any]]:
    for index in range(params.chunks):
        yield {"attempt": context.attempt, "index": index}
    if context.attempt <= params.fail_attempts:
        raise Flaky(f"attempt {context.attempt} lost its upstream")


class MixedParams(Params):
    bad: bool = False


@register("test.mixed", MixedParams)
async def mixed(params: MixedParams, context: RunContext) -> AsyncIterator[Any]:
    yield "plain text"
    yield {"json": True}
    yield [1, 2]
    yield Event("status", "thinking")
    yield Event("usage", {"tokens": 3})
    yield "two\nlines"
    if params.bad:
        yield 42


class StubbornParams(Params):
    seconds: float = 30.0


@register("test.stubborn", StubbornParams)
def stubborn(params: StubbornParams, context: RunContext) -> Iterator[str]:
    """Ignores the soft time limit: only the hard one (the child is killed) stops it."""
    from celery.exceptions import SoftTimeLimitExceeded

    yield "started"
    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(SoftTimeLimitExceeded):
            time.sleep(max(deadline - time.monotonic(), 0))


class UsurpedParams(Params):
    pass


@register("test.usurped", UsurpedParams)
def usurped(params: UsurpedParams, context: RunContext) -> Iterator[str]:
    """Yields, then a newer attempt takes the run over as if this one's lease had lapsed."""
    from streaming.client import sync_client
    from streaming.wire import RunKeys
    from streaming.writer import StreamWriter

    yield "from the stale attempt"
    time.sleep(0.3)  # its chunk is stored
    settings = context.config.streaming
    client = sync_client(settings)
    client.delete(RunKeys.for_run(context.run_id).lease)  # the lease lapses...
    client.close()
    writer = StreamWriter(settings).start()
    try:
        newer = writer.open(context.run_id)  # ...and a redelivered copy claims the run
        newer.send("from the newer attempt")
        newer.finish()
    finally:
        writer.stop()
    for index in range(20):
        yield f"refused {index}"
        time.sleep(0.05)


class HostileParams(Params):
    kind: str


@register("test.hostile", HostileParams)
def hostile(params: HostileParams, context: RunContext) -> Iterator[Any]:
    """One good chunk, then one a run must refuse: ``kind`` says which."""
    yield "fine"
    bad = {
        "oversized": "x" * (context.config.streaming.max_chunk_bytes + 1),
        "surrogate": "not UTF-8: \udcff",
        "bytes": b"raw bytes",
        "nan": {"value": float("nan")},
        "object": object(),
    }
    yield bad[params.kind]
    observed.setdefault(context.run_id, {})["went_on"] = True
