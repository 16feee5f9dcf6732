"""The SSE endpoint over real HTTP: a uvicorn server, a real Redis-compatible server, httpx.

Runs are written by the library's writer in the test process (no Celery needed here).
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import ServerSentEvent, connect_sse
from starlette.applications import Starlette
from starlette.routing import Mount

from examples.app import create_app
from streaming.settings import Settings
from streaming.tokens import TokenSigner
from streaming.web import StreamEndpoints
from streaming.wire import MAX_SEQ
from streaming.writer import StreamWriter
from tests.web.http_server import ServerThread

SECRET = "test-secret-" + "x" * 32
N = 12  # chunks of the standard run; its terminal entry is seq N + 1


@dataclass
class Web:
    server: ServerThread
    client: httpx.Client
    streams: StreamEndpoints
    signer: TokenSigner

    def token(self, run_id: str) -> str:
        return self.signer.issue(run_id, 600)

    def stream_url(self, run_id: str) -> str:
        return f"/runs/{run_id}/stream"

    def readers(self) -> int:
        hub = self.streams.hub
        return hub.stats()["readers"] if hub else 0


def serve(settings: Settings, **app_options: Any) -> Iterator[Web]:
    app = create_app(settings, launcher=object(), **app_options)  # type: ignore[arg-type]
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield Web(server, client, app.state.streams, TokenSigner(SECRET))


@pytest.fixture
def web_settings(settings: Settings) -> Settings:
    return settings.replace(token_secret=SECRET, ping_interval=30.0)


@pytest.fixture
def web(web_settings: Settings) -> Iterator[Web]:
    yield from serve(web_settings)


@pytest.fixture
def done_run(writer: StreamWriter) -> tuple[str, list[str]]:
    """A finished run of N chunks: its id and the data of seqs 1..N+1."""
    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    datas = [json.dumps({"text": f"chunk {i} ", "index": i}) for i in range(N)]
    for data in datas:
        handle.send(data)
    handle.finish()
    return run_id, [*datas, "[DONE]"]


def events_of(web: Web, method: str, run_id: str, *, limit: int | None = None,
              token: str | None = None, **request: Any) -> tuple[int, list[ServerSentEvent]]:
    """Status and events of one request; with ``limit``, hang up after that many events."""
    params = {"token": token or web.token(run_id), **request.pop("params", {})}
    events: list[ServerSentEvent] = []
    with connect_sse(web.client, method, web.stream_url(run_id), params=params,
                     **request) as source:
        if source.response.status_code != 200:
            source.response.read()
            return source.response.status_code, events
        for event in source.iter_sse():
            if event.data == "":
                continue  # the retry: frame
            if method == "POST":  # Letta's protocol: back to the stored data
                event = stored_form(event)
                if event is None:
                    continue
            events.append(event)
            if limit is not None and len(events) >= limit:
                break
    return 200, events


#: The fields Letta's protocol adds to a chunk it serves as an assistant message.
LETTA_FIELDS = {"message_type", "id", "date", "content", "seq_id", "run_id"}


def stored_form(event: ServerSentEvent) -> ServerSentEvent | None:
    """A Letta-protocol event as the stored chunk it came from; None for its stop reason."""
    if event.data == "[DONE]":
        return event
    message = json.loads(event.data)
    if message["message_type"] == "stop_reason":
        return None
    assert message["message_type"] == "assistant_message" and message["seq_id"] == int(event.id)
    rest = {k: v for k, v in message.items() if k not in LETTA_FIELDS}
    data = json.dumps(rest) if rest else message["content"]
    return ServerSentEvent(event.event, data, event.id, event.retry)


def resume_request(form: str, cursor: int) -> dict[str, Any]:
    """Request options that resume after ``cursor`` in one of the four cursor forms."""
    if form == "header":
        return {"headers": {"Last-Event-ID": str(cursor)}}
    if form == "last_event_id":
        return {"params": {"last_event_id": str(cursor)}}
    if form == "starting_after":
        return {"params": {"starting_after": str(cursor)}}
    return {"json": {"starting_after": cursor, "include_pings": True,
                     "poll_interval": 0.1, "batch_size": 100}}


FORMS = ["header", "last_event_id", "starting_after", "post_body"]


def method_of(form: str) -> str:
    return "POST" if form == "post_body" else "GET"


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- streaming and resuming ----------------------------------------------------------------


def test_stream_headers_ids_and_close_after_terminal(web: Web, done_run: tuple[str, list[str]]):
    run_id, _datas = done_run
    with web.client.stream("GET", web.stream_url(run_id),
                           params={"token": web.token(run_id)}) as response:
        body = response.read().decode()
        headers = response.headers
    assert response.status_code == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-store"
    assert headers["x-accel-buffering"] == "no"
    frames = [f for f in body.split("\n\n") if f and not f.startswith("retry:")]
    assert [f.splitlines()[0] for f in frames] == [f"id: {seq}" for seq in range(1, N + 2)]
    assert frames[-1] == f"id: {N + 1}\ndata: [DONE]"  # the response ended right after it


@pytest.mark.parametrize("form", FORMS)
def test_disconnect_after_k_events_and_resume(web: Web, done_run: tuple[str, list[str]],
                                              form: str):
    run_id, datas = done_run
    for k in range(N + 1):
        _, first = events_of(web, "GET", run_id, limit=k) if k else (200, [])
        cursor = int(first[-1].id) if first else 0
        status, rest = events_of(web, method_of(form), run_id, **resume_request(form, cursor))
        assert status == 200
        joined = first + rest
        assert [int(e.id) for e in joined] == list(range(1, N + 2)), f"k={k}"
        assert [e.data for e in joined] == datas


@pytest.mark.parametrize("form", FORMS)
def test_reconnect_at_terminal_gets_204(web: Web, done_run: tuple[str, list[str]], form: str):
    run_id, _ = done_run
    status, events = events_of(web, method_of(form), run_id, **resume_request(form, N + 1))
    assert (status, events) == (204, [])


@pytest.mark.parametrize("form", FORMS)
def test_live_run_with_random_disconnects(web: Web, writer: StreamWriter, form: str):
    """Hang up after a random number of events again and again while the run is written."""
    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    total = 60

    def produce() -> None:
        for i in range(total):
            handle.send(f"piece {i}")
            time.sleep(0.004)
        handle.finish()

    producer = threading.Thread(target=produce)
    producer.start()
    rng = random.Random(form)
    received: list[ServerSentEvent] = []
    for _ in range(200):
        cursor = int(received[-1].id) if received else 0
        status, events = events_of(web, method_of(form), run_id, limit=rng.randint(1, 7),
                                   **resume_request(form, cursor))
        if status == 204:
            break
        received += events
    producer.join(10)
    assert [int(e.id) for e in received] == list(range(1, total + 2))
    assert [e.data for e in received] == [f"piece {i}" for i in range(total)] + ["[DONE]"]


def test_header_cursor_wins_over_the_url(web: Web, done_run: tuple[str, list[str]]):
    """A browser reconnects to the URL it was opened with, plus Last-Event-ID: the header
    is the newer position."""
    run_id, _ = done_run
    _, events = events_of(web, "GET", run_id, headers={"Last-Event-ID": "10"},
                          params={"starting_after": "2", "last_event_id": "3"})
    assert [int(e.id) for e in events] == [11, 12, 13]
    _, events = events_of(web, "GET", run_id,
                          params={"starting_after": "2", "last_event_id": "3"})
    assert int(events[0].id) == 4


def test_mounted_without_lifespan_starts_its_hub(web_settings: Settings,
                                                 done_run: tuple[str, list[str]]):
    """Mounted under a prefix in a host app that never runs the endpoints' lifespan."""
    streams = StreamEndpoints(web_settings)
    app = Starlette(routes=[Mount("/api/v1", routes=streams.routes)])
    run_id, datas = done_run
    token = TokenSigner(SECRET).issue(run_id, 60)
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as client, \
            connect_sse(client, "GET", f"/api/v1/runs/{run_id}/stream",
                        params={"token": token}) as source:
        got = [e.data for e in source.iter_sse()]
    assert got == datas


