"""The writer against a real server: format, sequence, fencing, exactly-once, outages, fork."""

import asyncio
import dataclasses
import json
import multiprocessing
import os
import sys
import threading
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from streaming import (
    BufferFullError,
    InvalidChunk,
    RunBusyError,
    RunClosedError,
    StaleWriterError,
    StoreUnavailableError,
    StreamWriter,
    Terminal,
    WriterError,
    WriterStateError,
    read_events,
    shared_writer,
)
from streaming import writer as writer_module
from streaming.client import sync_client
from tests.proxy import Proxy, port_of


def stored(redis_client, run_id):
    return redis_client.xrange(f"sse:run:{run_id}")


def test_entries_have_the_seed_fields_and_contiguous_seq_ids(writer, redis_client, run_id):
    run = writer.open(run_id)
    for i in range(5):
        run.send(f'{{"i": {i}}}')
    assert run.finish() == 6
    entries = stored(redis_client, run_id)
    assert [fields["seq_id"] for _, fields in entries] == [str(i) for i in range(1, 7)]
    assert [entry_id for entry_id, _ in entries] == [f"0-{i}" for i in range(1, 7)]
    assert entries[0][1]["data"] == 'data: {"i": 0}\n\n'
    assert all(set(f) == {"seq_id", "data", "timestamp"} for _, f in entries[:-1])
    assert entries[-1][1] == {"seq_id": "6", "data": "data: [DONE]\n\n",
                              "timestamp": entries[-1][1]["timestamp"], "complete": "true"}
    assert abs(int(entries[0][1]["timestamp"]) - time.time() * 1000) < 60_000


def test_ttl_while_active_then_retention_after_the_end(writer, settings, redis_client, run_id):
    run = writer.open(run_id)
    run.send("x")
    run.flush()
    assert settings.stream_ttl - 5 <= redis_client.ttl(f"sse:run:{run_id}") <= settings.stream_ttl
    assert redis_client.pttl(f"sse:run:{run_id}:lease") > 0
    run.finish()
    assert settings.retention - 5 <= redis_client.ttl(f"sse:run:{run_id}") <= settings.retention
    assert redis_client.exists(f"sse:run:{run_id}:lease") == 0


def test_quiet_run_keeps_its_lease_and_ttl(writer, settings, redis_client, run_id):
    run = writer.open(run_id)
    run.send("x")
    run.flush()
    redis_client.expire(f"sse:run:{run_id}", 2)
    time.sleep(settings.lease_ttl * 2)  # several refresh periods with nothing written
    assert redis_client.pttl(f"sse:run:{run_id}:lease") > 0
    assert redis_client.ttl(f"sse:run:{run_id}") > 2
    run.finish()


def test_exactly_one_terminal_entry_and_no_writes_after_it(writer, redis_client, run_id):
    run = writer.open(run_id)
    run.send("a")
    run.finish(Terminal.ERROR, "boom", type="ValueError")
    run.finish()  # a second finish is a no-op
    with pytest.raises(RunClosedError):
        run.send("late")
    with pytest.raises(RunClosedError):
        writer.open(run_id)
    entries = stored(redis_client, run_id)
    assert sum(1 for _, f in entries if f.get("complete") == "true") == 1
    assert '"type": "ValueError"' in entries[-1][1]["data"]


def attempt(settings, run_id, outputs, *, resume=False, ending=None):
    """One attempt of a run in its own writer (process-like), which then dies: its lease is
    dropped as a lapsed one would be. Returns the handle."""
    writer = StreamWriter(settings).start()
    try:
        run = writer.open(run_id, resume=resume)
        for text in outputs:
            run.send(text)
        if ending is None:
            run.flush()
        else:
            run.finish(ending)
    finally:
        writer.stop()
    return run


def test_a_new_writer_continues_the_run_after_a_restarted_event(settings, redis_client, run_id):
    attempt(settings, run_id, ["0", "1", "2"])
    redis_client.delete(f"sse:run:{run_id}:lease")  # the first process died; its lease lapsed
    again = attempt(settings, run_id, ["after"], ending=Terminal.DONE)
    assert again.attempt == 2 and again.last_seq == 6 and again.resumed_chunks == 0
    events = list(read_events(sync_client(settings, reader=True), run_id, settings))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[3].event == "restarted"
    assert json.loads(events[3].data) == {"attempt": 2, "resume": False, "chunks": 0,
                                          "last_seq": 3}


