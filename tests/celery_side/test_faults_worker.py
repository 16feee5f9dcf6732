"""Faults around real prefork workers: redelivery, a lost or unreachable or full store, cold
shutdown, and a pool that replaces its children after every task.

Each test starts its own ``celery -A worker worker`` (see ``worker_procs``), so what it breaks
(its store, its queue, its processes) is its own.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid

import pytest
import redis
from kombu import Connection
from worker_helpers import read_run, restarts, shown_text, texts
from worker_procs import WorkerProcess

from streaming.client import sync_client
from streaming.embedded import EmbeddedServer
from streaming.reader import read_events
from streaming.wire import Terminal
from tests.proxy import Proxy, port_of
from tests.waiting import wait_for, within

pytestmark = [pytest.mark.fault, pytest.mark.slow]
TEXT = "Every chunk arrives once, in order, whatever happens to the worker. " * 2


def send_raw(worker: WorkerProcess, generator: str, params: object, run_id: str | None = None):
    """Send a run's message as any producer could (no pending marker in the store)."""
    run_id = run_id or f"run-{uuid.uuid4().hex}"
    result = worker.runs.celery.send_task(
        "tasks.generate", task_id=run_id,
        kwargs={"run_id": run_id, "generator": generator, "params": params})
    return run_id, result


def task_failure(worker: WorkerProcess, run_id: str, timeout: float) -> BaseException:
    result = worker.runs.celery.AsyncResult(run_id)
    result.get(timeout=timeout, propagate=False)
    assert result.state == "FAILURE", (result.state, result.info)
    return result.info


def assert_contiguous(events) -> None:
    """Stored events are numbered 1, 2, ... with nothing missing or repeated."""
    seqs = [e.seq for e in events if e.seq is not None]
    assert seqs == list(range(1, len(seqs) + 1))


# -- case 2: a run longer than the broker's visibility timeout ---------------------------------


def restore_unacked(broker_url: str, task_id: str, older_than: float) -> int:
    """What kombu's sweep of the Redis broker does to a message unacknowledged for longer than
    the visibility timeout (put it back in its queue), for one task's message only: the
    sweep itself runs every ~100 s by default (restore interval x throttle), and would also
    redeliver the messages of other tests' workers on this broker."""
    restored = 0
    with Connection(broker_url) as connection:
        channel = connection.default_channel
        client = channel.client
        ceiling = time.time() - older_than
        for tag, payload in client.hgetall(channel.unacked_key).items():
            message = json.loads(payload)[0]
            sent = client.zscore(channel.unacked_index_key, tag)
            if message["headers"]["id"] == task_id and sent is not None and sent < ceiling:
                channel.qos.restore_by_tag(tag, client)
                restored += 1
    return restored


def test_a_redelivered_run_is_written_by_one_attempt_only(redis_url, worker_factory):
    """The message comes back while its first attempt still streams; the copy finds the run
    held by a live writer and ends without writing (fenced at its claim)."""
    worker = worker_factory(redis_url, WORKER_VISIBILITY_TIMEOUT="2")
    run_id = worker.runs.start("demo", {"text": TEXT, "chunk_size": 2, "rate": 12})
    worker.wait_progress(run_id, chunks=1)
    time.sleep(2.5)  # past the visibility timeout, the run still going (about 6 s in all)
    assert restore_unacked(redis_url, run_id, older_than=2.0) == 1
    events = read_run(worker.reader, run_id, worker.config.streaming)
    assert texts(events) == TEXT and events[-1].terminal is Terminal.DONE
    assert "restarted" not in [e.event for e in events]
    assert_contiguous(events)
    status = worker.runs.status(run_id)
    assert (status.attempt, status.last_seq) == (1, events[-1].seq)
    worker.wait_for_log("is served by another live attempt; this delivery ends", 15)
    assert worker.output().count(f"[{run_id}] received") == 2


# -- case 5: the store restarted empty mid-run -------------------------------------------------


