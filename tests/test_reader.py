"""Readers (the blocking one and the shared hub) against a real server."""

import asyncio
import threading
import time

import pytest

from streaming import (
    InvalidCursor,
    InvalidRunId,
    ReaderError,
    ReaderHub,
    RunClosedError,
    StreamWriter,
    Terminal,
    mark_pending,
    read_events,
    request_cancel,
    run_status,
)
from streaming.client import sync_client
from streaming.wire import RunKeys
from tests.proxy import Proxy, port_of
from tests.waiting import within


@pytest.fixture
def client(settings):
    client = sync_client(settings, reader=True)
    yield client
    client.close()


def write_run(writer, run_id, count, ending=Terminal.DONE):
    run = writer.open(run_id)
    for i in range(count):
        run.send(str(i))
    if ending is not None:
        run.finish(ending, "why")
    else:
        run.flush()
    return run


def test_reads_everything_after_the_cursor_and_stops_at_the_end(writer, client, settings, run_id):
    write_run(writer, run_id, 10)
    events = list(read_events(client, run_id, settings))
    assert [e.seq for e in events] == list(range(1, 12))
    assert [e.data for e in events[:-1]] == [str(i) for i in range(10)]
    assert events[-1].terminal is Terminal.DONE
    tail = read_events(client, run_id, settings, starting_after=8)
    assert [e.seq for e in tail] == [9, 10, 11] and tail.terminal is Terminal.DONE


def test_cursor_at_the_end_yields_nothing_and_reports_the_ending(writer, client, settings, run_id):
    write_run(writer, run_id, 3, Terminal.CANCELLED)
    reader = read_events(client, run_id, settings, starting_after=4)
    assert list(reader) == [] and reader.terminal is Terminal.CANCELLED


def test_cursor_past_the_end_is_refused_at_once(writer, client, settings, run_id):
    write_run(writer, run_id, 3)
    with pytest.raises(InvalidCursor, match="past run"):
        list(read_events(client, run_id, settings, starting_after=99))


@pytest.mark.parametrize("cursor", ["abc", "-1", "$", "1.0", "", "99999999999999999999"])
def test_bad_cursors_fail_before_any_read(client, settings, run_id, cursor):
    with pytest.raises(InvalidCursor):
        read_events(client, run_id, settings, starting_after=cursor)


def test_bad_run_ids_fail_before_any_read(client, settings):
    with pytest.raises(InvalidRunId):
        read_events(client, "x*", settings)


def test_unknown_run_ends_at_once_with_not_found(client, settings, run_id):
    started = time.monotonic()
    events = list(read_events(client, run_id, settings))
    assert [e.terminal for e in events] == [Terminal.NOT_FOUND]
    assert time.monotonic() - started < 2


def stream_key(run_id, settings):
    """The run's stream key (``sse:run:{<id>}`` when the suite runs against a cluster)."""
    return RunKeys.for_run(run_id, hash_tag=settings.cluster_hash_tags).stream


def test_a_key_of_another_type_is_not_a_run(client, redis_client, settings, run_id):
    redis_client.set(stream_key(run_id, settings), "not a stream", ex=60)
    events = list(read_events(client, run_id, settings))
    assert [e.terminal for e in events] == [Terminal.NOT_FOUND]
    assert redis_client.get(stream_key(run_id, settings)) == "not a stream"


def test_a_queued_run_is_waited_for(writer, client, settings, run_id):
    mark_pending(client, run_id, settings)
    assert run_status(client, run_id, settings).state == "pending"
    later = threading.Timer(0.5, write_run, args=(writer, run_id, 2))
    later.start()
    events = list(read_events(client, run_id, settings))
    later.join()
    assert [e.seq for e in events] == [1, 2, 3]


@pytest.mark.fault
def test_a_dead_producer_ends_the_read_with_a_stored_lost(writer, client, settings, run_id):
    """The reader stores the ending (with its seq id) and reads it: a later attempt finds the
    run ended instead of contradicting the reader."""
    run = write_run(writer, run_id, 2, ending=None)
    run.release()  # the producer is gone: no more lease refreshes
    started = time.monotonic()
    events = list(read_events(client, run_id, settings))
    waited = time.monotonic() - started
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[-1].terminal is Terminal.LOST and "producer stopped" in events[-1].data
    assert run_status(client, run_id, settings).terminal is Terminal.LOST
    with pytest.raises(RunClosedError, match="already ended"):
        writer.open(run_id)
    # released: the grace counts from the release (generous: a shared CPU)
    assert waited < settings.producer_timeout + settings.liveness_interval + 5


