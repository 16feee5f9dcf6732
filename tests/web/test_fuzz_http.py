"""Property (issue 15): any request to any route of the reference app (paths, methods, headers,
query, bodies, tokens, cookies) gets an answer below 500, within its bound; a refused request
sends no Redis command (watched with MONITOR on a private server); no request creates a key.

The launcher records what it is asked and starts nothing, so every key in the store is one the
test made: a finished run and a queued one, which valid tokens in the mix can read.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from starlette.routing import Route

from examples.app import create_app
from streaming.control import mark_pending
from streaming.embedded import EmbeddedServer
from streaming.settings import Settings
from streaming.tokens import TokenSigner
from streaming.writer import StreamWriter
from tests.monitor import Monitor
from tests.web.http_server import ServerThread
from tests.web.test_faults_http import Recorder

pytestmark = pytest.mark.fault
SECRET = "fuzz-suite-" + "s" * 32
DONE, QUEUED = f"run-{uuid.uuid4().hex}", f"run-{uuid.uuid4().hex}"
#: Longest a healthy app may take to answer (headers) any request: its store waits are bounded
#: by request_timeout (2 s here); a hang would run into the client's 30 s timeout.
BOUND = 6.0
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


@dataclass
class Target:
    url: str
    monitor: Monitor
    admin: redis.Redis
    signer: TokenSigner
    launcher: Recorder


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    with EmbeddedServer() as server:
        settings = Settings(redis_url=server.url, token_secret=SECRET, request_timeout=2.0,
                            liveness_interval=0.5, producer_timeout=3600)
        writer = StreamWriter(settings).start()
        run = writer.open(DONE)
        for i in range(5):
            run.send(json.dumps({"text": f"chunk {i}"}))
        run.finish()
        writer.stop()
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        mark_pending(admin, QUEUED, settings)
        launcher = Recorder()
        monitor = Monitor(server.url)
        with ServerThread(create_app(settings, launcher=launcher)) as app:
            yield Target(app.url, monitor, admin, TokenSigner(SECRET), launcher)
        monitor.close()
        admin.close()


# -- strategies -------------------------------------------------------------------------------

ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
any_text = st.text(max_size=40)
run_ids = st.one_of(st.sampled_from([DONE, QUEUED, "run-missing"]),
                    st.sampled_from([".", "..", "a" * 129, "", "%2E%2E", "sse:run:x", "a/b"]),
                    any_text)


def app_routes() -> list[str]:
    """``"METHOD /path"`` of every route of the reference app (``{}`` for the run id), read
    from the app itself: a route added later is fuzzed too."""
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", token_secret=SECRET),
                     launcher=Recorder())
    routes = [f"{method} {route.path.replace('{run_id}', '{}')}"
              for route in app.routes if isinstance(route, Route)
              for method in sorted((route.methods or set()) - {"HEAD"})]
    return [*routes, "GET /static/app.js"]


#: Every route, four times as likely as a random method and path.
ROUTES = app_routes()
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]
PATHS = [route.split()[1] for route in ROUTES] + ["/static/{}", "/{}", "/runs/{}"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12)
demo_params = st.fixed_dictionaries({}, optional={
    "text": any_text, "rate": st.one_of(st.floats(), st.integers()), "chunk_size": st.integers(),
    "extra": json_values})
#: Bodies that broke the app once (deep nesting, NaN, lone surrogates, past the size limit),
#: and ones it accepts.
known_bodies = st.sampled_from([
    b"{}", b'{"rate": 50, "chunk_size": 2}', b'{"starting_after": 3}', b"[" * 50_000,
    b'{"a":' * 50_000, b'{"rate": NaN}', b'{"rate": Infinity}', b'{"text": "\\ud800"}',
    b"x" * (1024 * 1024 + 1), b"\xff\xfe", b'{"chunk_size": 0}', b'{"text": "a", "x": 1}'])
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    demo_params.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={"starting_after": json_values,
                                        "include_pings": json_values}).map(
        lambda v: json.dumps(v).encode()),
    known_bodies, known_bodies,
)
cursors = st.one_of(st.none(), st.integers(-5, 2**60).map(str), ascii_text,
                    st.sampled_from(["0", "3", "00000000000000001", "9007199254740991"]))


@st.composite
def tokens(draw: Any, run_id: str) -> str | None:
    signer = TokenSigner(SECRET)
    subject = run_id if _valid(run_id) else DONE
    choice = draw(st.sampled_from(["none", "junk", "read", "read", "cancel", "both", "session",
                                   "session", "other", "expired", "forged"]))
    if choice == "none":
        return None
    if choice == "junk":
        return draw(ascii_text)
    scopes = {"read": ("read",), "cancel": ("cancel",), "both": ("read", "cancel"),
              "session": ("create",)}.get(choice, ("read",))
    if choice == "session":
        subject = f"session-{uuid.uuid4().hex}"
    if choice == "other":
        subject = f"run-{uuid.uuid4().hex}"
    token = signer.issue(subject, 600, scopes=scopes,
                         now=time.time() - 3600 if choice == "expired" else None)
    return token[:-2] + "AA" if choice == "forged" else token


def _valid(run_id: str) -> bool:
    try:
        from streaming.wire import validate_run_id

        validate_run_id(run_id)
        return True
    except ValueError:
        return False


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    run_id = draw(run_ids)
    route = draw(st.sampled_from([*ROUTES * 4, "any"]))
    method, path = (draw(st.sampled_from(METHODS)), draw(st.sampled_from(PATHS))) \
        if route == "any" else route.split()
    path = path.format(quote(run_id, safe=""))
    token = draw(tokens(run_id))
    where = draw(st.sampled_from(["query", "bearer", "cookie", "session cookie"]
                                 if path != "/runs" else ["bearer", "session cookie"]))
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    cookies: dict[str, str] = {}
    if token is not None:
        if where == "query":
            params["token"] = token
        elif where == "bearer":
            headers["Authorization"] = f"Bearer {token}"
        else:
            cookies["streaming_session" if where == "session cookie" else "streaming_token"] = token
    for name in ("starting_after", "last_event_id"):
        value = draw(cursors)
        if value is not None:
            params[name] = value
    last_event_id = draw(cursors)
    if last_event_id is not None and last_event_id.isprintable() and last_event_id.isascii():
        headers["Last-Event-ID"] = last_event_id
    if draw(st.booleans()):
        headers[draw(st.sampled_from(["Content-Type", "X-Forwarded-For", "Origin"]))] = \
            draw(ascii_text)
    headers = {name: value.strip() for name, value in headers.items()}  # what HTTP allows
    return {"method": method, "url": path, "params": params, "headers": headers, "cookies": cookies,
            "content": draw(bodies)}


# -- the property -------------------------------------------------------------------------------


def answer(target: Target, request: dict[str, Any]) -> tuple[httpx.Response, float, bytes]:
    """The response (headers and, unless it is an event stream, its body) and the seconds to
    its headers. An event stream is closed after its headers (a queued run never ends)."""
    cookies = request.pop("cookies")
    with httpx.Client(base_url=target.url, timeout=30, cookies=cookies) as client:
        started = time.monotonic()
        with client.stream(**request) as response:
            elapsed = time.monotonic() - started
            streaming = response.headers.get("content-type", "").startswith("text/event-stream")
            body = b"" if streaming else response.read()
    return response, elapsed, body


def refused_before_the_store(response: httpx.Response, body: bytes) -> bool:
    """A 4xx decided on the request alone (not a lookup's answer: an unknown run's 404
    status, a cursor past a run's end)."""
    if not 400 <= response.status_code < 500:
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return True  # the router's own answers (404, 405)
    if response.status_code == 404 and isinstance(parsed, dict) and "state" in parsed:
        return False
    message = parsed.get("error", {}).get("message", "") if isinstance(parsed, dict) else ""
    return "past run" not in message


@hyp_settings(max_examples=EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
@given(request=requests())
def test_any_request_gets_a_bounded_answer_below_500_and_creates_nothing(target, request):
    keys = set(target.admin.keys("*"))
    calls = len(target.launcher.calls)
    start = target.monitor.mark()
    response, elapsed, body = answer(target, dict(request))
    commands = target.monitor.since(start)
    event(f"{request['method']} {response.status_code}")
    assert response.status_code < 500, (request, response.status_code, body[:500])
    assert elapsed < BOUND, (request, elapsed)
    if refused_before_the_store(response, body):
        assert commands == [], (request, response.status_code, body[:300], commands)
        assert len(target.launcher.calls) == calls
    assert set(target.admin.keys("*")) == keys, request
