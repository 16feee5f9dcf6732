"""Run lifecycle in the store (issue 10): stored times, the guarded ending, the sweep, and
readers that store the ending themselves, against a real server and producers that really die.
"""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from streaming import ReaderHub, RunClosedError, StreamWriter, Terminal, read_events
from streaming.client import sync_client
from streaming.control import (
    end_run,
    list_runs,
    mark_pending,
    run_status,
    sweep,
)
from streaming.wire import RUN_INDEX, RunKeys
from tests.waiting import wait_for


@pytest.fixture
def client(settings):
    client = sync_client(settings, reader=True)
    yield client
    client.close()


def keys(run_id, settings):
    return RunKeys.for_run(run_id, hash_tag=settings.cluster_hash_tags)


def server_ms(client):
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


# -- a producer in its own process, killed or stopped for real --------------------------------

PRODUCER = textwrap.dedent("""
    import sys, time
    from streaming import Settings, StreamWriter, WriterError
    settings = Settings(redis_url=sys.argv[1], lease_ttl=float(sys.argv[3]))
    writer = StreamWriter(settings).start()
    run = writer.open(sys.argv[2])
    for i in range(3):
        run.send(f"chunk {i}")
    run.flush()
    print("ready", flush=True)
    sys.stdin.readline()  # the test says when to go on (after a SIGSTOP/SIGCONT)
    try:
        run.send("late")
        run.flush(10)
        print("wrote", flush=True)
    except WriterError as exc:
        print("refused", type(exc).__name__, flush=True)
    writer.stop(2)
""")


