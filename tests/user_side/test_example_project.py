"""The example project as a user runs it: this project installed from its wheel into a fresh
venv, the project copied out of the repository, a real prefork worker on the project's own
Celery app, Django under uvicorn serving the streams, and runs read back over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import httpx
import pytest
from celery import Celery
from celery.result import AsyncResult
from httpx_sse import connect_sse
from user_env import Project, logged_in

pytestmark = pytest.mark.slow

TEXT = "Streams from your own Celery app, read back exactly."


def start(client: httpx.Client, task: str, **kwargs: Any) -> str:
    answer = client.post(f"/chat/runs/{task}", json=kwargs)
    assert answer.status_code == 201, answer.text
    return answer.json()["run_id"]


def read(client: httpx.Client, run_id: str, last_event_id: str | None = None,
         limit: int | None = None) -> list[tuple[str, str, str]]:
    """``(id, event, data)`` of the run's events over HTTP, until its ending or ``limit``."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[tuple[str, str, str]] = []
    with connect_sse(client, "GET", f"/streams/runs/{run_id}/stream", headers=headers) as sse:
        for event in sse.iter_sse():
            events.append((event.id, event.event, event.data))
            if limit is not None and len(events) >= limit:
                break
    return events


def texts(events: list[tuple[str, str, str]]) -> str:
    return "".join(json.loads(data)["text"] for _, name, data in events
                   if name == "message" and data.startswith("{"))


def results(project: Project) -> Celery:
    return Celery("reader", backend=project.env["CELERY_RESULT_BACKEND"], set_as_current=False)


@pytest.fixture(scope="module")
def alice(project: Project) -> httpx.Client:
    client = logged_in(project.url, "alice")
    yield client
    client.close()


def test_the_wheel_installs_only_the_streaming_package(user_bin):
    code = ("import importlib.util as u, streaming;"
            "assert [m for m in ('tasks', 'worker') if u.find_spec(m)] == []")
    subprocess.run([str(user_bin / "python"), "-c", code], check=True, cwd="/", timeout=60)


def test_a_sync_generator_is_read_back_exactly(alice):
    run_id = start(alice, "chat.echo", text=TEXT, size=5)
    events = read(alice, run_id)
    assert [int(i) for i, _, _ in events] == list(range(1, len(events) + 1))
    assert texts(events) == TEXT
    assert events[-1][1:] == ("message", "[DONE]")


def test_an_async_generator_on_its_own_queue_with_named_events(alice):
    run_id = start(alice, "chat.answer", question="why?", words=3)
    events = read(alice, run_id)
    assert [(name, data) for _, name, data in events] == [
        ("status", "thinking"), ("message", '{"text": "word0 "}'),
        ("message", '{"text": "word1 "}'), ("message", '{"text": "word2 "}'),
        ("usage", '{"words": 3, "question": "why?"}'), ("message", "[DONE]")]


def test_a_bound_task_sends_through_its_handle_and_returns_its_result(alice, project):
    run_id = start(alice, "chat.summarize", text="one two three")
    events = read(alice, run_id)
    assert texts(events) == "one two three "
    result = AsyncResult(run_id, app=results(project)).get(timeout=30)
    assert result == {"words": 3, "run_id": run_id}


def test_autoretry_for_continues_the_run_after_a_restarted_event(alice, project):
    run_id = start(alice, "chat.flaky", failures=2)
    events = read(alice, run_id)
    names = [name for _, name, _ in events]
    assert names.count("restarted") == 2, events
    assert texts(events) == "attempt 1 attempt 2 attempt 3 done"
    assert [int(i) for i, _, _ in events] == list(range(1, len(events) + 1))
    assert AsyncResult(run_id, app=results(project)).get(timeout=30)["ending"] == "done"


def test_a_cancel_ends_the_stream_cancelled(alice):
    run_id = start(alice, "chat.echo", text="x" * 400, size=1, delay=0.05)
    first = read(alice, run_id, limit=3)
    assert alice.post(f"/chat/runs/{run_id}/cancel").json() == {"cancelled": True}
    rest = read(alice, run_id, last_event_id=first[-1][0])
    assert rest[-1][1:] == ("cancelled", "cancelled by the user") or rest[-1][1] == "cancelled"
    assert len(first) + len(rest) < 400


def test_a_killed_child_restarts_the_run_in_another(alice, project):
    run_id = start(alice, "chat.echo", text=TEXT * 4, size=2, delay=0.05)
    first = read(alice, run_id, limit=5)
    state, info = _progress(project, run_id)
    assert info["worker_pid"] in project.worker.children(), (state, info)
    os.kill(info["worker_pid"], signal.SIGKILL)
    rest = read(alice, run_id, last_event_id=first[-1][0])
    events = first + rest
    assert [int(i) for i, _, _ in events] == list(range(1, len(events) + 1))
    restarted = [i for i, (_, name, _) in enumerate(events) if name == "restarted"]
    assert len(restarted) == 1, events
    assert json.loads(events[restarted[0]][2])["attempt"] == 2
    assert texts(events[restarted[0]:]) == TEXT * 4  # the new attempt started over
    assert events[-1][1:] == ("message", "[DONE]")