def test_a_resuming_attempt_continues_after_the_chunks_stored(settings, redis_client, run_id):
    """``chunks`` counts output only (no ``restarted`` event, no ending); an attempt that
    starts over resets it, and one that resumes continues after it."""
    attempt(settings, run_id, ["a", "b", "c"])
    redis_client.delete(f"sse:run:{run_id}:lease")
    second = attempt(settings, run_id, ["d", "e"], resume=True)
    assert (second.attempt, second.resumed_chunks) == (2, 3)
    redis_client.delete(f"sse:run:{run_id}:lease")
    third = attempt(settings, run_id, ["x"], resume=True)
    assert (third.attempt, third.resumed_chunks) == (3, 5)
    redis_client.delete(f"sse:run:{run_id}:lease")
    fourth = attempt(settings, run_id, ["y", "z"], resume=False)
    assert (fourth.attempt, fourth.resumed_chunks) == (4, 0)
    redis_client.delete(f"sse:run:{run_id}:lease")
    fifth = attempt(settings, run_id, [], resume=True, ending=Terminal.DONE)
    assert (fifth.attempt, fifth.resumed_chunks) == (5, 2)
    events = list(read_events(sync_client(settings, reader=True), run_id, settings))
    restarts = [json.loads(e.data) for e in events if e.event == "restarted"]
    assert restarts == [
        {"attempt": 2, "resume": True, "chunks": 3, "last_seq": 3},
        {"attempt": 3, "resume": True, "chunks": 5, "last_seq": 6},
        {"attempt": 4, "resume": False, "chunks": 0, "last_seq": 8},
        {"attempt": 5, "resume": True, "chunks": 2, "last_seq": 11},
    ]
    assert [e.seq for e in events] == list(range(1, 14))


def test_a_live_writer_fences_a_second_one(settings, writer, run_id):
    run = writer.open(run_id)
    run.send("x")
    run.flush()
    other = StreamWriter(settings).start()
    try:
        with pytest.raises(RunBusyError, match="held by another live writer"):
            other.open(run_id, wait=0.2)
    finally:
        other.stop()
    run.finish()


def test_a_writer_that_lost_its_lease_is_fenced_off(settings, writer, redis_client, run_id):
    stale = writer.open(run_id)
    stale.send("old")
    stale.flush()
    redis_client.delete(f"sse:run:{run_id}:lease")  # e.g. a pause longer than the lease
    newer = StreamWriter(settings).start()
    try:
        fresh = newer.open(run_id)
        stale.send("interleaved?")
        with pytest.raises(StaleWriterError, match="taken over"):
            stale.flush()
        with pytest.raises(StaleWriterError):
            stale.send("again")
        fresh.finish()
    finally:
        newer.stop()
    datas = [f["data"] for _, f in stored(redis_client, run_id)]
    assert "data: interleaved?\n\n" not in datas


def test_waiting_claim_takes_over_once_the_old_lease_lapses(settings, writer, run_id):
    old = writer.open(run_id)
    old.send("x")
    old.flush()
    old.release()  # stops refreshing; the lease lapses after lease_ttl
    other = StreamWriter(settings).start()
    try:
        run = other.open(run_id, wait=settings.lease_ttl * 3)
        assert run.attempt == 2
        run.finish()
    finally:
        other.stop()


def test_bad_chunks_are_refused_before_buffering(settings, redis_url, run_id):
    writer = StreamWriter(settings.replace(max_chunk_bytes=100)).start()
    try:
        run = writer.open(run_id)
        with pytest.raises(InvalidChunk, match="exceeds"):
            run.send("x" * 200)
        with pytest.raises(InvalidChunk, match="UTF-8"):
            run.send("\udcff")
        with pytest.raises(InvalidChunk):
            run.send(b"bytes")  # type: ignore[arg-type]
        run.send("fine")
        assert run.finish() == 2
    finally:
        writer.stop()


