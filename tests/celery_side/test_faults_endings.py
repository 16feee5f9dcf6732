"""Every run ends, truthfully and within a bound, whatever fails (issue 10, the worker's side).

Each test starts its own ``celery -A worker worker -P prefork`` processes (``worker_procs``)
with short deadlines, breaks something for real (SIGKILL of a whole worker, a queue nobody
consumes, the store cut or stalled behind a TCP proxy) and checks that the ending is a stored
fact (it has a seq id), that it comes within the documented bound, and that Celery's state
follows it. Test names say which finding of issue 10 they pin.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import uuid

import pytest
from worker_helpers import read_run, stream_settings
from worker_procs import WorkerProcess

from streaming.client import sync_client
from streaming.reader import read_events
from streaming.wire import Terminal
from tasks.api import Runs
from tests.proxy import Proxy, port_of
from tests.waiting import wait_for, within
from worker.config import WorkerConfig

pytestmark = [pytest.mark.fault, pytest.mark.slow]
TEXT = "Every run ends once, with an ending every reader agrees on. " * 4
#: Short deadlines (seconds) for these tests; the defaults suit runs of minutes.
PRODUCER_TIMEOUT = 3.0
QUEUE_TIMEOUT = 3.0
SWEEP_INTERVAL = 0.5
SHORT = {"STREAMING_PRODUCER_TIMEOUT": str(PRODUCER_TIMEOUT),
         "STREAMING_QUEUE_TIMEOUT": str(QUEUE_TIMEOUT),
         "WORKER_SWEEP_INTERVAL": str(SWEEP_INTERVAL)}
#: What a shared, busy machine may add to any bound: scheduling, a reader's liveness check,
#: a sweep round, a process start.
SLACK = 8.0


def short_settings(redis_url: str):
    return stream_settings(redis_url, producer_timeout=PRODUCER_TIMEOUT,
                           queue_timeout=QUEUE_TIMEOUT)


def celery_state(runs: Runs, run_id: str) -> tuple[str, object]:
    return runs.task_state(run_id)


def kill_whole_worker(worker: WorkerProcess) -> None:
    """SIGKILL the main process and its children at once (the group it was started in)."""
    assert worker.process is not None
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(10)


# -- findings 5 and 7: the whole worker killed, not restarted ---------------------------------


def test_finding_5_7_a_whole_worker_killed_gets_a_stored_lost_in_bound_and_celery_follows(
        redis_url, worker_factory):
    """Readers get a stored ``lost`` within lease_ttl + producer_timeout + slack, and the
    sweep of another worker makes the task's Celery state FAILURE (not STREAMING forever)."""
    watcher = worker_factory(redis_url, **SHORT)  # another worker, on its own queue
    victim = worker_factory(redis_url, **SHORT)
    settings = short_settings(redis_url)
    run_id = victim.runs.start("demo", {"text": TEXT, "chunk_size": 2, "rate": 5})
    victim.wait_progress(run_id, chunks=2)
    events: list = []
    reader = threading.Thread(target=lambda: events.extend(
        read_events(victim.reader, run_id, settings)), daemon=True)
    reader.start()
    kill_whole_worker(victim)
    killed = time.monotonic()
    bound = settings.lease_ttl + settings.producer_timeout
    reader.join(bound + SLACK)
    took = time.monotonic() - killed
    assert not reader.is_alive(), f"no ending {bound + SLACK} s after the worker was killed"
    print(f"whole worker SIGKILL: lost stored and read after {took:.1f} s (bound {bound} s)")
    assert events[-1].terminal is Terminal.LOST
    assert events[-1].seq is not None, "the ending is one reader's opinion, not stored"
    again = read_run(watcher.reader, run_id, settings)
    assert (again[-1].seq, again[-1].terminal) == (events[-1].seq, Terminal.LOST)
    wait_for(lambda: celery_state(watcher.runs, run_id)[0] == "FAILURE", SWEEP_INTERVAL + SLACK,
             "the task's Celery state follows the stored ending")
    assert "lost" in str(celery_state(watcher.runs, run_id)[1])


# -- finding 1: a queued run whose task never starts; a stranded message ------------------------