def test_a_killed_child_without_requeue_ends_the_run_lost(alice, project):
    run_id = start(alice, "chat.once", text="x" * 200, delay=0.05)
    first = read(alice, run_id, limit=3)
    _, info = _progress(project, run_id)
    os.kill(info["worker_pid"], signal.SIGKILL)
    started = time.monotonic()
    rest = read(alice, run_id, last_event_id=first[-1][0])
    assert rest[-1][1] == "error" and json.loads(rest[-1][2])["error"]["kind"] == "lost"
    assert "restarted" not in [name for _, name, _ in first + rest]
    assert time.monotonic() - started < 30  # written by the worker's main process


def _progress(project: Project, run_id: str) -> tuple[str, dict]:
    app = results(project)
    deadline = time.monotonic() + 30
    while True:
        result = AsyncResult(run_id, app=app)
        if result.state == "STREAMING" and result.info.get("worker_pid"):
            return result.state, result.info
        assert time.monotonic() < deadline, (result.state, result.info)
        time.sleep(0.05)


def test_another_celery_app_and_plain_tasks_are_untouched(alice, project, store):
    app = Celery("sender", broker=project.env["CELERY_BROKER_URL"],
                 backend=project.env["CELERY_RESULT_BACKEND"], set_as_current=False)
    report = app.send_task("chat.neighbours", queue=project.queue).get(timeout=30)
    assert report["billing_result"] == {"charged": 5} and report["billing_postrun"] is True
    assert report["billing_acks_late"] is False and report["billing_steps"] == []
    assert report["app_acks_late"] is False and report["add_acks_late"] is False
    assert report["echo_acks_late"] is True
    assert not store.exists(f"sse:run:{report['billing_task_id']}:meta")
    assert app.send_task("chat.add", (2, 3), queue=project.queue).get(timeout=30) == 5


def test_celerys_time_limits_end_the_run_timeout(project, redis_url):
    from streaming.celery import Runs
    from streaming.client import sync_client
    from streaming.reader import read_events
    from streaming.settings import Settings

    sender = Celery("sender", broker=project.env["CELERY_BROKER_URL"], set_as_current=False)
    settings = Settings(redis_url=redis_url, producer_timeout=15.0, block_timeout=1.0)
    run_id = Runs(sender, settings).apply_async(
        "chat.echo", ["x" * 100], {"size": 1, "delay": 0.1}, queue=project.queue,
        soft_time_limit=1, time_limit=10)
    client = sync_client(settings, reader=True)
    events = list(read_events(client, run_id, settings))
    client.close()
    error = json.loads(events[-1].data)["error"]
    assert error["kind"] == "timeout" and "time limit (1" in error["message"], error
    assert 3 <= len(events) - 1 < 100


def test_a_reader_resumes_by_last_event_id_exactly_once(alice):
    run_id = start(alice, "chat.echo", text=TEXT, size=3, delay=0.02)
    full = read(alice, run_id)
    for cut in (1, len(full) // 2, len(full) - 1):
        head = read(alice, run_id, limit=cut)
        tail = read(alice, run_id, last_event_id=head[-1][0])
        assert head + tail == full
    after_end = alice.get(f"/streams/runs/{run_id}/stream",
                          headers={"Last-Event-ID": full[-1][0]})
    assert after_end.status_code == 204


def test_django_auth_decides_who_reads(alice, project):
    run_id = start(alice, "chat.echo", text="private")
    with httpx.Client(base_url=project.url) as anonymous:
        assert anonymous.get(f"/streams/runs/{run_id}/stream").status_code == 403
    bob = logged_in(project.url, "bob")
    try:
        refused = bob.get(f"/streams/runs/{run_id}/stream")
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden"
        assert bob.get(f"/streams/runs/{run_id}/status").status_code == 403
    finally:
        bob.close()
    status = alice.get(f"/streams/runs/{run_id}/status")
    assert status.status_code == 200 and status.json()["run_id"] == run_id


def test_under_wsgi_a_stream_is_refused_with_a_clear_error(alice, project):
    run_id = start(alice, "chat.echo", text="wsgi")
    url = project.start_wsgi()
    wsgi = logged_in(url, "alice")
    try:
        refused = wsgi.get(f"/streams/runs/{run_id}/stream")
        assert refused.status_code == 500 and refused.json()["error"]["type"] == "asgi_required"
    finally:
        wsgi.close()