@pytest.mark.fault
def test_replies_lost_after_the_write_add_nothing_twice(settings, redis_client, redis_url, run_id):
    port = port_of(redis_url)
    proxy = Proxy(port)
    writer = StreamWriter(settings.replace(redis_url=proxy.url)).start()
    try:
        run = writer.open(run_id)
        for round_ in range(5):
            for i in range(20):
                run.send(f"{round_}-{i}")
            proxy.drop_replies(1)  # the pipeline reaches Redis; its reply never comes back
            run.flush(timeout=20)
        run.finish(timeout=20)
        assert writer.stats().retries >= 1
    finally:
        writer.stop()
        proxy.close()
    seqs = [int(f["seq_id"]) for _, f in stored(redis_client, run_id)]
    assert seqs == list(range(1, 102))
    datas = [f["data"] for _, f in stored(redis_client, run_id)][:-1]
    assert datas == [f"data: {r}-{i}\n\n" for r in range(5) for i in range(20)]


def _flushes(monkeypatch, *hooks):
    """Hook the writer's sending: the n-th hook takes the n-th flush's commands before they
    are sent and returns the commands to send; later flushes go as they are."""
    real_send = writer_module.send_commands
    count = 0

    async def send_commands(conn, commands, **options):
        nonlocal count
        count += 1
        commands = list(commands)
        if count <= len(hooks):
            commands = hooks[count - 1](commands)
        return await real_send(conn, commands, **options)

    monkeypatch.setattr(writer_module, "send_commands", send_commands)


def _unknown_script_then(run, text, *, ending=False):
    """A hook: the flush's scripts are unknown to the server (nothing stored, NOSCRIPT), and
    ``text`` is sent to ``run`` in the meantime, to go in the next flush, with the run's
    ending if ``ending`` (``finish()`` in a thread of its own, ``hook.finisher``: then
    ``hook.finished`` has its result). Its ``sent`` event is set then."""
    def hook(commands):
        run.send(text)  # waiting when the loop takes its next batch, right after this one
        if ending:
            hook.finisher = threading.Thread(target=lambda: hook.finished.append(run.finish(
                timeout=10)))
            hook.finisher.start()
            while run.ended is None:
                time.sleep(0.001)
        hook.sent.set()
        return [("EVALSHA", "0" * 40, *command[2:]) if command[0] == "EVALSHA" else command
                for command in commands]

    hook.sent = threading.Event()
    hook.finished = []
    return hook


@pytest.mark.parametrize("behind", ["nothing", "the ending", "a third chunk"])
def test_a_flush_behind_one_that_is_sent_again_follows_it(writer, redis_client, run_id,
                                                          monkeypatch, behind):
    """The first flush's chunk is not stored, and the next flush, sent before the first
    one's reply is read, carries the run's next chunk: the server refuses it (``ORDER``), and
    both go again, in order, once each. Behind them wait the run's ending (in the second
    flush: the first chunk goes again alone, not as the run's end), a third chunk (accepted
    while the second flush is sent: it waits until the second chunk is back before it), or
    nothing."""
    run = writer.open(run_id)
    refused = []
    real_read = writer_module.read_replies

    async def read_replies(conn, count):
        replies = await real_read(conn, count)
        refused.extend(r for r in replies if isinstance(r, Exception))
        return replies

    first = _unknown_script_then(run, "second", ending=behind == "the ending")
    texts, hooks, sent = ["first", "second"], [first], first.sent
    if behind == "a third chunk":
        sent = threading.Event()

        def third(commands):
            run.send("third")
            sent.set()
            return commands

        texts.append("third")
        hooks.append(third)
    _flushes(monkeypatch, *hooks)
    monkeypatch.setattr(writer_module, "read_replies", read_replies)
    run.send("first")
    assert sent.wait(5)
    assert run.finish(timeout=10) == len(texts) + 1
    if behind == "the ending":
        first.finisher.join(10)
        assert first.finished == [3]
    assert [f["data"] for _, f in stored(redis_client, run_id)] == [
        *(f"data: {text}\n\n" for text in texts), "data: [DONE]\n\n"]
    assert [type(error) for error in refused][:2] == [NoScriptError, ResponseError]
    assert str(refused[1]).startswith("ORDER chunks 1..1 never arrived")