def test_finding_1_a_run_never_started_gets_a_stored_timeout_and_a_late_delivery_writes_nothing(
        redis_url, worker_factory):
    """The message sits in a queue nobody consumes (what a message stranded in the broker's
    unacked set amounts to): the queue deadline ends the run with a stored ``timeout``; when a
    worker finally gets the message, its claim finds the run ended and it writes nothing."""
    watcher = worker_factory(redis_url, **SHORT)
    idle_queue = f"idle-{uuid.uuid4().hex}"
    config = dataclasses.replace(watcher.config, queue=idle_queue,
                                 streaming=short_settings(redis_url))
    runs = Runs.from_config(config)
    try:
        run_id = runs.start("demo", {"text": "never streamed"})
        queued = time.monotonic()
        wait_for(lambda: runs.status(run_id).state == "ended", QUEUE_TIMEOUT + SLACK,
                 "a stored ending of the run that never started")
        took = time.monotonic() - queued
        print(f"queued, never started: timeout stored after {took:.1f} s "
              f"(queue_timeout {QUEUE_TIMEOUT} s)")
        events = read_run(watcher.reader, run_id, config.streaming)
        assert [(e.seq, e.terminal) for e in events] == [(1, Terminal.TIMEOUT)]
        wait_for(lambda: runs.task_state(run_id)[0] == "FAILURE", SWEEP_INTERVAL + SLACK,
                 "the task's Celery state follows the stored ending")
        late = worker_factory(redis_url, queue=idle_queue, **SHORT)
        late.wait_for_log(f"run {run_id} has already ended", 30)
        assert runs.status(run_id).last_seq == 1
        assert read_run(watcher.reader, run_id, config.streaming) == events
        assert runs.task_state(run_id)[0] == "FAILURE"
    finally:
        runs.client.delete(idle_queue)
        runs.client.close()


# -- finding 6: a store that is also the broker and result backend goes away --------------------


def direct_runs(redis_url: str, worker: WorkerProcess) -> Runs:
    """The runs API of the test itself, on the store directly (not through the proxy)."""
    config = WorkerConfig.from_env({"REDIS_URL": redis_url, "WORKER_QUEUE": worker.queue},
                                   streaming=short_settings(redis_url))
    return Runs.from_config(config)


@pytest.mark.parametrize("fault", ["stall", "cut"])
def test_finding_6_a_store_outage_bounds_the_task_when_it_is_also_broker_and_backend(
        redis_url, worker_factory, fault):
    """Store, broker and result backend are one server behind a proxy that stalls or refuses:
    the task stops waiting about ``unavailable_timeout`` after the fault (progress reports,
    cancel reads and result writes are bounded too), and once the store is back the run's
    ending is stored."""
    proxy = Proxy(port_of(redis_url))
    try:
        worker = worker_factory(proxy.url, STREAMING_UNAVAILABLE_TIMEOUT="3",
                                STREAMING_SOCKET_TIMEOUT="1", **SHORT)
        runs = direct_runs(redis_url, worker)
        run_id = runs.start("demo", {"text": "x" * 400, "chunk_size": 1, "rate": 20})
        worker.wait_progress(run_id, chunks=3)
        if fault == "stall":
            proxy.stall.set()
        else:
            proxy.set_refuse(True)
        broken = time.monotonic()
        worker.wait_for_log(f"run {run_id} stopped: the store stayed unreachable", 40)
        took = time.monotonic() - broken
        print(f"store {fault}: the task gave up after {took:.1f} s (unavailable_timeout 3 s)")
        # unavailable_timeout, then a few socket timeouts (a report, a result write).
        assert took < 3 + 4 * 1 + SLACK, "the task was held well past unavailable_timeout"
        proxy.stall.clear()
        proxy.set_refuse(False)
        back = time.monotonic()
        settings = short_settings(redis_url)
        reader = sync_client(settings, reader=True)
        events = within(settings.lease_ttl + settings.producer_timeout + SLACK,
                        lambda: read_run(reader, run_id, settings))
        reader.close()
        print(f"store back: ending {events[-1].terminal} read after "
              f"{time.monotonic() - back:.1f} s")
        assert events[-1].terminal in (Terminal.ERROR, Terminal.LOST)
        assert events[-1].seq is not None
        runs.client.close()
    finally:
        proxy.close()
