"""The single server's doorbell hub (``streaming.doorbell``): a round reads only the runs that
rang, a lost pubsub connection loses nothing, and runs no doorbell announces (the seed's) are
still followed by the blocking read."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from streaming import doorbell as doorbell_module
from streaming.client import round_trip, sync_client
from streaming.control import end_run
from streaming.cursor import xread_raw
from streaming.doorbell import DoorbellFollower
from streaming.hub import ReaderHub
from streaming.settings import Settings
from streaming.wire import Terminal
from streaming.writer import StreamWriter


@pytest.fixture
def quiet(settings: Settings) -> Settings:
    """No liveness check and no lease expiry in a test's time: only a doorbell delivers."""
    return settings.replace(lease_ttl=60.0, liveness_interval=120.0, producer_timeout=60.0)


@pytest.fixture
def slow_writer(quiet: Settings) -> Iterator[StreamWriter]:
    writer = StreamWriter(quiet).start()
    yield writer
    writer.stop(timeout=5)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """``tests.waiting.wait_for`` on an event loop (which the hub shares)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        await asyncio.sleep(0.05)


async def collect(hub: ReaderHub, run_id: str, out: list[Any]) -> None:
    async for event in hub.read(run_id, starting_after=0):
        out.append(event)


async def test_a_round_reads_only_the_runs_that_rang(quiet: Settings, slow_writer: StreamWriter,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    writer = slow_writer
    tag = uuid.uuid4().hex[:8]
    idle = [await writer.aopen(f"quiet-{tag}-{i}") for i in range(200)]
    busy = await writer.aopen(f"busy-{tag}")
    async with ReaderHub(quiet) as hub:
        doorbell = hub._doorbell
        assert isinstance(doorbell, DoorbellFollower)
        got: list[Any] = []
        tasks = [asyncio.create_task(collect(hub, q.run_id, [])) for q in idle]
        tasks.append(asyncio.create_task(collect(hub, busy.run_id, got)))
        await until(lambda: hub.stats()["following"] == 201, 30, "readers following")
        await asyncio.sleep(0.5)  # the first reads of every run (join, confirmation) are over
        sizes: list[int] = []
        real_round_trip = doorbell_module.round_trip

        async def round_trip(conn: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
            [(name, _, _, _, *streams)] = commands  # XREAD COUNT n STREAMS keys... ids...
            assert name == "XREAD"
            sizes.append(len(streams) // 2)
            return await real_round_trip(conn, commands)

        monkeypatch.setattr(doorbell_module, "round_trip", round_trip)
        for i in range(20):
            await busy.asend(f"chunk {i}")
            await asyncio.sleep(0.01)
        await busy.afinish()
        await asyncio.wait_for(tasks[-1], 3)  # a liveness check would come later
        assert [e.data for e in got] == [f"chunk {i}" for i in range(20)] + ["[DONE]"]
        assert sizes and max(sizes) == 1, sizes  # not the 201 followed streams
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for q in idle:
        await q.afinish()


async def test_a_killed_doorbell_connection_loses_nothing(quiet: Settings,
                                                          slow_writer: StreamWriter,
                                                          redis_client: redis.Redis) -> None:
    run = await slow_writer.aopen(f"killed-{uuid.uuid4().hex}")
    async with ReaderHub(quiet) as hub:
        got: list[Any] = []
        task = asyncio.create_task(collect(hub, run.run_id, got))
        for i in range(10):
            await run.asend(f"before {i}")
        await until(lambda: len(got) == 10, 30, "the first chunks")
        killed = redis_client.client_kill_filter(_type="pubsub")
        assert killed >= 1
        for i in range(10):
            await run.asend(f"after {i}")
            await asyncio.sleep(0.02)
        await run.afinish()
        await asyncio.wait_for(task, 3)  # a liveness check would come later
    assert [e.seq for e in got] == list(range(1, 22))
    assert [e.data for e in got][-1] == "[DONE]"


async def test_a_run_without_doorbell_is_followed_by_the_blocking_read(
        settings: Settings, redis_client: redis.Redis) -> None:
    run_id = f"seedlike-{uuid.uuid4().hex}"
    key = f"sse:run:{run_id}"
    redis_client.xadd(key, {"seq_id": 1, "data": "data: one\n\n", "timestamp": 0})
    async with ReaderHub(settings) as hub:
        got: list[Any] = []
        task = asyncio.create_task(collect(hub, run_id, got))
        await until(lambda: len(got) == 1, 30, "the first entry")
        assert hub._doorbell is not None and not hub._doorbell.subs
        redis_client.xadd(key, {"seq_id": 2, "data": "data: [DONE]\n\n", "timestamp": 0,
                                "complete": "true"})
        await asyncio.wait_for(task, 30)
    assert [e.data for e in got] == ["one", "[DONE]"]
    redis_client.delete(key)


async def test_an_ending_stored_by_someone_else_rings_the_doorbell(
        quiet: Settings, slow_writer: StreamWriter, redis_client: redis.Redis) -> None:
    """An operator's (or a sweep's) ``END`` over a live, quiet run: the hub's reader gets the
    ending at once, not at the next liveness check (two minutes away here)."""
    run = await slow_writer.aopen(f"ended-{uuid.uuid4().hex}")
    await run.asend("one")
    async with ReaderHub(quiet) as hub:
        got: list[Any] = []
        task = asyncio.create_task(collect(hub, run.run_id, got))
        await until(lambda: len(got) == 1 and hub.stats()["following"] == 1, 30,
                    "the first chunk, then following")
        admin = sync_client(quiet)
        try:
            assert end_run(admin, run.run_id, quiet, Terminal.CANCELLED, "by hand",
                           when="always") is Terminal.CANCELLED
        finally:
            admin.close()
        await asyncio.wait_for(task, 3)
    assert [e.terminal for e in got] == [None, Terminal.CANCELLED]
    assert got[0].data == "one"


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_raw_xread_reply_reads_the_same_in_either_protocol(settings: Settings,
                                                                   protocol: int) -> None:
    """The doorbell's reads take ``XREAD``'s raw reply (no redis-py callback): RESP2 answers
    a list of [key, entries], RESP3 a map of key to entries."""
    client = aredis.Redis.from_url(settings.redis_url, protocol=protocol, decode_responses=True)
    key = f"sse:run:raw-{uuid.uuid4().hex}"
    try:
        await client.xadd(key, {"seq_id": "1", "data": "one"}, id="0-1")
        await client.xadd(key, {"seq_id": "2", "data": "two"}, id="0-2")
        conn = await client.connection_pool.get_connection()
        [answer] = await round_trip(conn, [("XREAD", "COUNT", 10, "STREAMS", key, "0-0")])
        await client.connection_pool.release(conn)
        assert xread_raw(answer) == [(key, [("0-1", {"seq_id": "1", "data": "one"}),
                                            ("0-2", {"seq_id": "2", "data": "two"})])]
    finally:
        await client.delete(key)
        await client.aclose()