def test_a_store_restarted_empty_mid_run_fails_the_task_and_ends_readers(
        redis_url, private_server, worker_factory):
    worker = worker_factory(private_server.url, CELERY_BROKER_URL=redis_url,
                            CELERY_RESULT_BACKEND=redis_url)
    run_id = worker.runs.start("demo", {"text": TEXT, "chunk_size": 2, "rate": 10})
    worker.wait_progress(run_id, chunks=3)
    events = []
    reader = threading.Thread(target=lambda: events.extend(
        read_events(worker.reader, run_id, worker.config.streaming)), daemon=True)
    reader.start()
    time.sleep(0.3)
    private_server.restart()
    restarted = time.monotonic()
    reader.join(15)
    assert not reader.is_alive(), "the reader hangs on a store that lost the run"
    assert events[-1].terminal is Terminal.LOST and "vanished" in events[-1].data
    assert_contiguous(events)
    error = task_failure(worker, run_id, timeout=15)
    assert type(error).__name__ == "StreamGoneError", error
    assert time.monotonic() - restarted < 15
    # Nothing was written again under a new numbering, and the worker goes on serving.
    assert sync_client(worker.config.streaming).exists(f"sse:run:{run_id}") == 0
    again = worker.runs.start("demo", {"text": "after the restart"})
    assert texts(read_run(worker.reader, again, worker.config.streaming)) == "after the restart"


# -- case 22: the broker restarts while a run streams -----------------------------------------


def test_a_broker_restarted_mid_run_keeps_the_worker_consuming(tmp_path, worker_factory):
    """Store, broker and result backend are one server, killed mid-run and started again with
    its data (AOF). The run goes on to its end and its message is acknowledged, and the worker
    reconnects and takes the next run. Celery 5.7 alone shut the worker down here
    (``streaming.celery.consumer``)."""
    server = EmbeddedServer(extra_args=["--appendonly", "yes", "--appendfsync", "always",
                                        "--dir", str(tmp_path)]).start()
    try:
        worker = worker_factory(server.url)
        run_id = worker.runs.start("demo", {"text": TEXT, "chunk_size": 2, "rate": 20})
        worker.wait_progress(run_id, chunks=3)
        server.kill()
        time.sleep(1)
        server.start()
        events = read_run(worker.reader, run_id, worker.config.streaming)
        assert events[-1].terminal is Terminal.DONE, events[-1]
        assert shown_text(events) == TEXT
        broker = redis.Redis.from_url(server.url)
        wait_for(lambda: broker.hlen("unacked") == 0, 10, "the run's message acknowledged")
        broker.close()
        assert "Unrecoverable error" not in worker.output()
        again = worker.runs.start("demo", {"text": "after the restart"})
        events = within(20, lambda: read_run(worker.reader, again, worker.config.streaming))
        assert texts(events) == "after the restart"
    finally:
        server.stop()


# -- case 8: children replaced after every task ------------------------------------------------


def test_fifty_runs_on_four_children_recycled_after_each_task(redis_url, worker_factory):
    worker = worker_factory(redis_url, "-c", "4", "--max-tasks-per-child", "1")
    started = time.monotonic()
    run_ids = [worker.runs.start("demo", {"text": f"run {i}: " + TEXT[:40], "chunk_size": 4,
                                          "rate": 500}) for i in range(50)]
    for i, run_id in enumerate(run_ids):
        events = read_run(worker.reader, run_id, worker.config.streaming)
        assert texts(events) == f"run {i}: " + TEXT[:40]
        assert events[-1].terminal is Terminal.DONE
        assert_contiguous(events)
    pids = {worker.runs.celery.AsyncResult(r).get(timeout=30)["worker_pid"] for r in run_ids}
    assert len(pids) == 50  # one child per task: each started its own writer and loop
    assert time.monotonic() - started < 120
    log = worker.output()
    assert "attached to a different loop" not in log
    assert "Traceback" not in log and "ERROR/" not in log, log[-3000:]


# -- case 9: the store unreachable while the pool starts ---------------------------------------