@pytest.mark.fault
def test_a_connection_lost_with_two_flushes_in_flight_loses_and_repeats_nothing(
        writer, redis_client, run_id, monkeypatch):
    """The connection fails while the second flush is being sent, the first one's reply
    unread (and its chunk not stored): both flushes' chunks go again, in their order."""
    run = writer.open(run_id)

    def cut(commands):
        raise RedisConnectionError("cut while sending")

    first = _unknown_script_then(run, "second")
    _flushes(monkeypatch, first, cut)
    run.send("first")
    assert first.sent.wait(5)
    assert run.finish(timeout=10) == 3
    assert [f["data"] for _, f in stored(redis_client, run_id)] == [
        "data: first\n\n", "data: second\n\n", "data: [DONE]\n\n"]
    assert writer.stats().retries == 1


@pytest.mark.fault
def test_a_flush_loop_that_fails_fails_its_runs_at_once(settings, run_id, monkeypatch):
    """A bug in the flush loop (not a Redis error) ends the writer: a caller waiting for its
    chunks, and every later write, get an error that says so instead of waiting out their
    timeouts, and the writer says it is not running (``shared_writer()`` then makes another)."""
    def bug(self):
        raise RuntimeError("a bug")

    writer = StreamWriter(settings).start()
    try:
        run = writer.open(run_id)
        monkeypatch.setattr(StreamWriter, "_take_batch", bug)
        run.send("lost with the loop")
        started = time.monotonic()
        with pytest.raises(WriterError, match="flush loop failed: RuntimeError: a bug"):
            run.flush(timeout=30)
        assert time.monotonic() - started < 5
        with pytest.raises(WriterError, match="flush loop failed"):
            run.send("after")
        with pytest.raises(WriterError, match="flush loop failed"):
            writer.open(f"{run_id}-next")
        assert not writer.running
        monkeypatch.setattr(writer_module, "_shared", (os.getpid(), writer))
        another = shared_writer(settings)
        assert another is not writer and another.running
        another.stop(timeout=5)
    finally:
        writer.stop(timeout=5)


def test_outage_is_bounded_and_nothing_accepted_is_lost(settings, redis_client, redis_url, run_id):
    port = port_of(redis_url)
    proxy = Proxy(port)
    outage = settings.replace(redis_url=proxy.url, max_buffer_bytes=2000, buffer_timeout=0.3,
                              unavailable_timeout=1.0, lease_ttl=30)
    writer = StreamWriter(outage).start()
    try:
        run = writer.open(run_id)
        run.send("before")
        run.flush()
        proxy.set_refuse(True)
        accepted = 0
        with pytest.raises(BufferFullError, match="buffer full"):
            for i in range(1000):
                run.send(f"chunk {i:04}")
                accepted += 1
        assert writer.stats().buffered_bytes <= 2000
        time.sleep(1.2)
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            run.send("too late")
        proxy.set_refuse(False)
        run.flush(timeout=15)
        run.finish(timeout=15)
    finally:
        writer.stop()
        proxy.close()
    datas = [f["data"] for _, f in stored(redis_client, run_id)]
    assert datas[1:-1] == [f"data: chunk {i:04}\n\n" for i in range(accepted)]
    assert [int(f["seq_id"]) for _, f in stored(redis_client, run_id)] == list(
        range(1, accepted + 3))


def _use_parent_writer(writer, queue):
    try:
        writer.open("anything")
    except WriterStateError as exc:
        queue.put(f"refused: {exc}")
    try:
        child = shared_writer(writer.settings)
        run = child.open(f"fork-{os.getpid()}")
        run.send("from the child")
        queue.put(f"child wrote {run.finish()}")
    except Exception as exc:  # report anything to the parent
        queue.put(repr(exc))


