"""Bad input to the library, on a server of the test's own watched with MONITOR (case 7).

Bad cursors and run ids are refused before any command is sent; a run id whose keys hold
another kind of value ends a reader at once with ``not_found`` after reading only that run's
own keys' types, and is refused by the writer without touching the foreign key.
"""

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from streaming import (
    InvalidCursor,
    InvalidRunId,
    ReaderHub,
    Settings,
    StreamWriter,
    Terminal,
    WriterError,
    read_events,
)
from streaming.client import sync_client
from streaming.wire import MAX_SEQ, RunKeys
from tests.monitor import FOREIGN, Monitor, beyond_status_reads, foreign_id
from tests.waiting import within

pytestmark = pytest.mark.fault

BAD_CURSORS = ["abc", "-1", "$", "1.0", "", " 1", "0x10", "1e3", "\uff11", "99999999999999999999",
               str(MAX_SEQ + 1), -1, MAX_SEQ + 1, 1.5, True, b"1", [1]]
BAD_RUN_IDS = ["x" * 129, "a\x00b", "a\nb", "a\rb", "a\tb", "*", "run-*", "a b", "sse:run:x",
               "a:meta", "..\u00e9", "", None, 5, b"run"]
@pytest.fixture
def watched(private_server) -> Iterator[tuple[Settings, Monitor, redis.Redis]]:
    local = Settings(redis_url=private_server.url, lease_ttl=1.0, liveness_interval=0.5,
                     producer_timeout=2.0, block_timeout=2.0)
    monitor = Monitor(private_server.url)
    admin = sync_client(local)
    yield local, monitor, admin
    admin.close()
    monitor.close()


def foreign_key(admin, kind_of_key, make, run_id):
    keys = RunKeys.for_run(run_id)
    key = getattr(keys, kind_of_key)
    make(admin, key)
    admin.expire(key, 5000)
    return keys, key


def unchanged(admin, key, kind):
    return admin.type(key) == kind and 4990 <= admin.ttl(key) <= 5000


@pytest.mark.parametrize("cursor", BAD_CURSORS, ids=repr)
def test_bad_cursors_are_refused_before_any_command(watched, cursor):
    local, monitor, _ = watched
    client = sync_client(local, reader=True)
    start = monitor.mark()
    began = time.monotonic()
    with pytest.raises(InvalidCursor, match="cursor"):
        read_events(client, "some-run", local, starting_after=cursor)
    assert time.monotonic() - began < 1.0
    assert monitor.since(start) == []
    client.close()


@pytest.mark.parametrize("run_id", BAD_RUN_IDS, ids=repr)
def test_bad_run_ids_are_refused_before_any_command(watched, run_id):
    local, monitor, _ = watched
    client = sync_client(local, reader=True)
    writer = StreamWriter(local).start()
    start = monitor.mark()
    try:
        with pytest.raises(InvalidRunId, match="run id"):
            read_events(client, run_id, local)
        with pytest.raises(InvalidRunId, match="run id"):
            writer.open(run_id)
        assert monitor.since(start) == []
    finally:
        writer.stop(timeout=2)
        client.close()


async def test_the_hub_refuses_bad_input_before_any_command(watched):
    local, monitor, _ = watched
    async with ReaderHub(local) as hub:
        # The hub's own doorbell connection comes up in the background: let it first, so what
        # the monitor sees after the mark can only be the bad input's doing.
        deadline = time.monotonic() + 5
        while hub._doorbell is not None and hub._doorbell._listener is None:
            assert time.monotonic() < deadline, "the hub's doorbell never subscribed"
            await asyncio.sleep(0.01)
        start = await asyncio.to_thread(monitor.mark)
        for cursor in BAD_CURSORS:
            with pytest.raises(InvalidCursor):
                hub.read("some-run", starting_after=cursor)
        for run_id in BAD_RUN_IDS:
            with pytest.raises(InvalidRunId):
                hub.read(run_id)
        assert await asyncio.to_thread(monitor.since, start) == []
        assert hub.stats()["readers"] == 0