def test_children_start_without_the_store_and_runs_wait_for_it_within_the_deadline(
        redis_url, worker_factory):
    proxy = Proxy(port_of(redis_url))
    proxy.set_refuse(True)
    try:
        worker = worker_factory(proxy.url, CELERY_BROKER_URL=redis_url,
                                CELERY_RESULT_BACKEND=redis_url,
                                STREAMING_UNAVAILABLE_TIMEOUT="3")
        children = set(worker.children())
        assert len(children) == 2
        # The store stays down past the deadline: the run fails with a clear error.
        failed, _ = send_raw(worker, "demo", {"text": "never written"})
        sent = time.monotonic()
        error = task_failure(worker, failed, timeout=30)
        bound = 3 + worker.config.streaming.lease_ttl * 1.5  # the deadline, and the claim's wait
        assert type(error).__name__ == "StoreUnavailableError", error
        assert bound - 0.5 < time.monotonic() - sent < bound + 5
        # The store comes back within the deadline: the run goes through.
        served, result = send_raw(worker, "demo", {"text": "written late", "chunk_size": 3})
        time.sleep(1.0)
        proxy.set_refuse(False)
        assert result.get(timeout=30)["ending"] == "done"
        events = read_run(worker.reader, served, worker.config.streaming)
        assert texts(events) == "written late" and events[-1].terminal is Terminal.DONE
        assert set(worker.children()) == children  # no child died or was replaced
        log = worker.output()
        assert "Timed out waiting for UP message" not in log
        assert "did not start" not in log and "failed to start" not in log
    finally:
        proxy.close()


# -- case 10: cold shutdown (SIGQUIT) ---------------------------------------------------------


def test_cold_shutdown_mid_run_leaves_no_unterminated_stream(redis_url, worker_factory):
    """SIGQUIT kills the pool at once; the requeued message continues the run on the next
    worker (``restarted`` with ``resume``, then ``done``): readers that wait less than
    ``producer_timeout`` see the run go on. (Readers that wait longer get a stored ``lost``,
    and a later delivery then writes nothing: see ``test_faults_endings``.)"""
    first = worker_factory(redis_url)
    run_id = first.runs.start("demo", {"text": TEXT, "chunk_size": 3, "rate": 15})
    first.wait_progress(run_id, chunks=3)
    assert first.process is not None
    first.process.send_signal(signal.SIGQUIT)
    first.process.wait(20)
    assert "Cold shutdown" in first.output()

    second = worker_factory(redis_url, queue=first.queue)
    events = read_run(second.reader, run_id, second.config.streaming)
    [restart] = restarts(events)
    assert restart["attempt"] == 2 and restart["resume"] is True
    assert shown_text(events) == TEXT and events[-1].terminal is Terminal.DONE
    assert_contiguous(events)


# -- case 13: the store at maxmemory with noeviction ------------------------------------------


def test_a_full_store_ends_the_run_with_a_clear_error(redis_url, private_server, worker_factory):
    """Writes are refused; the task's sends fail within the buffer bound (no unbounded
    buffering), and the run's ending names why once the store has room for it again."""
    worker = worker_factory(private_server.url, CELERY_BROKER_URL=redis_url,
                            CELERY_RESULT_BACKEND=redis_url,
                            STREAMING_MAX_BUFFER_BYTES="65536", STREAMING_BUFFER_TIMEOUT="0.5",
                            STREAMING_UNAVAILABLE_TIMEOUT="2")
    admin = sync_client(worker.config.streaming)
    run_id = worker.runs.start("demo", {"text": "x" * 1_000_000, "chunk_size": 1000,
                                        "rate": 200})
    worker.wait_progress(run_id, chunks=5)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", admin.info("memory")["used_memory"] + 256 * 1024)
    stalled = wait_stalled(worker, run_id, quiet=1.5, timeout=20)
    admin.config_set("maxmemory", 0)
    events = read_run(worker.reader, run_id, worker.config.streaming)
    assert events[-1].terminal is Terminal.ERROR, events[-1]
    error = json.loads(events[-1].data)["error"]
    assert error["type"] in ("BufferFullError", "StoreUnavailableError"), error
    assert "maxmemory" in error["message"]  # the cause, not only the writer's symptom
    assert_contiguous(events)
    assert len(events) - 1 <= stalled + 64  # what it had sent, plus at most one buffer's worth
    assert type(task_failure(worker, run_id, timeout=15)).__name__ == error["type"]


def wait_stalled(worker: WorkerProcess, run_id: str, quiet: float, timeout: float) -> int:
    """Chunks sent once the run's progress has not moved for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the run never stalled"
        chunks = worker.runs.task_state(run_id)[1].get("chunks", 0)
        if chunks != last:
            last, since = chunks, time.monotonic()
        time.sleep(0.05)
    return last