def test_a_writer_is_never_shared_across_fork(writer):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_use_parent_writer, args=(writer, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    first, second = queue.get(timeout=5), queue.get(timeout=5)
    assert first.startswith("refused: this writer was created in process")
    assert second == "child wrote 2"


def test_writes_from_many_threads_keep_each_runs_order(writer, settings, redis_client):
    runs = [writer.open(f"threads-{os.getpid()}-{time.time_ns()}-{i}") for i in range(8)]

    def produce(run):
        for i in range(300):
            run.send(str(i))
        run.finish()

    threads = [threading.Thread(target=produce, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for run in runs:
        datas = [f["data"] for _, f in stored(redis_client, run.run_id)]
        assert datas == [f"data: {i}\n\n" for i in range(300)] + ["data: [DONE]\n\n"]


@pytest.mark.parametrize("descriptors", ["available", "exhausted"])
def test_an_idle_writer_stores_each_chunk_at_once(settings, redis_client, run_id, monkeypatch,
                                                   descriptors):
    """Each send() to an idle writer wakes its loop (no flush() called, and a refresh of
    quiet runs, which would also flush, 10 s away): through its eventfd, or through
    call_soon_threadsafe when no descriptor could be had."""
    if descriptors == "exhausted":
        def refuse(*args):
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(os, "eventfd", refuse, raising=False)
        monkeypatch.setattr(os, "pipe", refuse)
    writer = StreamWriter(dataclasses.replace(settings, lease_ttl=30.0)).start()
    assert (writer._wake_fd >= 0) == (descriptors == "available")
    try:
        run = writer.open(run_id)
        for expected in range(1, 6):
            run.send(str(expected))
            give_up = time.monotonic() + 2.0
            while redis_client.xlen(f"sse:run:{run_id}") < expected:
                assert time.monotonic() < give_up, f"chunk {expected} not stored within 2 s"
                time.sleep(0.01)
            time.sleep(0.05)  # idle again before the next one
    finally:
        writer.stop(timeout=5)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_writer_flushes_on_uvloop_or_on_asyncio(settings, redis_client, run_id, monkeypatch,
                                                    loop):
    """The writer thread's loop is uvloop's where it is installed, asyncio's without it."""
    if loop == "uvloop":
        kind = pytest.importorskip("uvloop").Loop
    else:
        kind = asyncio.BaseEventLoop  # asyncio's own loops; uvloop's is not one
        monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    writer = StreamWriter(settings).start()
    try:
        assert isinstance(writer._loop, kind)
        run = writer.open(run_id)
        for i in range(3):
            run.send(str(i))
        run.finish()
        writer.flush(10)
    finally:
        writer.stop(timeout=5)
    assert [f["data"] for _, f in stored(redis_client, run_id)] == [
        "data: 0\n\n", "data: 1\n\n", "data: 2\n\n", "data: [DONE]\n\n"]


def test_a_pool_from_client_factory_gets_the_flush_connection_back(settings, redis_client,
                                                                    run_id):
    """The flushes hold a connection of the client's pool: a pool the writer's client does
    not own (shared by a ``client_factory``) has it back when the writer stops."""
    import redis.asyncio as aredis

    pool = aredis.BlockingConnectionPool.from_url(settings.redis_url, max_connections=4,
                                                  decode_responses=True)
    writer = StreamWriter(settings,
                          client_factory=lambda: aredis.Redis(connection_pool=pool)).start()
    try:
        run = writer.open(run_id)
        run.send("x")
        writer.flush(10)
        assert len(pool._in_use_connections) == 1  # the flushes' own, held between them
    finally:
        writer.stop(timeout=5)
    assert redis_client.xlen(f"sse:run:{run_id}") == 1
    assert not pool._in_use_connections


def test_writer_refuses_use_before_start_and_after_stop(settings, run_id):
    writer = StreamWriter(settings)
    with pytest.raises(WriterStateError, match="not running"):
        writer.open(run_id)
    writer.start()
    run = writer.open(run_id)
    writer.stop()
    with pytest.raises(WriterStateError):
        run.send("x")


def test_stop_flushes_everything_accepted(settings, redis_client, run_id):
    writer = StreamWriter(settings).start()
    run = writer.open(run_id)
    for i in range(2000):
        run.send(str(i))
    writer.stop()
    assert redis_client.xlen(f"sse:run:{run_id}") == 2000