@pytest.mark.fault
def test_trimmed_history_is_an_explicit_gap(settings, client, redis_client, run_id):
    writer = StreamWriter(settings.replace(max_stream_length=100)).start()
    try:
        write_run(writer, run_id, 1000)
    finally:
        writer.stop()
    first = int(redis_client.xrange(stream_key(run_id, settings), count=1)[0][1]["seq_id"])
    assert first > 1
    events = list(read_events(client, run_id, settings, starting_after=5))
    assert events[0].event == "gap" and events[0].seq is None
    assert f'"first": 6, "last": {first - 1}' in events[0].data
    assert [e.seq for e in events[1:]] == list(range(first, 1002))


def test_status_and_cancel_request(writer, client, settings, run_id):
    run = write_run(writer, run_id, 1, ending=None)
    status = run_status(client, run_id, settings)
    assert (status.state, status.last_seq, status.attempt) == ("live", 1, 1)
    assert request_cancel(client, run_id, settings, "user asked")
    run.send("next")
    run.flush()
    assert run.cancel_requested == "user asked"
    run.finish(Terminal.CANCELLED, "user asked")
    assert run_status(client, run_id, settings).terminal is Terminal.CANCELLED
    assert not request_cancel(client, run_id, settings)
    assert run_status(client, "test-never", settings).state == "missing"


@pytest.mark.fault
def test_server_restarted_empty_ends_readers_with_lost(private_server, settings, run_id):
    local = settings.replace(redis_url=private_server.url)
    writer = StreamWriter(local).start()
    client = sync_client(local, reader=True)
    try:
        write_run(writer, run_id, 2, ending=None)
        events = []
        reader = threading.Thread(
            target=lambda: events.extend(read_events(client, run_id, local)))
        reader.start()
        time.sleep(0.3)
        private_server.restart()
        reader.join(20)
        assert not reader.is_alive()
        assert [e.seq for e in events] == [1, 2, None]
        assert events[-1].terminal is Terminal.LOST and "vanished" in events[-1].data
    finally:
        writer.stop(timeout=1)
        client.close()


# -- the shared hub ----------------------------------------------------------------------------


async def collect(hub, run_id, after=None, limit=None):
    events = []
    async for event in hub.read(run_id, starting_after=after):
        events.append(event)
        if limit is not None and len(events) >= limit:
            break
    return events


async def test_hub_serves_many_readers_from_one_blocking_read(writer, client, settings, run_id):
    mark_pending(client, run_id, settings)
    async with ReaderHub(settings) as hub:
        readers = [asyncio.create_task(collect(hub, run_id)) for _ in range(50)]
        await asyncio.sleep(0.2)
        run = await asyncio.to_thread(writer.open, run_id)
        for i in range(30):
            run.send(str(i))
            await asyncio.sleep(0.002)
        await run.afinish()
        results = await asyncio.wait_for(asyncio.gather(*readers), 10)
        assert hub.stats()["readers"] == 0 and hub.stats()["followed"] == 0
    assert all([e.seq for e in r] == list(range(1, 32)) for r in results)


async def test_a_new_reader_is_followed_at_once_not_after_the_block(writer, settings, run_id):
    slow_block = settings.replace(block_timeout=30, liveness_interval=30)
    run = await asyncio.to_thread(writer.open, run_id)
    async with ReaderHub(slow_block) as hub:
        idle = asyncio.create_task(collect(hub, f"{run_id}-other"))  # keeps the hub blocked
        await asyncio.sleep(0.3)
        joined = asyncio.create_task(collect(hub, run_id, limit=1))
        await asyncio.sleep(0.3)
        run.send("hello")
        events = await asyncio.wait_for(joined, 5)  # far below the 30 s block
        idle.cancel()
    assert events[0].data == "hello"
    await run.afinish()


async def test_a_slow_reader_is_detached_and_catches_up_exactly_once(writer, settings, run_id):
    small = settings.replace(reader_queue=10)
    run = await asyncio.to_thread(writer.open, run_id)
    async with ReaderHub(small) as hub:
        reader = aiter(hub.read(run_id))
        run.send("first")
        first = await asyncio.wait_for(anext(reader), 5)
        for i in range(200):  # the reader does not read meanwhile
            run.send(str(i))
        await run.afinish()
        rest = [event async for event in reader]
    assert first.seq == 1
    assert [e.seq for e in rest] == list(range(2, 203))
    assert [e.data for e in rest[:-1]] == [str(i) for i in range(200)]


