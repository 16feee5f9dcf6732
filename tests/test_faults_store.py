"""Faults of the store itself, at the library level: restarts, full memory, stalled networks."""

import asyncio
import json
import time

import pytest
import redis

from streaming import (
    BufferFullError,
    ReaderHub,
    StoreUnavailableError,
    StreamGoneError,
    StreamWriter,
    Terminal,
    read_events,
)
from streaming.client import sync_client
from tests.proxy import Proxy, port_of
from tests.waiting import wait_for

pytestmark = pytest.mark.fault


def test_server_restarted_empty_is_reported_to_the_writer(private_server, settings, run_id):
    """Case 5: the writer reports the loss; it never renumbers a run from 1 silently."""
    local = settings.replace(redis_url=private_server.url)
    writer = StreamWriter(local).start()
    try:
        run = writer.open(run_id)
        run.send("before")
        run.flush()
        private_server.restart()
        run.send("after")
        with pytest.raises(StreamGoneError, match="missing"):
            run.flush(timeout=15)
        client = sync_client(local)
        assert client.exists(f"sse:run:{run_id}") == 0  # nothing written under a new numbering
    finally:
        writer.stop(timeout=2)


def test_a_store_back_from_a_long_outage_without_its_scripts_is_written_soon(
        private_server, settings, run_id):
    """Case 23: the store is away long enough for the writer's retries to wait their longest,
    and comes back without its scripts (as after a restart with its data). The first flush
    that reaches it is refused (``NOSCRIPT``); the writer loads the scripts and sends it again
    after the shortest wait, not the outage's longest (2 s): in the soak that wait ran into
    the next outage, and the run's lease lapsed while its writer lived."""
    proxy = Proxy(private_server.port)
    writer = StreamWriter(settings.replace(redis_url=proxy.url)).start()
    try:
        run = writer.open(run_id)
        run.send("before")
        run.flush()
        proxy.set_refuse(True)
        run.send("during")
        time.sleep(4.5)  # retries 0.1, 0.2, 0.4, 0.8, 1.6 s apart, then 2 s
        sync_client(settings.replace(redis_url=private_server.url)).script_flush()
        reached = proxy.accepted
        proxy.set_refuse(False)
        while proxy.accepted == reached:
            time.sleep(0.005)
        back = time.monotonic()
        run.flush(timeout=10)
        took = time.monotonic() - back
        print(f"stored {took * 1000:.0f} ms after the writer reached the store again")
        assert took < 1.0, "the writer waited the outage's longest wait once more"
    finally:
        writer.stop(timeout=2)
        proxy.close()


@pytest.mark.parametrize("call", ["a flush", "a lease refresh"])
def test_scripts_that_fail_to_load_are_loaded_again(private_server, settings, run_id,
                                                   monkeypatch, call):
    """The store answers ``NOSCRIPT`` to the writer's flush or lease refresh, and the
    connection fails while the writer loads its scripts: the writer retries, as for any
    outage, and the run goes on (before, the error left the flush loop and failed the
    writer's every run)."""
    local = settings.replace(redis_url=private_server.url)
    writer = StreamWriter(local).start()
    load = writer._load_scripts
    failures = []

    async def load_once_failing():
        if not failures:
            failures.append(1)
            raise redis.ConnectionError("lost while loading the scripts")
        await load()

    try:
        run = writer.open(run_id)
        run.send("before")
        run.flush()
        monkeypatch.setattr(writer, "_load_scripts", load_once_failing)
        sync_client(local).script_flush()
        if call == "a lease refresh":  # the run is quiet: refreshed every lease_ttl / 3
            wait_for(lambda: failures, 10, "a lease refresh answered NOSCRIPT")
        run.send("after")
        run.finish(timeout=10)
        assert failures and writer.running
        events = list(read_events(sync_client(local), run_id, local))
        assert [e.data for e in events if e.terminal is None] == ["before", "after"]
    finally:
        writer.stop(timeout=2)


