"""Runs through a real in-process Celery worker (threads pool) and a real server."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from celery.exceptions import TaskRevokedError
from worker_helpers import observed, read_run, stream_settings, texts

from streaming.control import end_run, mark_pending, request_cancel
from streaming.reader import read_events
from streaming.wire import RunKeys, Terminal
from streaming.writer import StreamWriter
from tasks.api import Runs
from tests.waiting import wait_for
from worker.config import WorkerConfig

pytestmark = pytest.mark.usefixtures("stream_worker")
TEXT = "Streams of text, résumé and naïve café: every piece arrives in order. ✓"


def ending(event) -> dict:
    return json.loads(event.data)


def test_demo_text_concatenates_to_the_input_and_success_waits_for_storage(
        runs, stream_app, redis_client, reader_client, worker_config):
    run_id = runs.start("demo", {"text": TEXT, "chunk_size": 7, "rate": 500})
    summary = stream_app.AsyncResult(run_id).get(timeout=30)

    # The task reported success: every chunk and the ending are already stored.
    entries = redis_client.xrange(f"sse:run:{run_id}")
    assert entries[-1][1].get("complete") == "true"
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert texts(events) == TEXT
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].terminal is Terminal.DONE
    chunks = -(-len(TEXT) // 7)
    assert summary["chunks"] == chunks and summary["ending"] == "done"
    assert summary["last_seq"] == chunks + 1 == events[-1].seq
    assert summary["bytes"] >= len(TEXT.encode()) and summary["seconds"] >= 0


def test_text_json_and_named_events_are_framed(runs, reader_client, worker_config):
    events = read_run(reader_client, runs.start("test.mixed"), worker_config.streaming)
    assert [(e.event, e.data) for e in events[:-1]] == [
        ("message", "plain text"), ("message", '{"json": true}'), ("message", "[1, 2]"),
        ("status", "thinking"), ("usage", '{"tokens": 3}'), ("message", "two\nlines"),
    ]
    assert events[-1].terminal is Terminal.DONE


def test_a_chunk_without_framing_ends_the_run_with_an_error(runs, reader_client, worker_config):
    events = read_run(reader_client, runs.start("test.mixed", {"bad": True}),
                      worker_config.streaming)
    assert len(events) == 7 and events[-1].terminal is Terminal.ERROR
    error = ending(events[-1])["error"]
    assert error["type"] == "UnsupportedChunk" and "not int" in error["message"]


@pytest.mark.fault
def test_unknown_generator_fails_fast_with_a_clear_error(runs, stream_app, reader_client,
                                                         worker_config):
    run_id = runs.start("os.system", {"command": "true"})
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert len(events) == 1 and events[0].terminal is Terminal.ERROR
    error = ending(events[0])["error"]
    assert error["type"] == "UnknownGenerator" and "'os.system'" in error["message"]
    assert "demo" in error["message"]  # names what is registered
    result = stream_app.AsyncResult(run_id)
    result.get(timeout=10, propagate=False)
    assert result.state == "FAILURE"


@pytest.mark.parametrize(("params", "expected"), [
    (["not", "an", "object"], "params must be a JSON object, got list"),
    ({"text": 5}, "text: Input should be a valid string"),
    ({"text": "a", "rate": -1}, "rate: Input should be greater than 0"),
    ({"text": "a", "chunk_size": "8"}, "chunk_size: Input should be a valid integer"),
    ({"text": "a", "shell": "rm"}, "shell: Extra inputs are not permitted"),
])
@pytest.mark.fault
def test_bad_params_end_the_run_with_an_error_naming_the_field(
        params, expected, stream_app, redis_client, reader_client, worker_config):
    run_id = f"run-{uuid.uuid4().hex}"
    mark_pending(redis_client, run_id, worker_config.streaming)
    # Sent raw, as any producer could: the worker itself must refuse it.
    stream_app.send_task("tasks.generate", task_id=run_id,
                         kwargs={"run_id": run_id, "generator": "demo", "params": params})
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert len(events) == 1
    error = ending(events[0])["error"]
    assert error["type"] == "InvalidParams" and expected in error["message"]


def test_generator_error_ends_with_type_and_message_but_no_traceback(
        runs, stream_app, reader_client, worker_config):
    run_id = runs.start("demo.fail", {"after": 2, "message": "upstream broke", "rate": 100})
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert [e.terminal for e in events] == [None, None, Terminal.ERROR]
    error = ending(events[-1])["error"]
    assert error == {"kind": "error", "type": "DemoFailure", "message": "upstream broke"}
    assert "Traceback" not in events[-1].data
    result = stream_app.AsyncResult(run_id)
    result.get(timeout=10, propagate=False)
    assert result.state == "FAILURE"


def cancel_after_first_chunk(runs: Runs, reader_client, settings, run_id: str):
    """Cancel once the first chunk is read; the events and the seconds until the ending."""
    events = []
    started = None
    for event in runs_reader(reader_client, run_id, settings):
        events.append(event)
        if started is None:
            started = time.monotonic()
            assert runs.cancel(run_id, "user pressed stop")
    return events, time.monotonic() - started


def runs_reader(client, run_id, settings):
    return read_events(client, run_id, settings)


@pytest.mark.fault
def test_cancel_reaches_an_async_generator_within_a_second(runs, stream_app, reader_client,
                                                           worker_config):
    run_id = runs.start("demo", {"text": "x" * 100, "chunk_size": 1, "rate": 1})
    events, seconds = cancel_after_first_chunk(runs, reader_client, worker_config.streaming,
                                               run_id)
    assert events[-1].terminal is Terminal.CANCELLED
    assert ending(events[-1]) == {"cancelled": {"reason": "user pressed stop"}}
    assert seconds < 1.0
    with pytest.raises(TaskRevokedError):  # Celery's state of a cancelled task
        stream_app.AsyncResult(run_id).get(timeout=10)
    assert stream_app.AsyncResult(run_id).state == "REVOKED"


@pytest.mark.fault
def test_cancel_stops_and_closes_a_sync_generator_within_a_second(runs, reader_client,
                                                                  worker_config):
    run_id = runs.start("test.ticks", {"interval": 0.5})
    events, seconds = cancel_after_first_chunk(runs, reader_client, worker_config.streaming,
                                               run_id)
    assert events[-1].terminal is Terminal.CANCELLED and seconds < 1.0
    assert len(events) <= 4
    assert observed[run_id]["closed"] is True


def test_a_run_cancelled_while_queued_never_starts_its_generator(
        stream_app, redis_client, reader_client, worker_config):
    run_id = f"run-{uuid.uuid4().hex}"
    mark_pending(redis_client, run_id, worker_config.streaming)
    assert request_cancel(redis_client, run_id, worker_config.streaming, "changed my mind")
    stream_app.send_task("tasks.generate", task_id=run_id,
                         kwargs={"run_id": run_id, "generator": "test.ticks", "params": {}})
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert [e.terminal for e in events] == [Terminal.CANCELLED]
    assert ending(events[0]) == {"cancelled": {"reason": "changed my mind"}}
    assert run_id not in observed


def test_a_revoked_queued_task_gets_its_ending_from_the_worker(
        stream_app, redis_client, reader_client, worker_config):
    run_id = f"run-{uuid.uuid4().hex}"
    mark_pending(redis_client, run_id, worker_config.streaming)
    stream_app.send_task("tasks.generate", task_id=run_id, countdown=1.5,
                         kwargs={"run_id": run_id, "generator": "test.ticks", "params": {}})
    stream_app.control.revoke(run_id)  # no cancel flag: only the worker's endings can end it
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert [e.terminal for e in events] == [Terminal.CANCELLED]
    assert ending(events[0]) == {"cancelled": {"reason": "revoked"}}
    assert run_id not in observed


def test_a_reader_leaving_does_not_cancel_the_run(runs, stream_app, reader_client,
                                                  worker_config):
    run_id = runs.start("demo", {"text": TEXT, "chunk_size": 4, "rate": 50})
    reader = iter(runs_reader(reader_client, run_id, worker_config.streaming))
    next(reader)
    del reader
    assert stream_app.AsyncResult(run_id).get(timeout=30)["ending"] == "done"


def test_a_retried_task_continues_the_run_after_a_restarted_event(
        runs, stream_app, reader_client, worker_config):
    run_id = runs.start("test.flaky", {"fail_attempts": 1, "chunks": 2})
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert [(e.seq, e.event, json.loads(e.data)) for e in events[:-1]] == [
        (1, "message", {"attempt": 1, "index": 0}),
        (2, "message", {"attempt": 1, "index": 1}),
        # test.flaky is not resumable: the retry starts over, and says so.
        (3, "restarted", {"attempt": 2, "resume": False, "chunks": 0, "last_seq": 2}),
        (4, "message", {"attempt": 2, "index": 0}),
        (5, "message", {"attempt": 2, "index": 1}),
    ]
    assert events[-1].seq == 6 and events[-1].terminal is Terminal.DONE
    summary = stream_app.AsyncResult(run_id).get(timeout=10)
    assert summary["attempt"] == 2 and summary["last_seq"] == 6


def test_transient_errors_past_max_retries_end_the_run(runs, reader_client, worker_config):
    run_id = runs.start("test.flaky", {"fail_attempts": 99, "chunks": 0})
    events = read_run(reader_client, run_id, worker_config.streaming)
    restarts = [e for e in events if e.event == "restarted"]
    assert len(restarts) == worker_config.max_retries
    assert ending(events[-1])["error"]["type"] == "Flaky"


@pytest.mark.fault
def test_a_duplicate_delivery_ends_quietly_while_the_run_is_served(
        stream_app, redis_client, reader_client, worker_config):
    run_id = f"run-{uuid.uuid4().hex}"
    writer = StreamWriter(worker_config.streaming).start()
    try:
        holder = writer.open(run_id)  # a live attempt elsewhere, refreshing its lease
        holder.send("from the live attempt")
        holder.flush()
        duplicate = stream_app.send_task(
            "tasks.generate", task_id=run_id,
            kwargs={"run_id": run_id, "generator": "demo", "params": {"text": "dup"}})
        assert duplicate.get(timeout=20) == {"run_id": run_id, "ending": "busy"}
        holder.finish()
        # A late delivery of the ended run writes nothing; its task's state follows the
        # stored ending.
        again = stream_app.send_task(
            "tasks.generate", kwargs={"run_id": run_id, "generator": "demo",
                                      "params": {"text": "late"}})
        assert again.get(timeout=20) == {"run_id": run_id, "ending": "done", "last_seq": 2}
    finally:
        writer.stop()
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert [e.data for e in events] == ["from the live attempt", "[DONE]"]


def test_a_run_started_too_often_ends_lost(stream_app, redis_client, reader_client,
                                           worker_config):
    run_id = f"run-{uuid.uuid4().hex}"
    meta = RunKeys.for_run(run_id).meta
    redis_client.hset(meta, mapping={"attempt": worker_config.max_attempts, "seq": 0})
    redis_client.expire(meta, 600)
    summary = stream_app.send_task(
        "tasks.generate", task_id=run_id,
        kwargs={"run_id": run_id, "generator": "demo", "params": {"text": "x"}}).get(timeout=20)
    assert summary["ending"] == "lost"
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert events[-1].terminal is Terminal.LOST
    assert "giving up" in ending(events[-1])["error"]["message"]


def test_progress_is_published_as_the_streaming_state(runs, stream_app, worker_config):
    run_id = runs.start("demo", {"text": "y" * 40, "chunk_size": 1, "rate": 20})
    deadline = time.monotonic() + 15
    state, info = runs.task_state(run_id)
    while state != "STREAMING" or info.get("chunks", 0) < 2:
        assert time.monotonic() < deadline, f"never saw progress: {state} {info}"
        time.sleep(0.05)
        state, info = runs.task_state(run_id)
    assert info["run_id"] == run_id and info["last_seq"] >= 1 and info["attempt"] == 1
    stream_app.AsyncResult(run_id).get(timeout=15)
    assert runs.task_state(run_id)[0] == "SUCCESS"


def test_start_returns_a_pending_unguessable_run_with_secrets_hidden(
        redis_client, worker_config: WorkerConfig):
    # A queue no worker consumes: the run stays queued, and its message can be read.
    config = WorkerConfig(streaming=stream_settings(worker_config.streaming.redis_url),
                          broker_url=worker_config.broker_url,
                          result_backend=worker_config.result_backend,
                          queue=f"idle-{uuid.uuid4().hex}")
    runs = Runs.from_config(config)
    runs.schemas = None  # unknown keys are refused before enqueue; here: how Flower shows them
    try:
        run_id = runs.start("openai", {"prompt": "hi", "api_key": "sk-secret",
                                       "nested": {"Authorization": "Bearer x"}})
        assert re.fullmatch(r"run-[0-9a-f]{32}", run_id)
        status = runs.status(run_id)
        assert (status.state, status.attempt) == ("pending", 0)
        message = json.loads(redis_client.lindex(config.queue, 0))
        assert message["headers"]["id"] == run_id
        assert message["headers"]["shadow"] == "tasks.generate[openai]"
        shown = message["headers"]["kwargsrepr"]
        assert "sk-secret" not in shown and "Bearer" not in shown and "'***'" in shown
        assert runs.cancel(run_id) is True
        assert runs.cancel(f"run-{uuid.uuid4().hex}") is False  # unknown run
    finally:
        redis_client.delete(config.queue)


@pytest.mark.fault
def test_a_stale_attempt_is_fenced_off_and_ends_quietly(runs, stream_app, reader_client,
                                                        worker_config):
    run_id = runs.start("test.usurped")
    assert stream_app.AsyncResult(run_id).get(timeout=20)["ending"] == "fenced"
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert [(e.event, e.data) for e in events] == [
        ("message", "from the stale attempt"),
        ("restarted", '{"attempt": 2, "resume": false, "chunks": 0, "last_seq": 1}'),
        ("message", "from the newer attempt"), ("message", "[DONE]")]


@pytest.mark.fault
def test_a_run_ended_by_another_while_its_task_runs_stops_the_task_quietly(
        runs, stream_app, reader_client, redis_client, worker_config):
    """A sweep or a reader stored the ending (the worker was cut off past the requeue grace):
    the task writes nothing more, and its Celery state is the stored ending, not the
    writer's refusal."""
    run_id = runs.start("demo", {"text": "q" * 400, "chunk_size": 1, "rate": 20})
    wait_for(lambda: runs.task_state(run_id)[0] == "STREAMING", 15, "the run streams")
    ended = end_run(redis_client, run_id, worker_config.streaming, Terminal.LOST,
                    "ended from outside", when="always")
    assert ended is Terminal.LOST
    wait_for(lambda: runs.task_state(run_id)[0] == "FAILURE", 15, "the task's state follows")
    error = runs.task_state(run_id)[1]
    assert type(error).__name__ == "RunEnded" and "lost: ended from outside" in str(error)
    events = read_run(reader_client, run_id, worker_config.streaming)
    assert events[-1].terminal is Terminal.LOST and "ended from outside" in events[-1].data
    time.sleep(0.5)
    assert read_run(reader_client, run_id, worker_config.streaming) == events