async def test_idle_readers_cost_almost_no_commands(private_server, settings):
    local = settings.replace(redis_url=private_server.url, block_timeout=20, liveness_interval=20)
    admin = sync_client(local)
    async with ReaderHub(local) as hub:
        readers = [asyncio.create_task(collect(hub, f"idle-{i}")) for i in range(200)]
        for i in range(200):
            mark_pending(admin, f"idle-{i}", local)
        await asyncio.sleep(1.0)
        before = admin.info("stats")["total_commands_processed"]
        await asyncio.sleep(3.0)
        spent = admin.info("stats")["total_commands_processed"] - before - 1
        for task in readers:
            task.cancel()
    # 200 readers waiting 3 s: at the target of 0.1 command/s each that would be 60.
    assert spent <= 5, spent


async def test_disconnecting_a_reader_detaches_it(writer, settings, run_id):
    run = await asyncio.to_thread(writer.open, run_id)
    async with ReaderHub(settings) as hub:
        task = asyncio.create_task(collect(hub, run_id))
        await asyncio.sleep(0.3)
        assert hub.stats()["followed"] == 1
        task.cancel()
        await asyncio.sleep(0.05)
        assert hub.stats() | {"blocking_reads": 0} == {"readers": 0, "followed": 0,
                                                        "following": 0, "blocking_reads": 0}
    await run.afinish()


async def test_hub_reports_gaps_and_lost_producers_like_the_blocking_reader(writer, settings,
                                                                            run_id):
    run = await asyncio.to_thread(writer.open, run_id)
    run.send("only")
    await run.aflush()
    run.release()
    async with ReaderHub(settings) as hub:
        events = await asyncio.wait_for(collect(hub, run_id), 15)
    assert [e.seq for e in events] == [1, 2]  # the ending is stored, with its seq id
    assert events[-1].terminal is Terminal.LOST


async def test_hundreds_of_readers_joining_at_once_wait_for_connections(writer, settings, run_id):
    """redis-py's default pool fails past 100 connections; the hub's waits for a free one."""
    run = await asyncio.to_thread(writer.open, run_id)
    for i in range(20):
        run.send(str(i))
    await run.aflush()
    async with ReaderHub(settings) as hub:
        readers = [asyncio.create_task(collect(hub, run_id)) for _ in range(300)]
        await asyncio.sleep(0.2)
        await run.afinish()
        results = await asyncio.wait_for(asyncio.gather(*readers), 60)
    assert all([e.seq for e in r] == list(range(1, 22)) for r in results)


@pytest.mark.fault
def test_a_blocking_reader_rides_out_a_store_outage_and_resumes_exactly(writer, settings, run_id):
    """The store unreachable for a while (restarted, a cut network): the reader retries and
    goes on from its position, each chunk once; past ``unavailable_timeout`` it gives up."""
    proxy = Proxy(port_of(settings.redis_url))
    reading = settings.replace(redis_url=proxy.url, unavailable_timeout=20, socket_timeout=1.0,
                               block_timeout=1.0)
    client = sync_client(reading, reader=True)
    run = write_run(writer, run_id, 3, ending=None)
    events = []
    try:
        reader = iter(read_events(client, run_id, reading))
        events += [next(reader) for _ in range(3)]
        rest = threading.Thread(target=lambda: events.extend(reader), daemon=True)
        rest.start()  # waiting in its blocking read
        time.sleep(0.3)
        proxy.set_refuse(True)  # connections cut, new ones refused
        for i in range(3, 6):
            run.send(str(i))
        run.finish()
        time.sleep(2.0)
        proxy.set_refuse(False)
        rest.join(15)
        assert not rest.is_alive()
    finally:
        client.close()
        proxy.close()
    assert [e.seq for e in events] == list(range(1, 8))
    assert [e.data for e in events[:-1]] == [str(i) for i in range(6)]


@pytest.mark.fault
def test_a_blocking_reader_gives_up_past_the_unavailable_timeout(settings, run_id):
    proxy = Proxy(port_of(settings.redis_url))
    proxy.set_refuse(True)
    reading = settings.replace(redis_url=proxy.url, unavailable_timeout=1.5, socket_timeout=1.0)
    client = sync_client(reading, reader=True)
    try:
        started = time.monotonic()
        with pytest.raises(ReaderError, match=r"unreachable for 1\.5 s"):
            within(15, lambda: list(read_events(client, run_id, reading)))
        assert time.monotonic() - started < 1.5 + 5
    finally:
        client.close()
        proxy.close()