def test_full_memory_fails_writes_within_the_bound(private_server, settings, run_id):
    """Case 13: maxmemory with noeviction; the buffer stays bounded, the producer hears, the
    run ends with an error, and every chunk that was accepted is stored."""
    local = settings.replace(redis_url=private_server.url, max_buffer_bytes=64 * 1024,
                             buffer_timeout=0.2, unavailable_timeout=2.0)
    admin = sync_client(local)
    writer = StreamWriter(local).start()
    try:
        run = writer.open(run_id)
        run.send("fits")
        run.flush()
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] + 128 * 1024)
        accepted, full = 1, 0
        deadline = time.monotonic() + 30
        with pytest.raises(StoreUnavailableError, match=r"out of memory|maxmemory"):
            while time.monotonic() < deadline:
                try:
                    run.send(f"{accepted:06}" + "x" * 994)
                    accepted += 1
                except BufferFullError:
                    full += 1
                assert writer.stats().buffered_bytes <= 64 * 1024
        assert full > 0
        admin.config_set("maxmemory", 0)
        run.finish(Terminal.ERROR, "the store was full", timeout=15)
        events = list(read_events(sync_client(local, reader=True), run_id, local))
    finally:
        writer.stop(timeout=2)
    assert [e.data[:6] for e in events[1:-1]] == [f"{i:06}" for i in range(1, accepted)]
    assert events[-1].terminal is Terminal.ERROR


async def test_a_stalled_connection_is_detected_and_the_hub_resumes(settings, redis_url, writer,
                                                                     run_id):
    """Case 14: the API is cut off during blocking reads; it notices, reconnects, resumes."""
    port = port_of(redis_url)
    proxy = Proxy(port)
    reading = settings.replace(redis_url=proxy.url, block_timeout=1.0, socket_timeout=1.0,
                               liveness_interval=30, producer_timeout=60)
    run = await asyncio.to_thread(writer.open, run_id)
    run.send("0")
    await run.aflush()
    try:
        async with ReaderHub(reading) as hub:
            seen = []

            async def consume():
                async for event in hub.read(run_id):
                    seen.append(event)

            task = asyncio.create_task(consume())
            while not seen:
                await asyncio.sleep(0.05)
            proxy.stall.set()
            for i in range(1, 50):
                run.send(str(i))
            await run.aflush()
            await asyncio.sleep(3.0)  # longer than block + socket timeouts: the stall is noticed
            proxy.stall.clear()
            proxy.cut()
            await run.afinish()
            await asyncio.wait_for(task, 20)
    finally:
        proxy.close()
    assert [e.seq for e in seen] == list(range(1, 52))
    assert [e.data for e in seen[:-1]] == [str(i) for i in range(50)]


async def test_server_restarted_empty_ends_hub_readers_with_lost(private_server, settings, run_id):
    """Case 5, the web side: a hub reader ends with an explicit ``lost``, not a hang; the
    writer refuses to renumber the run on the empty server."""
    local = settings.replace(redis_url=private_server.url)
    writer = StreamWriter(local).start()
    try:
        run = await asyncio.to_thread(writer.open, run_id)
        run.send("a")
        run.send("b")
        await run.aflush()
        async with ReaderHub(local) as hub:
            seen = []

            async def consume():
                async for event in hub.read(run_id):
                    seen.append(event)

            task = asyncio.create_task(consume())
            await asyncio.wait_for(_until(lambda: len(seen) == 2), 5)
            await asyncio.to_thread(private_server.restart)
            await asyncio.wait_for(task, 15)
        with pytest.raises(StreamGoneError):  # at once, or from its flush
            run.send("c")
            await run.aflush(timeout=15)
    finally:
        writer.stop(timeout=2)
    assert [e.seq for e in seen] == [1, 2, None]
    assert seen[-1].terminal is Terminal.LOST and "vanished" in seen[-1].data
    assert sync_client(local).exists(f"sse:run:{run_id}") == 0


async def test_a_cursor_older_than_the_trimmed_history_gets_a_gap_from_the_hub(settings, run_id):
    """Case 6, the web side: the gap event names the missing range, then the stored rest."""
    writer = StreamWriter(settings.replace(max_stream_length=100)).start()
    try:
        run = writer.open(run_id)
        for i in range(1000):
            run.send(str(i))
        run.finish()
    finally:
        writer.stop()
    first = int(sync_client(settings).xrange(f"sse:run:{run_id}", count=1)[0][1]["seq_id"])
    assert first > 6
    async with ReaderHub(settings) as hub:
        events = [e async for e in hub.read(run_id, starting_after=5)]
    assert events[0].event == "gap" and events[0].seq is None and events[0].terminal is None
    assert json.loads(events[0].data)["gap"] == {
        "first": 6, "last": first - 1, "message": f"chunks 6..{first - 1} are no longer stored"}
    assert [e.seq for e in events[1:]] == list(range(first, 1002))
    assert [e.data for e in events[1:-1]] == [str(i) for i in range(first - 1, 1000)]


async def _until(condition, step=0.02):
    while not condition():
        await asyncio.sleep(step)
