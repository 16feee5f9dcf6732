"""The shared hub under many readers at once and readers that stop reading (case 15, the
library side; the HTTP side runs against the real app in ``tests/web``)."""

import asyncio

import pytest

from streaming import ReaderHub, StreamWriter, Terminal
from streaming.client import sync_client
from tests.monitor import Monitor

pytestmark = pytest.mark.fault


async def test_a_burst_of_readers_waits_for_connections_instead_of_failing(
        private_server, settings, run_id):
    """300 readers join at once: each is served, over a bounded number of connections.
    (redis-py's default pool refused every command past its 100th in flight.)"""
    local = settings.replace(redis_url=private_server.url)
    writer = StreamWriter(local).start()
    try:
        run = writer.open(run_id)
        for i in range(5):
            run.send(str(i))
        run.finish()
    finally:
        writer.stop()
    admin = sync_client(local)
    async with ReaderHub(local) as hub:
        results = await asyncio.wait_for(asyncio.gather(
            *[_collect(hub, run_id) for _ in range(300)]), 30)
        connections = len(admin.client_list())
    assert all([e.seq for e in events] == [1, 2, 3, 4, 5, 6] for events in results)
    assert all(events[-1].terminal is Terminal.DONE for events in results)
    assert connections <= 16 + 2  # the pool, the blocking read's connection, this client


async def test_a_reader_that_stops_reading_holds_at_most_reader_queue_entries(
        private_server, settings, run_id):
    local = settings.replace(redis_url=private_server.url, reader_queue=10)
    writer = StreamWriter(local).start()
    monitor = Monitor(private_server.url)
    try:
        run = writer.open(run_id)
        for i in range(100):
            run.send(str(i))
        run.finish()
        async with ReaderHub(local) as hub:
            start = await asyncio.to_thread(monitor.mark)
            stalled = aiter(hub.read(run_id))
            assert (await anext(stalled)).seq == 1
            commands = await asyncio.to_thread(monitor.since, start)
            rest = [event async for event in stalled]
    finally:
        writer.stop()
        monitor.close()
    reads = [c for c in commands if c[0].upper() == "XRANGE"]  # the catch-up reads
    assert reads and all(c[c.index("COUNT") + 1] == "10" for c in reads), reads
    assert [e.seq for e in rest] == list(range(2, 102))


async def _collect(hub, run_id):
    return [event async for event in hub.read(run_id)]