@pytest.mark.parametrize(("which", "kind", "make"), FOREIGN, ids=foreign_id)
def test_a_key_of_another_kind_ends_a_reader_at_once_reading_nothing_else(
        watched, run_id, which, kind, make):
    local, monitor, admin = watched
    keys, key = foreign_key(admin, which, make, run_id)
    client = sync_client(local, reader=True)
    start = monitor.mark()
    events = within(1.0, lambda: list(read_events(client, run_id, local)))
    commands = monitor.since(start)
    assert [e.terminal for e in events] == [Terminal.NOT_FOUND]
    assert beyond_status_reads(commands, keys) == (set(), set())
    assert unchanged(admin, key, kind)
    client.close()


@pytest.mark.parametrize(("which", "kind", "make"), FOREIGN, ids=foreign_id)
async def test_a_key_of_another_kind_ends_a_hub_reader_at_once(watched, run_id, which, kind,
                                                                make):
    local, monitor, admin = watched
    keys, key = foreign_key(admin, which, make, run_id)
    async with ReaderHub(local) as hub:
        start = await asyncio.to_thread(monitor.mark)
        events = await asyncio.wait_for(_collect(hub, run_id), 1.0)
        commands = await asyncio.to_thread(monitor.since, start)
    assert [e.terminal for e in events] == [Terminal.NOT_FOUND]
    assert beyond_status_reads(commands, keys) == (set(), set())
    assert unchanged(admin, key, kind)


async def _collect(hub, run_id):
    return [event async for event in hub.read(run_id)]


@pytest.mark.parametrize(("which", "kind", "make"), FOREIGN, ids=foreign_id)
def test_the_writer_refuses_a_run_whose_keys_hold_another_kind(watched, run_id, which, kind,
                                                               make):
    """A run id that names someone else's key: a clear error, and that key keeps its value
    and expiry (no claim, meta or lease is written beside it)."""
    local, _, admin = watched
    _, key = foreign_key(admin, which, make, run_id)
    writer = StreamWriter(local).start()
    try:
        with pytest.raises(WriterError, match=f"{key} holds a {kind}"):
            writer.open(run_id)
    finally:
        writer.stop(timeout=2)
    assert unchanged(admin, key, kind)
    assert sorted(admin.keys(f"sse:run:{run_id}*")) == [key]


def test_a_lease_of_another_kind_is_no_live_producer(watched, run_id):
    """A claimed run whose lease key holds a hash without expiry: readers end with ``lost``
    once the producer timeout passes, instead of waiting for that 'producer' forever."""
    local, _, admin = watched
    keys = RunKeys.for_run(run_id)
    admin.hset(keys.meta, mapping={"attempt": 1, "seq": 0})
    admin.hset(keys.lease, "field", "foreign")
    client = sync_client(local, reader=True)
    bound = local.producer_timeout + 2 * local.liveness_interval + 2
    events = within(bound, lambda: list(read_events(client, run_id, local)))
    assert [e.terminal for e in events] == [Terminal.LOST]
    client.close()


def replaced_stream(admin, run_id):
    """A run that was claimed (its meta says so) whose stream key now holds a string."""
    keys = RunKeys.for_run(run_id)
    admin.hset(keys.meta, mapping={"attempt": 1, "seq": 3})
    admin.set(keys.stream, "foreign")


def test_a_stream_key_replaced_by_another_kind_ends_a_reader_with_lost(watched, run_id):
    local, _, admin = watched
    replaced_stream(admin, run_id)
    client = sync_client(local, reader=True)
    events = within(1.0, lambda: list(read_events(client, run_id, local)))
    assert [e.terminal for e in events] == [Terminal.LOST]
    assert admin.get(RunKeys.for_run(run_id).stream) == "foreign"
    client.close()


async def test_a_stream_key_replaced_by_another_kind_ends_a_hub_reader_with_lost(watched,
                                                                                 run_id):
    local, _, admin = watched
    replaced_stream(admin, run_id)
    async with ReaderHub(local) as hub:
        events = await asyncio.wait_for(_collect(hub, run_id), 1.0)
    assert [e.terminal for e in events] == [Terminal.LOST]
