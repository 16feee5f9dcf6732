"""Hostile requests over real HTTP (issue 15): bodies past the limit, deep JSON, params that
do not fit the generator, odd run ids and cursors, and tokens used beyond their scope. Each is
refused with a 4xx naming what was wrong, before any Redis command (watched with MONITOR),
and nothing is started."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from examples.app import create_app
from streaming.control import mark_pending
from streaming.tokens import revoke_tokens
from streaming.web import RedactTokens, install_log_redaction, redact_query_tokens
from streaming.wire import validate_run_id
from tests.monitor import Monitor
from tests.web.http_server import ServerThread
from tests.web.test_faults_http import SECRET, App, Recorder, serve

pytestmark = pytest.mark.fault
MiB = 1024 * 1024


@pytest.fixture
def watched(private_server, settings) -> Iterator[tuple[App, Monitor, redis.Redis]]:
    local = settings.replace(redis_url=private_server.url)
    monitor = Monitor(private_server.url)
    admin = redis.Redis.from_url(private_server.url, decode_responses=True)
    with serve(local) as served:
        yield served, monitor, admin
    admin.close()
    monitor.close()


@contextmanager
def session(app: App) -> Iterator[httpx.Client]:
    """A client that loaded the page: it holds the session cookie that may start runs."""
    with httpx.Client(base_url=app.url, timeout=10) as client:
        assert client.get("/").status_code == 200
        yield client


# -- bodies ---------------------------------------------------------------------------------


def chunked(size: int) -> Iterator[bytes]:
    """A body sent without Content-Length (chunked), ``size`` bytes of a JSON string."""
    yield b'{"text": "'
    for _ in range(size // 65536):
        yield b"a" * 65536
    yield b'"}'


@pytest.mark.parametrize("form", ["content-length", "chunked"])
def test_bodies_past_the_limit_get_413_and_start_nothing(watched, run_id, form):
    app, monitor, admin = watched
    before = admin.dbsize()
    start = monitor.mark()
    answers = []
    with session(app) as client:
        for path in ("/runs", f"/runs/{run_id}/stream"):
            body = chunked(2 * MiB) if form == "chunked" else b"x" * (2 * MiB)
            answers.append(client.post(path, content=body, params={"token": app.token(run_id)}))
    for response in answers:
        assert response.status_code == 413, response.text
        assert response.json()["error"]["type"] == "body_too_large"
        assert "1048576-byte limit" in response.json()["error"]["message"]
    assert monitor.since(start) == [] and app.launcher.calls == []
    assert admin.dbsize() == before


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 33 + b"]" * 33,
                                  b'{"text": ' + b"[" * 40 + b"]" * 40 + b"}"],
                         ids=["array 100k", "object 100k", "array 33", "param 40"])
def test_deeply_nested_json_gets_400_not_500(watched, run_id, body):
    app, monitor, _ = watched
    start = monitor.mark()
    with session(app) as client:
        answers = [client.post(path, content=body, params={"token": app.token(run_id)})
                   for path in ("/runs", f"/runs/{run_id}/stream")]
    for response in answers:
        assert response.status_code == 400, response.text
        assert "nests deeper than 32 levels" in response.json()["error"]["message"]
    assert monitor.since(start) == [] and app.launcher.calls == []


def test_json_within_the_depth_limit_and_brackets_in_strings_are_accepted(watched):
    app, _, _ = watched
    with session(app) as client:
        response = client.post("/runs", json={"text": "[[[{{{" * 1000 + "]]]"})
    assert response.status_code == 201, response.text
    assert app.launcher.calls[0][1]["text"].startswith("[[[{{{")


# -- params, before anything is enqueued -----------------------------------------------------

BAD_PARAMS = [
    (b'{"chunk_size": 0}', "chunk_size"),
    (b'{"chunk_size": -5}', "chunk_size"),
    (b'{"chunk_size": 1.0}', "chunk_size"),
    (b'{"chunk_size": 1e400}', "chunk_size"),  # json reads it as inf
    (b'{"rate": 0}', "rate"),
    (b'{"rate": -1}', "rate"),
    (b'{"rate": 1e9}', "rate"),
    (b'{"rate": true}', "rate"),
    (b'{"rate": "fast"}', "rate"),
    (b'{"text": 5}', "text"),
    (b'{"text": null}', "text"),
    (b'{"text": "a", "colour": "red"}', "colour"),
    (b'{"text": "a", "__class__": "x"}', "__class__"),
]


@pytest.mark.parametrize(("body", "field"), BAD_PARAMS, ids=[b.decode() for b, _ in BAD_PARAMS])
def test_params_that_do_not_fit_get_400_naming_the_field(watched, body, field):
    app, monitor, admin = watched
    before = admin.dbsize()
    start = monitor.mark()
    with session(app) as client:
        response = client.post("/runs", content=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error.get("field") == field, error
    assert field in error["message"]
    assert monitor.since(start) == [] and app.launcher.calls == []
    assert admin.dbsize() == before


@pytest.mark.parametrize("body", [b'{"rate": NaN}', b'{"rate": Infinity}',
                                  b'{"rate": -Infinity}', b'{"text": "\\ud800"}',
                                  b'{"text": "a\\udfff b"}', b'{"\\ud800": 1}'], ids=repr)
def test_numbers_that_are_not_finite_and_lone_surrogates_get_400(watched, body):
    app, monitor, _ = watched
    start = monitor.mark()
    with session(app) as client:
        response = client.post("/runs", content=body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "finite" in message or "lone surrogate" in message, message
    assert monitor.since(start) == [] and app.launcher.calls == []


def test_a_text_past_the_generators_bound_gets_400_or_413(private_server, settings):
    text = "a" * 2_000_000
    local = settings.replace(redis_url=private_server.url)
    with serve(local) as app, session(app) as client:  # the body limit (1 MiB) comes first
        assert client.post("/runs", json={"text": text}).status_code == 413
    with serve(local.replace(max_body_bytes=4 * MiB)) as app, session(app) as client:
        response = client.post("/runs", json={"text": text})  # then the schema's maxLength
        assert response.status_code == 400 and response.json()["error"]["field"] == "text"
        assert "2000000 long, at most 1000000" in response.json()["error"]["message"]
        assert app.launcher.calls == []


def test_the_tasks_api_checks_params_before_it_writes_or_sends(redis_client, settings):
    from celery import Celery

    from tasks.api import Runs
    from tasks.schemas import ParamsError, ParamsSchemas, UnknownGeneratorError

    celery = Celery("never-sends", broker="memory://", set_as_current=False)
    runs = Runs(celery, redis_client, settings, ParamsSchemas.load())
    run_id = f"run-{uuid.uuid4().hex}"
    with pytest.raises(ParamsError, match="params must be a mapping") as caught:
        runs.start("demo", ["not", "a", "mapping"], run_id=run_id)  # type: ignore[arg-type]
    assert caught.value.field == "params"
    with pytest.raises(ParamsError, match="chunk_size") as caught:
        runs.start("demo", {"text": "a", "chunk_size": 0}, run_id=run_id)
    with pytest.raises(UnknownGeneratorError, match=r"allowed: demo, demo\.fail, openai"):
        runs.start("os.system", {}, run_id=run_id)
    assert not redis_client.exists(f"sse:run:{run_id}:meta")  # nothing written
    runs.schemas = None  # without schemas the shape is still checked
    with pytest.raises(ParamsError, match="params must be a mapping"):
        runs.start("demo", [1, 2], run_id=run_id)  # type: ignore[arg-type]
    assert not redis_client.exists(f"sse:run:{run_id}:meta")


def test_the_schema_file_is_the_registrys(tmp_path):
    """``tasks/params.schema.json`` is what ``python -m tasks.schemas`` writes today (in a
    fresh interpreter: this one may hold test generators)."""
    from tasks.schemas import BUILTIN

    fresh = tmp_path / "schema.json"
    subprocess.run([sys.executable, "-m", "tasks.schemas", "-o", str(fresh)], check=True,
                   cwd=Path(__file__).resolve().parents[2], timeout=60, capture_output=True)
    assert json.loads(BUILTIN.read_text()) == json.loads(fresh.read_text()), \
        "regenerate it: python -m tasks.schemas"


@pytest.mark.parametrize("name", ["key", "api_token", "passphrase", "db_pwd", "auth", "Cookie",
                                  "session_id", "bearer", "jwt", "PASSWORD", "credentials"])
def test_secret_looking_params_are_redacted(name):
    from tasks.api import redact

    assert redact({name: "s3cret", "nested": [{name: "s3cret"}], "text": "shown"}) == {
        name: "***", "nested": [{name: "***"}], "text": "shown"}


# -- run ids and cursors ----------------------------------------------------------------------


@pytest.mark.parametrize("run_id", [".", ".."])
def test_dot_run_ids_are_refused(watched, run_id):
    app, monitor, _ = watched
    with pytest.raises(ValueError, match="run id"):
        validate_run_id(run_id)
    start = monitor.mark()
    encoded = run_id.replace(".", "%2E")
    with httpx.Client(timeout=5) as client:
        for method, suffix in (("GET", "stream"), ("GET", "status"), ("POST", "cancel")):
            response = client.request(method, f"{app.url}/runs/{encoded}/{suffix}")
            assert response.status_code in (400, 404), response.text
    assert monitor.since(start) == []


def test_zero_padded_cursors_are_accepted_up_to_the_bound(settings, writer, run_id):
    with serve(settings) as app:
        zero_padded(app, writer, run_id)


def zero_padded(app: App, writer, run_id: str) -> None:
    run = writer.open(run_id)
    for i in range(3):
        run.send(f"chunk {i}")
    run.finish()
    with httpx.Client(timeout=10) as client:
        for cursor in ("00000000000000001", "0" * 31 + "1", "0009007199254740991"):
            response = client.get(app.stream(run_id), params={"token": app.token(run_id),
                                                              "starting_after": cursor})
            if cursor.endswith("1") and int(cursor) == 1:
                assert response.status_code == 200, response.text
                assert "id: 1\n" not in response.text and "id: 2\n" in response.text
            else:  # 2**53 - 1, zero padded: a valid cursor, past this run's end
                assert response.status_code == 400
                assert "past run" in response.json()["error"]["message"]
        too_long = client.get(app.stream(run_id), params={"token": app.token(run_id),
                                                          "starting_after": "0" * 33})
        assert too_long.status_code == 400


# -- tokens: scopes, refresh, revocation, cookies, logs ---------------------------------------


def test_run_creation_needs_the_create_scope(watched):
    app, monitor, _ = watched
    start = monitor.mark()
    with httpx.Client(base_url=app.url, timeout=5) as bare:
        assert bare.post("/runs", json={}).status_code == 401
        read = app.token(f"run-{uuid.uuid4().hex}")
        assert bare.post("/runs", json={},
                         headers={"Authorization": f"Bearer {read}"}).status_code == 403
    assert monitor.since(start) == [] and app.launcher.calls == []
    with session(app) as client:
        created = client.post("/runs", json={})
        assert created.status_code == 201
        page = client.get("/")
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/runs" in cookie
    body = created.json()
    assert set(body) >= {"run_id", "token", "cancel_token", "stream_url", "cancel_url",
                         "token_url", "expires_in"}
    run_cookie = created.headers["set-cookie"]
    assert f"Path=/runs/{body['run_id']}" in run_cookie and "HttpOnly" in run_cookie


def test_run_creation_is_rate_limited_per_session(settings):
    app = create_app(settings.replace(token_secret=SECRET), launcher=Recorder(),
                     runs_per_minute=3)
    with ServerThread(app) as server:
        served = App(server.url, app.state.streams, Recorder())
        with session(served) as first, session(served) as second:
            answers = [first.post("/runs", json={}).status_code for _ in range(4)]
            refused = first.post("/runs", json={})
            other = second.post("/runs", json={})  # another page session: its own budget
    assert answers == [201, 201, 201, 429]
    assert refused.status_code == 429 and 55 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["type"] == "too_many_requests"
    assert other.status_code == 201


def test_a_token_is_refreshed_with_its_scopes_and_revoked_per_run(watched, run_id):
    app, _, admin = watched
    mark_pending(admin, run_id, app.streams.settings)
    read, cancel = app.token(run_id), app.streams.issue_token(run_id, scopes=("cancel",))
    other = f"run-{uuid.uuid4().hex}"
    with httpx.Client(base_url=app.url, timeout=5) as client:
        refreshed = client.post(f"/runs/{run_id}/token", headers={"Authorization":
                                                                  f"Bearer {read}"})
        assert refreshed.status_code == 200 and refreshed.json()["scopes"] == ["read"]
        fresh = refreshed.json()["token"]
        assert client.get(f"/runs/{run_id}/status", params={"token": fresh}).status_code == 200
        again = client.post(f"/runs/{run_id}/token", params={"token": cancel}).json()
        assert again["scopes"] == ["cancel"]
        assert client.post(f"/runs/{other}/token", params={"token": read}).status_code == 403
        assert client.post(f"/runs/{run_id}/token").status_code == 401

        assert revoke_tokens(admin, run_id, app.streams.settings) == 1
        for token in (read, fresh, cancel):
            for method, path in (("GET", "status"), ("GET", "stream"), ("POST", "token"),
                                 ("POST", "cancel")):
                response = client.request(method, f"/runs/{run_id}/{path}",
                                          params={"token": token})
                assert response.status_code in (401, 403), (token, path, response.text)
        status = client.get(f"/runs/{run_id}/status", params={"token": read})
        assert status.json()["error"]["message"] == "invalid token: revoked"
        new = app.streams.issue_token(run_id, generation=1)
        assert client.get(f"/runs/{run_id}/status", params={"token": new}).status_code == 200
    assert app.launcher.calls == []


def test_the_run_cookie_reads_without_a_token_in_the_url(watched):
    app, _, _ = watched
    with session(app) as client:
        run_id = client.post("/runs", json={}).json()["run_id"]
        assert client.get(f"/runs/{run_id}/status").status_code == 404  # read, found nothing
        with httpx.Client(base_url=app.url, timeout=5) as bare:
            assert bare.get(f"/runs/{run_id}/status").status_code == 401
        # The cookie is scoped to its run's path: another run's routes never receive it.
        assert client.get(f"/runs/{run_id}x/status").status_code == 401


def test_query_tokens_are_redacted_from_the_access_log(settings):
    """uvicorn's own access log, through the filter the reference app installs."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    keep = Keep()
    access = logging.getLogger("uvicorn.access")
    app = create_app(settings.replace(token_secret=SECRET), launcher=Recorder())
    server = ServerThread(app)
    server.server.config.access_log = True
    access.addHandler(keep)
    previous = access.level
    try:
        with server:
            access.setLevel(logging.INFO)
            token = app.state.streams.issue_token("run-1")
            with httpx.Client(base_url=server.url, timeout=5) as client:
                client.get("/runs/run-1/status", params={"token": token, "x": "1"})
                client.get(f"/runs/run-1/status?starting_after=1&TOKEN={token}")
    finally:
        access.removeHandler(keep)
        access.setLevel(previous)
    lines = [line for line in records if "/runs/run-1/status" in line]
    assert len(lines) == 2, records
    assert all(token not in line and "[redacted]" in line for line in lines), lines
    assert "x=1" in lines[0] and "starting_after=1" in lines[1]


def test_redaction_covers_messages_and_mapping_arguments():
    assert redact_query_tokens("GET /a?token=abc.def&b=1 HTTP/1.1") == \
        "GET /a?token=[redacted]&b=1 HTTP/1.1"
    assert redact_query_tokens("/x?access_token=s3cret") == "/x?access_token=[redacted]"
    record = logging.LogRecord("gunicorn.access", logging.INFO, "", 0, "%(r)s", None, None)
    record.args = {"r": "GET /a?token=zzz HTTP/1.1"}
    RedactTokens().filter(record)
    assert record.getMessage() == "GET /a?token=[redacted] HTTP/1.1"
    first = install_log_redaction("test.redaction")
    install_log_redaction("test.redaction")
    assert logging.getLogger("test.redaction").filters == [first]  # installed once
