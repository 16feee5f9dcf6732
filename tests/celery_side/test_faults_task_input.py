"""Hostile input to the task (case 16, the worker side): every message a producer could send
that the worker must refuse, through a real in-process worker and a real server.

Each refusal is a clear error (a terminal ``error`` event with its type, and a failed task)
and nothing else is read, run or written: no generator starts, no key of a bad run id is
touched (MONITOR sees no command naming it).
"""

from __future__ import annotations

import json
import uuid

import pytest
from worker_helpers import observed, read_run

from streaming.control import mark_pending
from tests.monitor import Monitor

pytestmark = [pytest.mark.fault, pytest.mark.usefixtures("stream_worker")]
STREAM_COMMANDS = {"EVAL", "EVALSHA", "XADD", "XREAD", "XRANGE", "TYPE", "EXISTS"}


def send(stream_app, run_id, generator, params):
    return stream_app.send_task("tasks.generate", task_id=str(uuid.uuid4()),
                                kwargs={"run_id": run_id, "generator": generator,
                                        "params": params})


def refused_run(stream_app, redis_client, reader_client, worker_config, generator, params):
    run_id = f"run-{uuid.uuid4().hex}"
    mark_pending(redis_client, run_id, worker_config.streaming)
    result = send(stream_app, run_id, generator, params)
    events = read_run(reader_client, run_id, worker_config.streaming)
    result.get(timeout=20, propagate=False)
    assert result.state == "FAILURE"
    return run_id, events


@pytest.mark.parametrize("make_id", [
    lambda tag: "x" * 100 + tag,  # 132 characters
    lambda tag: f"run\n{tag}",
    lambda tag: f"run\x00{tag}",
    lambda tag: f"run*{tag}",
    lambda tag: f"sse:run:{tag}",
    lambda tag: f"run {tag}",
], ids=["too-long", "newline", "nul", "star", "colon", "space"])
def test_a_bad_run_id_fails_the_task_and_touches_no_key(stream_app, redis_url, make_id):
    tag = uuid.uuid4().hex
    monitor = Monitor(redis_url)
    try:
        start = monitor.mark()
        result = send(stream_app, make_id(tag), "test.ticks", {"count": 1})
        result.get(timeout=20, propagate=False)
        commands = monitor.since(start)
    finally:
        monitor.close()
    assert result.state == "FAILURE" and type(result.info).__name__ == "InvalidRunId"
    assert "run id" in str(result.info)
    naming = [c for c in commands if any(tag in arg for arg in c)]
    # Only Celery's own traffic may carry it (the task's result names the bad id).
    assert not [c for c in naming if c[0].upper() in STREAM_COMMANDS
                or any(arg.startswith("sse:") for arg in c)], naming


def test_a_run_id_that_is_not_a_string_fails_the_task(stream_app):
    result = send(stream_app, 12345, "test.ticks", {"count": 1})
    result.get(timeout=20, propagate=False)
    assert result.state == "FAILURE" and "must be a string" in str(result.info)


@pytest.mark.parametrize("generator", [
    "tests.celery_side.worker_helpers.ticks",  # an import path is never looked up
    "worker_helpers:ticks", "TEST.TICKS", "", ["test.ticks"], None,
], ids=repr)
def test_an_unregistered_generator_runs_nothing(stream_app, redis_client, reader_client,
                                               worker_config, generator):
    run_id, events = refused_run(stream_app, redis_client, reader_client, worker_config,
                                 generator, {})
    assert len(events) == 1
    error = json.loads(events[0].data)["error"]
    assert error["type"] == "UnknownGenerator" and "registered: " in error["message"]
    assert run_id not in observed


@pytest.mark.parametrize(("params", "expected"), [
    ("text", "params must be a JSON object, got str"),
    (42, "params must be a JSON object, got int"),
    (True, "params must be a JSON object, got bool"),
    ([{"text": "a"}], "params must be a JSON object, got list"),
    (None, "text: Field required"),
    ({"text": "x" * 1_000_001}, "text: String should have at most 1000000 characters"),
    ({"text": "a", "rate": 1e308}, "rate: Input should be less than or equal to 100000"),
    ({"text": "a", "chunk_size": 0}, "chunk_size: Input should be greater than or equal to 1"),
    ({"text": "a", "__class__": "x"}, "__class__: Extra inputs are not permitted"),
], ids=lambda v: type(v).__name__ if not isinstance(v, str) or len(v) > 30 else v)
def test_params_that_do_not_fit_refuse_the_run(stream_app, redis_client, reader_client,
                                               worker_config, params, expected):
    _, events = refused_run(stream_app, redis_client, reader_client, worker_config, "demo",
                            params)
    assert len(events) == 1
    error = json.loads(events[0].data)["error"]
    assert error["type"] == "InvalidParams" and expected in error["message"], error


@pytest.mark.parametrize(("kind", "error_type", "expected"), [
    ("oversized", "InvalidChunk", "exceeds the 1048576-byte limit"),
    ("surrogate", "InvalidChunk", "not valid UTF-8"),
    ("bytes", "UnsupportedChunk", "not bytes"),
    ("nan", "UnsupportedChunk", "not JSON-serializable"),
    ("object", "UnsupportedChunk", "not object"),
])
def test_a_chunk_that_cannot_be_sent_ends_the_run_with_its_reason(
        stream_app, redis_client, reader_client, worker_config, kind, error_type, expected):
    run_id, events = refused_run(stream_app, redis_client, reader_client, worker_config,
                                 "test.hostile", {"kind": kind})
    assert [e.data for e in events[:-1]] == ["fine"]
    error = json.loads(events[-1].data)["error"]
    assert error["type"] == error_type and expected in error["message"], error
    assert len(events[-1].frame.encode()) < 5000  # the bad chunk is not echoed back
    assert "went_on" not in observed.get(run_id, {})  # the generator was closed there