# -- explicit events instead of silence ----------------------------------------------------


def test_pings_on_a_quiet_run(web_settings: Settings, writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    handle.send("first")
    handle.flush()
    for web in serve(web_settings.replace(ping_interval=0.2)):
        lines: list[str] = []
        with web.client.stream("GET", web.stream_url(run_id),
                               params={"token": web.token(run_id)}) as response:
            for line in response.iter_lines():
                lines.append(line)
                if lines.count(": ping") >= 3:
                    break
        assert lines[lines.index("data: first") + 2:][:1] == [": ping"]
    handle.finish()


def test_no_pings_when_the_post_body_says_so(web_settings: Settings, writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    handle.send("first")
    handle.flush()
    for web in serve(web_settings.replace(ping_interval=0.1)):
        lines: list[str] = []
        timeout = httpx.Timeout(10, read=1.0)  # ten ping intervals of silence
        with pytest.raises(httpx.ReadTimeout), web.client.stream(
                "POST", web.stream_url(run_id), params={"token": web.token(run_id)},
                json={"include_pings": False}, timeout=timeout) as response:
            lines.extend(response.iter_lines())
        assert [json.loads(line[6:])["content"] for line in lines if line[:5] == "data:"] \
            == ["first"]
        assert ": ping" not in lines and not any('"ping"' in line for line in lines)
    handle.finish()


@pytest.mark.fault
def test_trimmed_history_is_an_explicit_gap_event(web: Web, done_run: tuple[str, list[str]],
                                                  redis_client: redis.Redis):
    run_id, datas = done_run
    redis_client.xtrim(f"sse:run:{run_id}", minid="0-5", approximate=False)
    _, events = events_of(web, "GET", run_id)
    assert events[0].event == "gap"
    assert json.loads(events[0].data)["gap"]["first"] == 1
    assert json.loads(events[0].data)["gap"]["last"] == 4
    assert [e.data for e in events[1:]] == datas[4:]


def test_unknown_or_expired_run_is_an_explicit_event(web: Web):
    _, events = events_of(web, "GET", f"run-{uuid.uuid4().hex}")
    assert len(events) == 1
    assert events[0].event == "error"
    assert json.loads(events[0].data)["error"]["kind"] == "not_found"


# -- access ------------------------------------------------------------------------------------


def bad_tokens(signer: TokenSigner, run_id: str) -> dict[str, tuple[dict[str, Any], int]]:
    """Requests with a bad or no token, and the status each must get."""
    good = signer.issue(run_id, 60)
    forged = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    return {
        "missing": ({}, 401),
        "forged": ({"params": {"token": forged}}, 401),
        "other secret": ({"params": {"token": TokenSigner("o" * 40).issue(run_id, 60)}}, 401),
        "expired": ({"params": {"token": signer.issue(run_id, 10, now=time.time() - 60)}}, 401),
        "malformed": ({"params": {"token": "not-a-token"}}, 401),
        "other run": ({"params": {"token": signer.issue(f"run-{uuid.uuid4().hex}", 60)}}, 403),
        "bearer forged": ({"headers": {"Authorization": f"Bearer {forged}"}}, 401),
    }


@pytest.mark.parametrize("case", ["missing", "forged", "other secret", "expired", "malformed",
                                  "other run", "bearer forged"])
@pytest.mark.fault
def test_refused_without_revealing_whether_the_run_exists(web: Web, case: str,
                                                         done_run: tuple[str, list[str]]):
    existing, _ = done_run
    absent = f"run-{uuid.uuid4().hex}"
    answers = []
    for run_id in (existing, absent):
        request, expected = bad_tokens(web.signer, run_id)[case]
        for method, path in (("GET", "stream"), ("POST", "stream"), ("GET", "status")):
            response = web.client.request(method, f"/runs/{run_id}/{path}", **request)
            assert response.status_code == expected, (method, path, response.text)
            answers.append((method, path, response.status_code,
                            response.text.replace(run_id, "RUN")))
    assert answers[:3] == answers[3:]  # the same answer for a run that exists and one that does not


@pytest.mark.fault
def test_access_is_decided_without_redis(web_settings: Settings):
    """With the store unreachable, a bad token still gets 401 (not 503): no Redis I/O first."""
    down = web_settings.replace(redis_url="redis://127.0.0.1:9/0", socket_timeout=1.0)
    run_id = f"run-{uuid.uuid4().hex}"
    for web in serve(down):
        assert web.client.get(web.stream_url(run_id)).status_code == 401
        token = web.signer.issue(f"run-{uuid.uuid4().hex}", 60)
        assert web.client.get(web.stream_url(run_id), params={"token": token}).status_code == 403
        ok = web.client.get(web.stream_url(run_id), params={"token": web.token(run_id)})
        assert ok.status_code == 503


def test_bearer_token_and_custom_auth_hook(web_settings: Settings,
                                           done_run: tuple[str, list[str]]):
    run_id, _datas = done_run
    seen: list[str] = []

    async def hook(request: Any, asked: str, scope: str) -> bool:
        seen.append(asked)
        assert scope == "read"
        return request.headers.get("x-user") == "alice"

    streams = StreamEndpoints(web_settings, auth=hook)
    app = Starlette(routes=streams.routes, lifespan=streams.lifespan)
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as client:
        assert client.get(f"/runs/{run_id}/status").status_code == 403
        ok = client.get(f"/runs/{run_id}/stream", headers={"x-user": "alice"})
    assert ok.status_code == 200 and "data: [DONE]" in ok.text
    assert seen == [run_id, run_id]


def test_bearer_header_is_accepted(web: Web, done_run: tuple[str, list[str]]):
    run_id, _datas = done_run
    response = web.client.get(web.stream_url(run_id),
                              headers={"Authorization": f"Bearer {web.token(run_id)}"})
    assert response.status_code == 200
    assert response.text.count("\nid: ") + response.text.startswith("id: ") == N + 1


# -- bad input ------------------------------------------------------------------------------

BAD_CURSORS = ["abc", "-1", "99999999999999999999", str(MAX_SEQ + 1), "$", "1.5", "", " 1",
               "0x10", "1e3"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.fault
def test_bad_cursors_get_400_naming_the_input(web: Web, done_run: tuple[str, list[str]],
                                              form: str):
    run_id, _ = done_run
    cursors: list[Any] = [*BAD_CURSORS, str(N + 2)]  # the last one: past the run's end
    if form == "header":
        cursors.remove(" 1")  # not a legal header value: HTTP strips the blank
    if form == "post_body":
        cursors += [-1, 1.5, 10**20, True, [1], {"a": 1}]
    for cursor in cursors:
        if form == "post_body":
            request: dict[str, Any] = {"json": {"starting_after": cursor}}
        else:
            request = resume_request(form, 0)
            for values in request.values():
                for key in values:
                    values[key] = cursor
        response = web.client.request(method_of(form), web.stream_url(run_id),
                                      params={"token": web.token(run_id),
                                              **request.pop("params", {})}, **request)
        assert response.status_code == 400, (cursor, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_cursor"
        source = {"header": "Last-Event-ID", "post_body": "starting_after"}.get(form, form)
        assert error["message"].startswith(source), error


@pytest.mark.parametrize("run_id", ["bad$id", "a" * 129, "sp%20ace", "semi;colon", "%00"])
@pytest.mark.fault
def test_bad_run_ids_get_400(web: Web, run_id: str):
    for method, path in (("GET", "stream"), ("POST", "stream"), ("GET", "status")):
        response = web.client.request(method, f"/runs/{run_id}/{path}")
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_run_id"


def test_bad_post_bodies_get_400(web: Web, done_run: tuple[str, list[str]]):
    run_id, _ = done_run
    params = {"token": web.token(run_id)}
    for content in (b"{", b"[1]", b'"x"', b'{"include_pings": "yes"}'):
        response = web.client.post(web.stream_url(run_id), params=params, content=content)
        assert response.status_code == 400, content
        assert response.json()["error"]["type"] == "invalid_request"


# -- disconnects --------------------------------------------------------------------------------


def test_disconnect_detaches_the_reader_at_once_and_never_cancels(
        web: Web, writer: StreamWriter, redis_client: redis.Redis):
    """A quiet run (no data, pings every 30 s): the hang-up alone must free the reader."""
    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    for i in range(3):
        handle.send(f"before {i}")
    handle.flush()
    hub = web.streams.hub
    assert hub is not None
    with connect_sse(web.client, "GET", web.stream_url(run_id),
                     params={"token": web.token(run_id)}) as source:
        events = source.iter_sse()
        assert [next(events).data for _ in range(4)][1:] == ["before 0", "before 1", "before 2"]
        assert wait_until(lambda: hub.stats()["followed"] == 1)
        assert hub.stats()["readers"] == 1
    assert wait_until(lambda: hub.stats() | {"blocking_reads": 0}
                      == {"readers": 0, "followed": 0, "following": 0, "blocking_reads": 0},
                      timeout=3.0)
    handle.send("after")
    handle.finish()
    assert redis_client.hget(f"sse:run:{run_id}:meta", "cancel") is None
    status = web.client.get(f"/runs/{run_id}/status", params={"token": web.token(run_id)})
    assert status.json() | {"run_id": ""} == {"run_id": "", "state": "ended", "last_seq": 5,
                                              "attempt": 1, "terminal": "done"}


def test_many_disconnects_leave_no_reader_behind(web: Web, writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    handle.send("only")
    handle.flush()
    hub = web.streams.hub
    assert hub is not None
    clients = [httpx.Client(base_url=web.server.url, timeout=10) for _ in range(8)]
    streams = [c.stream("GET", web.stream_url(run_id), params={"token": web.token(run_id)})
               for c in clients]
    responses = [s.__enter__() for s in streams]
    lines = [response.iter_lines() for response in responses]  # referenced: closed when collected
    for line_iterator in lines:
        assert "data: only" in itertools.islice(line_iterator, 10)
    assert wait_until(lambda: hub.stats()["readers"] == 8), hub.stats()
    for stream, client in zip(streams, clients, strict=True):
        stream.__exit__(None, None, None)
        client.close()
    assert wait_until(lambda: hub.stats()["readers"] == 0, timeout=3.0)
    assert hub.stats()["followed"] == 0
    handle.finish()


# -- status --------------------------------------------------------------------------------------


def test_status_endpoint(web: Web, done_run: tuple[str, list[str]], writer: StreamWriter):
    run_id, _ = done_run
    ended = web.client.get(f"/runs/{run_id}/status", params={"token": web.token(run_id)})
    assert ended.status_code == 200
    assert ended.json() == {"run_id": run_id, "state": "ended", "last_seq": N + 1,
                            "attempt": 1, "terminal": "done"}
    live_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(live_id)
    handle.send("x")
    handle.flush()
    live = web.client.get(f"/runs/{live_id}/status", params={"token": web.token(live_id)})
    assert live.json() | {"run_id": ""} == {"run_id": "", "state": "live", "last_seq": 1,
                                            "attempt": 1, "terminal": None}
    handle.finish()
    absent = f"run-{uuid.uuid4().hex}"
    missing = web.client.get(f"/runs/{absent}/status", params={"token": web.token(absent)})
    assert missing.status_code == 404
    assert missing.json()["state"] == "missing"
