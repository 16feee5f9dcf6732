"""The reference app over real HTTP: start a run, follow it, cancel it, serve the page."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import connect_sse

from examples.app import DEMO_TEXT, create_app
from streaming.settings import Settings
from tasks.api import Runs
from tests.web.http_server import ServerThread

SECRET = "app-test-" + "s" * 32


@pytest.fixture
def app_client(settings: Settings, celery_runs: Runs) -> Iterator[httpx.Client]:
    """The reference app, starting runs on a real Celery worker through the tasks API."""
    settings = settings.replace(token_secret=SECRET)
    with ServerThread(create_app(settings, launcher=celery_runs)) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        client.get("/")  # the page session's cookie: it lets the client start runs
        yield client


def follow(client: httpx.Client, url: str) -> list[tuple[str, str]]:
    with connect_sse(client, "GET", url) as source:
        return [(e.event, e.data) for e in source.iter_sse() if e.data]


def test_start_a_run_and_follow_it(app_client: httpx.Client):
    created = app_client.post("/runs", json={"rate": 200.0})
    assert created.status_code == 201
    run = created.json()
    assert re.fullmatch(r"run-[0-9a-f]{32}", run["run_id"])  # 128 random bits
    events = follow(app_client, run["stream_url"])
    assert events[-1] == ("message", "[DONE]")
    assert "".join(json.loads(d)["text"] for _, d in events[:-1]) == DEMO_TEXT
    status = app_client.get(run["status_url"]).json()
    assert (status["state"], status["terminal"]) == ("ended", "done")


@pytest.mark.fault
def test_cancel_ends_the_stream_with_a_cancelled_event(app_client: httpx.Client):
    run = app_client.post("/runs", json={"rate": 20.0}).json()
    with connect_sse(app_client, "GET", run["stream_url"]) as source:
        events = source.iter_sse()
        assert next(e for e in events if e.data).event == "message"
        cancelled = app_client.post(run["cancel_url"])
        assert cancelled.status_code == 202
        rest = [e for e in events if e.data]
    assert rest[-1].event == "cancelled"
    assert json.loads(rest[-1].data) == {"cancelled": {"reason": "cancelled from the page"}}
    assert app_client.post(run["cancel_url"]).status_code == 409  # already ended


def test_cancel_needs_a_cancel_token_of_the_run(app_client: httpx.Client):
    first = app_client.post("/runs", json={"rate": 200.0}).json()
    second = app_client.post("/runs", json={"rate": 200.0}).json()
    cancel = f"/runs/{first['run_id']}/cancel"
    with httpx.Client(base_url=app_client.base_url, timeout=10) as bare:
        assert bare.post(cancel).status_code == 401
        wrong = bare.post(cancel, params={"token": second["cancel_token"]})
        assert wrong.status_code == 403
        read = bare.post(cancel, params={"token": first["token"]})  # a read token
        assert read.status_code == 403 and "does not allow cancel" in read.text
        assert bare.get(first["stream_url"].replace(first["token"], first["cancel_token"])
                        ).status_code == 403  # and a cancel token does not read
    assert app_client.post(cancel).status_code == 403  # the run's cookie holds a read token


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"rate": "fast"}', b'{"text": 5}',
                                  b'{"chunk_size": true}'])
def test_bad_run_requests_get_400(app_client: httpx.Client, body: bytes):
    response = app_client.post("/runs", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"


def test_the_page_and_its_script_are_served(app_client: httpx.Client):
    page = app_client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text
    script = app_client.get("/static/app.js")
    assert script.status_code == 200 and "new EventSource(" in script.text


def test_recent_runs_list_newest_first_with_state_progress_and_no_tokens(
        app_client: httpx.Client):
    first = app_client.post("/runs", json={"rate": 500.0, "chunk_size": 40}).json()
    follow(app_client, first["stream_url"])  # it has ended
    second = app_client.post("/runs", json={"rate": 1.0}).json()  # still going
    listed = app_client.get("/runs", params={"limit": 2})
    assert listed.status_code == 200
    body = listed.json()
    assert [r["run_id"] for r in body["runs"]] == [second["run_id"], first["run_id"]]
    ended = body["runs"][1]
    assert (ended["state"], ended["terminal"]) == ("ended", "done")
    assert ended["total"] == -(-len(DEMO_TEXT) // 40) and ended["last_seq"] == ended["total"] + 1
    assert body["runs"][0]["terminal"] is None and body["runs"][0]["total"] > 0
    assert first["token"] not in listed.text and "token" not in listed.text
    assert app_client.post(second["cancel_url"]).status_code == 202
    assert app_client.get("/runs", params={"limit": "0"}).status_code == 400
    assert httpx.get(f"{app_client.base_url}/runs", timeout=10).status_code == 401  # no session