class Producer:
    """A ``StreamWriter`` in a subprocess that stored 3 chunks of ``run_id``."""

    def __init__(self, settings, run_id):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, settings.redis_url, run_id, str(settings.lease_ttl)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=os.path.dirname(os.path.dirname(__file__)))
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume_and_write(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        self.proc.wait(15)
        return line

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def producer(settings, run_id):
    made = []

    def start():
        made.append(Producer(settings, run_id))
        return made[-1]

    yield start
    for proc in made:
        proc.close()


# -- stored times -----------------------------------------------------------------------------


def test_status_carries_the_stored_times(writer, client, settings, run_id):
    before = server_ms(client)
    mark_pending(client, run_id, settings)
    queued = run_status(client, run_id, settings)
    assert queued.state == "pending" and before <= queued.queued <= queued.now
    assert queued.due_in(settings.queue_timeout, settings.producer_timeout) == pytest.approx(
        settings.queue_timeout, abs=1.0)
    run = writer.open(run_id)
    live = run_status(client, run_id, settings)
    assert live.state == "live"
    assert live.lease_expires - live.now == pytest.approx(settings.lease_ttl * 1000, abs=500)
    assert not live.overdue(settings.queue_timeout, settings.producer_timeout)
    run.release()
    released = run_status(client, run_id, settings)
    assert released.state == "idle" and released.lease_expires <= released.now
    assert client.zscore(RUN_INDEX, run_id) == queued.queued  # indexed at its queued time


# -- the guarded ending -----------------------------------------------------------------------


def test_the_guarded_ending_never_ends_a_run_with_a_live_lease(writer, client, settings, run_id):
    run = writer.open(run_id)
    run.send("working")
    run.flush()
    for when in ("due", "not_live"):
        assert end_run(client, run_id, settings, Terminal.LOST, "no", when=when) is None
    assert run_status(client, run_id, settings).state == "live"
    run.send("still mine")
    assert run.flush() == 2
    # "always" ends it over the live writer, which is fenced off
    assert end_run(client, run_id, settings, "error", "stopped by an operator",
                   when="always") is Terminal.ERROR
    run.send("after the ending")
    with pytest.raises(RunClosedError):
        run.flush()
    stored = client.xrange(keys(run_id, settings).stream)
    assert [f["seq_id"] for _, f in stored] == ["1", "2", "3"]
    assert stored[-1][0] == "0-3" and stored[-1][1]["complete"] == "true"
    assert "stopped by an operator" in stored[-1][1]["data"]
    # the ending is final: asking again changes nothing
    assert end_run(client, run_id, settings, Terminal.LOST, when="always") is Terminal.ERROR
    assert len(client.xrange(keys(run_id, settings).stream)) == 3


def test_a_quiet_writer_learns_of_the_ending_on_its_next_lease_refresh(writer, client, settings,
                                                                      run_id):
    run = writer.open(run_id)
    run.send("x")
    run.flush()
    assert end_run(client, run_id, settings, Terminal.LOST, "ended", when="always")
    wait_for(lambda: run._run.error is not None, 10 * settings.lease_ttl, "refresh refused")
    with pytest.raises(RunClosedError):
        run.send("y")
    assert not client.exists(keys(run_id, settings).lease)  # not renewed for the ended run
    assert client.ttl(keys(run_id, settings).meta) <= settings.retention


def test_the_guarded_ending_waits_for_the_requeue_grace(writer, client, settings, run_id):
    run = writer.open(run_id)
    run.send("x")
    run.release()
    assert end_run(client, run_id, settings, Terminal.LOST) is None  # lapsed, grace not over
    assert end_run(client, run_id, settings, Terminal.LOST, when="not_live") is Terminal.LOST
    assert end_run(client, "test-never-queued", settings, Terminal.LOST, when="always") is None


def test_bad_arguments_to_the_guarded_ending_are_refused(client, settings, run_id):
    with pytest.raises(ValueError, match="when must be one of"):
        end_run(client, run_id, settings, Terminal.LOST, when="later")
    with pytest.raises(ValueError, match="kind must be a run ending"):
        end_run(client, run_id, settings, "exploded")


# -- readers store the ending -----------------------------------------------------------------


@pytest.mark.fault
def test_a_queued_run_never_claimed_gets_a_stored_timeout(writer, client, settings, run_id):
    quick = settings.replace(queue_timeout=1.5, liveness_interval=30, block_timeout=30)
    mark_pending(client, run_id, quick)
    started = time.monotonic()
    with sync_client(quick, reader=True) as patient:
        events = list(read_events(patient, run_id, quick))
    waited = time.monotonic() - started
    assert [e.seq for e in events] == [1]
    assert events[0].terminal is Terminal.TIMEOUT and "no worker started" in events[0].data
    # checked when the stored deadline came due, not after the 30 s liveness interval
    assert waited < quick.queue_timeout + 5
    with pytest.raises(RunClosedError, match="timeout"):
        writer.open(run_id)  # a late delivery of its task writes nothing


@pytest.mark.fault
def test_a_killed_producer_gets_a_stored_lost_that_every_reader_sees(producer, client, settings,
                                                                     run_id):
    proc = producer()
    proc.kill()
    events = list(read_events(client, run_id, settings))
    assert [e.seq for e in events] == [1, 2, 3, 4] and events[-1].terminal is Terminal.LOST
    again = list(read_events(client, run_id, settings))
    assert again == events  # a later reader reads the same stored ending, id included


@pytest.mark.fault
def test_a_stalled_producer_that_comes_back_writes_nothing(producer, client, settings, run_id):
    """The reader's ending equals the stored one, and the late writer is refused."""
    proc = producer()
    proc.stop()  # a long pause (GC, a cut network): its lease lapses, the grace passes
    events = list(read_events(client, run_id, settings))
    assert events[-1].seq == 4 and events[-1].terminal is Terminal.LOST
    assert proc.resume_and_write() == "refused RunClosedError"
    stored = client.xrange(keys(run_id, settings).stream)
    assert len(stored) == 4 and stored[-1][1]["data"] == events[-1].frame
    assert run_status(client, run_id, settings).terminal is Terminal.LOST


async def reconnecting_reader(hub, run_id, every, give_up):
    """A client that drops its connection every ``every`` s and resumes from its cursor."""
    events, cursor = [], None
    stop = time.monotonic() + give_up
    while time.monotonic() < stop:
        reader = hub.read(run_id, starting_after=cursor)
        try:
            async with asyncio.timeout(every):
                async for event in reader:
                    events.append(event)
                    cursor = event.seq if event.seq is not None else cursor
        except TimeoutError:
            continue
        return events, time.monotonic()
    return events, None


async def holding_reader(hub, run_id):
    events = [event async for event in hub.read(run_id)]
    return events, time.monotonic()


@pytest.mark.fault
async def test_a_reader_reconnecting_often_learns_lost_as_soon_as_a_holding_one(
        producer, settings, run_id):
    slow_checks = settings.replace(liveness_interval=30, block_timeout=30)
    proc = await asyncio.to_thread(producer)
    async with ReaderHub(slow_checks) as hub:
        holding = asyncio.create_task(holding_reader(hub, run_id))
        reconnecting = asyncio.create_task(reconnecting_reader(hub, run_id, 0.5, 20))
        await asyncio.sleep(0.3)
        killed = time.monotonic()
        await asyncio.to_thread(proc.kill)
        (held, held_at), (hopped, hopped_at) = await asyncio.gather(holding, reconnecting)
    assert hopped_at is not None, "the reconnecting reader never learned the ending"
    assert held[-1] == hopped[-1] and held[-1].seq == 4 and held[-1].terminal is Terminal.LOST
    assert [e.seq for e in hopped] == [1, 2, 3, 4]
    bound = settings.lease_ttl + settings.producer_timeout + 5  # generous: a shared CPU
    assert held_at - killed < bound and hopped_at - killed < bound


@pytest.mark.fault
async def test_a_reader_joining_brings_a_followed_runs_check_forward(settings, run_id):
    """The hub was blocked until its next regular check (30 s away); a reader that opens on
    the run after its producer left knows the run's stored deadline and cuts that wait."""
    # a live run's first check: when its lease (10 s) plus the grace (2 s) could be over
    slow_checks = settings.replace(liveness_interval=30, block_timeout=30, lease_ttl=10)
    writer = StreamWriter(slow_checks).start()
    try:
        run = await asyncio.to_thread(writer.open, run_id)
        run.send("x")
        await run.aflush()
        async with ReaderHub(slow_checks) as hub:
            first = asyncio.create_task(holding_reader(hub, run_id))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(run.release)  # the grace starts now, not in 10 s
            left = time.monotonic()
            second = asyncio.create_task(holding_reader(hub, run_id))
            (one, one_at), (two, _) = await asyncio.wait_for(asyncio.gather(first, second), 30)
    finally:
        writer.stop()
    assert one[-1] == two[-1] and one[-1].seq == 2 and one[-1].terminal is Terminal.LOST
    assert one_at - left < settings.producer_timeout + 4  # not at the first reader's 12 s


@pytest.mark.fault
async def test_the_hub_stores_a_queued_runs_timeout_when_its_deadline_comes(settings, client,
                                                                            run_id):
    quick = settings.replace(queue_timeout=1.5, liveness_interval=30, block_timeout=30)
    mark_pending(client, run_id, quick)
    started = time.monotonic()
    async with ReaderHub(quick) as hub:
        events = await asyncio.wait_for(holding_reader(hub, run_id), 20)
    assert [e.seq for e in events[0]] == [1] and events[0][-1].terminal is Terminal.TIMEOUT
    assert events[1] - started < quick.queue_timeout + 5


@pytest.mark.fault
def test_a_reader_that_may_not_write_makes_the_ending_up(private_server, settings, run_id):
    """An ACL without write commands: the guarded ending is refused, the reader still ends."""
    local = settings.replace(redis_url=private_server.url)
    admin = sync_client(local)
    admin.acl_setuser("viewer", enabled=True, passwords=["+pw"], keys=["~*"],
                      commands=["+@read", "+@connection", "+eval", "+evalsha", "+time"])
    writer = StreamWriter(local).start()
    try:
        run = writer.open(run_id)
        run.send("x")
        run.release()
    finally:
        writer.stop()
    host, port = private_server.url.removeprefix("redis://").split("/")[0].split(":")
    viewer_settings = local.replace(redis_url=f"redis://viewer:pw@{host}:{port}/0")
    viewer = sync_client(viewer_settings, reader=True)
    events = list(read_events(viewer, run_id, viewer_settings))
    assert [e.seq for e in events] == [1, None] and events[-1].terminal is Terminal.LOST
    assert run_status(admin, run_id, local).state == "idle"  # nothing was written


# -- the sweep and the run index --------------------------------------------------------------


def age(client, run_id, field, seconds):
    """Move a stored time ``seconds`` into the past (as if that much time had passed)."""
    client.hset(f"sse:run:{run_id}:meta", field, server_ms(client) - int(seconds * 1000))


def test_the_sweep_ends_overdue_runs_and_returns_the_ended_ones(private_server, settings):
    local = settings.replace(redis_url=private_server.url)
    admin = sync_client(local)
    writer = StreamWriter(local).start()
    try:
        mark_pending(admin, "queued-long", local)
        age(admin, "queued-long", "queued", local.queue_timeout + 1)
        mark_pending(admin, "queued-now", local)
        dead = writer.open("dead")
        dead.send("x")
        dead.release()
        age(admin, "dead", "expires", local.producer_timeout + 1)
        released = writer.open("released")  # lapsed, but within the requeue grace
        released.release()
        live = writer.open("live")
        live.send("y")
        live.flush()
        writer.open("done").finish()
        admin.zadd(RUN_INDEX, {"expired": 1})  # its keys expired long ago
        wait_for(lambda: "done" not in admin.zrange(RUN_INDEX, 0, -1), 5,
                 "a run its writer ended leaves the index")  # just after finish() returns
        ended_by_reader = writer.open("ended-by-reader")
        ended_by_reader.release()
        end_run(admin, "ended-by-reader", local, Terminal.LOST, when="not_live")
        assert sweep(admin, local) == {"queued-long": Terminal.TIMEOUT, "dead": Terminal.LOST,
                                       "ended-by-reader": Terminal.LOST}
        assert sorted(admin.zrange(RUN_INDEX, 0, -1)) == ["live", "queued-now", "released"]
        assert run_status(admin, "queued-long", local).terminal is Terminal.TIMEOUT
        assert [e.seq for e in read_events(admin, "dead", local)] == [1, 2]
        assert sweep(admin, local) == {}
        statuses = dict(list_runs(admin, local))
        assert [statuses[r].state for r in ("queued-now", "released", "live")] == [
            "pending", "idle", "live"]
        live.finish()
        wait_for(lambda: sorted(admin.zrange(RUN_INDEX, 0, -1)) == ["queued-now", "released"], 5,
                 "the live run leaves the index when its writer ends it")
    finally:
        writer.stop()
