"""Lifecycle and crash behaviour with real ``celery -A worker worker -P prefork -c 2`` processes."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest
from worker_helpers import read_run, restarts, shown_text, texts
from worker_procs import WorkerProcess

from streaming.reader import read_events
from streaming.wire import Terminal

pytestmark = pytest.mark.slow
TEXT = "The quick brown fox jumps over the lazy dog; " * 3


@pytest.fixture(scope="module")
def prefork(redis_url: str) -> Iterator[WorkerProcess]:
    """A prefork worker with the defaults: acks late, requeue on worker lost."""
    worker = WorkerProcess(redis_url).start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def recycling(redis_url: str) -> Iterator[WorkerProcess]:
    """A prefork worker whose children run one task each and that does not requeue lost tasks."""
    worker = WorkerProcess(redis_url, "--max-tasks-per-child", "1",
                           WORKER_REJECT_ON_WORKER_LOST="false").start()
    yield worker
    worker.stop()


def events_of(worker: WorkerProcess, run_id: str):
    return read_run(worker.reader, run_id, worker.config.streaming)


def summary(worker: WorkerProcess, run_id: str) -> dict:
    return worker.runs.celery.AsyncResult(run_id).get(timeout=30)


def test_runs_on_both_children_all_arrive(prefork):
    run_ids = [prefork.runs.start("demo", {"text": TEXT, "chunk_size": 9, "rate": 15})
               for _ in range(4)]
    for run_id in run_ids:
        events = events_of(prefork, run_id)
        assert texts(events) == TEXT and events[-1].terminal is Terminal.DONE
    pids = {summary(prefork, run_id)["worker_pid"] for run_id in run_ids}
    assert pids <= set(prefork.children()) and len(pids) == 2


@pytest.mark.fault
def test_cooperative_cancel_ends_the_run_within_a_second(prefork):
    run_id = prefork.runs.start("demo", {"text": "z" * 60, "chunk_size": 1, "rate": 1})
    events = iter(read_events(prefork.reader, run_id, prefork.config.streaming))
    next(events)
    started = time.monotonic()
    assert prefork.runs.cancel(run_id, "stop")
    rest = list(events)
    assert rest[-1].terminal is Terminal.CANCELLED
    assert time.monotonic() - started < 1.0


@pytest.mark.fault
def test_sigkill_of_a_child_restarts_the_run_in_another_which_continues_exactly(prefork):
    """Finding 4: the requeued attempt of a resumable generator (``demo``) continues after the
    chunks stored before; the text joined under the client rule is the input, exactly."""
    run_id = prefork.runs.start("demo", {"text": TEXT, "chunk_size": 3, "rate": 10})
    victim = prefork.wait_progress(run_id, chunks=3)["worker_pid"]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    events = events_of(prefork, run_id)
    [restart] = restarts(events)
    at = [e.event for e in events].index("restarted")
    assert restart["attempt"] == 2 and restart["resume"] is True
    assert restart["chunks"] == at and restart["last_seq"] == events[at - 1].seq
    assert shown_text(events) == TEXT  # nothing repeated, nothing missing
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].terminal is Terminal.DONE
    assert time.monotonic() - killed < 30
    assert summary(prefork, run_id)["worker_pid"] != victim


@pytest.mark.fault
def test_a_restarted_generator_that_cannot_resume_starts_over(prefork):
    """A generator not registered resumable starts over; ``restarted`` says ``resume``
    false, and a client that drops the earlier output shows the whole output once."""
    run_id = prefork.runs.start("test.count", {"count": 30, "rate": 10})
    victim = prefork.wait_progress(run_id, chunks=3)["worker_pid"]
    os.kill(victim, signal.SIGKILL)
    events = events_of(prefork, run_id)
    [restart] = restarts(events)
    assert (restart["attempt"], restart["resume"], restart["chunks"]) == (2, False, 0)
    whole = "".join(f"{i}," for i in range(30))
    at = [e.event for e in events].index("restarted")
    assert shown_text(events) == texts(events[at:]) == whole
    assert whole.startswith(texts(events[:at])) and len(texts(events[:at])) >= 6
    assert events[-1].terminal is Terminal.DONE


@pytest.mark.fault
def test_a_stuck_run_is_terminated_and_ended_cancelled(prefork):
    # demo.fail sleeps in time.sleep between chunks: it cannot see a cancel for 20 s.
    run_id = prefork.runs.start("demo.fail", {"after": 5, "rate": 0.05})
    events = iter(read_events(prefork.reader, run_id, prefork.config.streaming))
    next(events)
    started = time.monotonic()
    assert prefork.runs.cancel(run_id, "stuck", grace=1.0)
    rest = list(events)
    assert [e.terminal for e in rest] == [Terminal.CANCELLED]
    assert json.loads(rest[0].data) == {"cancelled": {"reason": "stuck"}}
    assert time.monotonic() - started < 15
    # The pool replaced the killed child and goes on serving.
    again = prefork.runs.start("demo", {"text": "after"})
    assert events_of(prefork, again)[-1].terminal is Terminal.DONE


@pytest.mark.fault
def test_soft_time_limit_ends_the_run_timeout(prefork):
    run_id = prefork.runs.start("demo.fail", {"after": 5, "rate": 0.1}, soft_time_limit=1,
                                time_limit=20)
    events = events_of(prefork, run_id)
    assert events[-1].terminal is Terminal.TIMEOUT
    assert "time limit (1" in json.loads(events[-1].data)["error"]["message"]
    result = prefork.runs.celery.AsyncResult(run_id)
    result.get(timeout=10, propagate=False)
    assert result.state == "FAILURE"


@pytest.mark.fault
def test_hard_time_limit_is_ended_timeout_by_the_main_process(prefork):
    # Celery arms the hard limit when the soft one fires; this generator ignores the soft one.
    run_id = prefork.runs.start("test.stubborn", {"seconds": 30}, soft_time_limit=1,
                                time_limit=2)
    started = time.monotonic()
    events = events_of(prefork, run_id)
    assert [e.terminal for e in events] == [None, Terminal.TIMEOUT]
    assert "hard time limit" in json.loads(events[-1].data)["error"]["message"]
    assert time.monotonic() - started < 15


def test_children_recycled_after_each_task_lose_nothing(recycling):
    run_ids = []
    for _ in range(3):
        run_ids.append(recycling.runs.start("demo", {"text": TEXT, "chunk_size": 20,
                                                     "rate": 200}))
        assert texts(events_of(recycling, run_ids[-1])) == TEXT
    pids = [summary(recycling, run_id)["worker_pid"] for run_id in run_ids]
    assert len(set(pids)) == 3


@pytest.mark.fault
def test_sigkill_without_requeue_ends_the_run_lost_in_bounded_time(recycling):
    run_id = recycling.runs.start("demo", {"text": TEXT, "chunk_size": 3, "rate": 10})
    victim = recycling.wait_progress(run_id, chunks=2)["worker_pid"]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    events = events_of(recycling, run_id)
    assert events[-1].terminal is Terminal.LOST and events[-1].seq is not None  # stored
    assert "lost" in json.loads(events[-1].data)["error"]["message"]
    assert not [e for e in events if e.event == "restarted"]
    assert time.monotonic() - killed < 30


@pytest.mark.fault
def test_sigterm_mid_run_finishes_and_flushes(redis_url):
    worker = WorkerProcess(redis_url).start()
    try:
        run_id = worker.runs.start("demo", {"text": TEXT, "chunk_size": 5, "rate": 10})
        worker.wait_progress(run_id, chunks=1)
        assert worker.terminate(timeout=60) == 0
        events = events_of(worker, run_id)
        assert texts(events) == TEXT and events[-1].terminal is Terminal.DONE
        assert "Warm shutdown" in worker.output()
    finally:
        worker.stop()
