"""Faults of the store itself, at the library level: restarts, full memory, stalled networks."""

import asyncio
import time

import pytest

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
from tests.proxy import Proxy

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
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
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
