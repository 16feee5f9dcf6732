"""Faults and bad input over real HTTP: the reference app (``examples.app``) in uvicorn, a real
Redis-compatible server, runs written by the library's writer in the test process.

Cases 4 (resume after disconnects, byte for byte), 7 (bad cursors, run ids and keys, watched
with MONITOR), 14 (the API cut off from Redis mid-stream), 15 (a thousand slow readers, a
thousand that leave at once; the app in a uvicorn subprocess) and 16 (hostile requests).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import pytest
import redis

from examples.app import create_app
from streaming.client import sync_client
from streaming.settings import Settings
from streaming.tokens import TokenSigner
from streaming.web import StreamEndpoints
from streaming.wire import MAX_SEQ, RunKeys
from streaming.writer import RunWriter, StreamWriter
from tests.monitor import FOREIGN, Monitor, beyond_status_reads, foreign_id
from tests.proxy import Proxy, port_of
from tests.waiting import wait_for
from tests.web.app_process import AppProcess
from tests.web.http_server import ServerThread

pytestmark = pytest.mark.fault
SECRET = "fault-suite-" + "s" * 32


@dataclass
class Recorder:
    """The app's launcher, recording what it was asked to start or cancel (and doing nothing)."""

    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def astart(self, generator: str, params: Mapping[str, Any] | None = None) -> str:
        self.calls.append(("start", params))
        return f"run-{uuid.uuid4().hex}"

    async def acancel(self, run_id: str, reason: str = "cancelled") -> bool:
        self.calls.append(("cancel", run_id))
        return True


@dataclass
class App:
    url: str
    streams: StreamEndpoints
    launcher: Recorder
    signer: TokenSigner = field(default_factory=lambda: TokenSigner(SECRET))

    def token(self, run_id: str) -> str:
        return self.signer.issue(run_id, 600)

    def stream(self, run_id: str) -> str:
        return f"{self.url}/runs/{run_id}/stream"


@contextmanager
def serve(settings: Settings) -> Iterator[App]:
    launcher = Recorder()
    app = create_app(settings.replace(token_secret=SECRET), launcher=launcher)
    with ServerThread(app) as server:
        yield App(server.url, app.state.streams, launcher)


@pytest.fixture
def app(settings: Settings) -> Iterator[App]:
    with serve(settings) as served:
        yield served


# -- reading raw event streams ----------------------------------------------------------------


def read_frames(response: httpx.Response, stop_after: int | None = None) -> list[bytes]:
    """The complete event frames of a response, as bytes; comments and ``retry:`` left out.

    With ``stop_after``, stops after that many: the caller then drops the connection, and the
    bytes of an event that arrived only in part are discarded, as a client does.
    """
    frames: list[bytes] = []
    buffer = b""
    for chunk in response.iter_raw():
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            if frame.startswith((b":", b"retry:")):
                continue
            frames.append(frame + b"\n\n")
            if stop_after is not None and len(frames) >= stop_after:
                return frames
    return frames


def only_ending(body: str) -> str:
    """The kind of the one error event ``body`` must consist of."""
    frames = [f for f in body.split("\n\n") if f and not f.startswith(("retry:", ":"))]
    assert len(frames) == 1 and frames[0].startswith("event: error\n"), frames
    return str(json.loads(frames[0].split("data: ", 1)[1])["error"]["kind"])


def frame_id(frame: bytes) -> int:
    return int(frame.split(b"\n", 1)[0].removeprefix(b"id: "))


def expected_frames(client: redis.Redis, run_id: str) -> list[bytes]:
    """What a reader from the start must receive: ``id: <seq>`` and each stored frame."""
    return [f"id: {fields['seq_id']}\n{fields['data']}".encode()
            for _, fields in client.xrange(RunKeys.for_run(run_id).stream)]


def hostile_text(i: int) -> tuple[str, str | None]:
    """Chunk ``i`` of a run whose framing matters byte for byte."""
    kinds = [
        (json.dumps({"text": f"piece {i} é ✓ 😀", "index": i}, ensure_ascii=False), None),
        (f"line one of {i}\nline two\r\nline three\rend", None),
        (json.dumps({"tool": i}), "tool_call"),
        (f"{i}: data with : colons and trailing spaces   ", None),
        ("", None),
    ]
    return kinds[i % len(kinds)]


def produce(run: RunWriter, count: int, pause: float) -> threading.Thread:
    def write() -> None:
        for i in range(count):
            data, event = hostile_text(i)
            run.send(data, event)
            time.sleep(pause)
        run.finish()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


# -- case 4: disconnects at 10 %, 50 % and 90 % of a live run ----------------------------------


# (POST starting_after answers in Letta's protocol: tests/web/test_letta_sdk.py resumes by it.)
@pytest.mark.parametrize("form", ["Last-Event-ID", "starting_after"])
def test_resuming_by_cursor_joins_to_the_full_output_byte_for_byte(app, writer, redis_client,
                                                                   run_id, form):
    count = 99  # and the terminal event: 100 events
    producer = produce(writer.open(run_id), count, pause=0.01)
    token = app.token(run_id)
    joined: list[bytes] = []
    for stop in (10, 50, 90, None):
        cursor = frame_id(joined[-1]) if joined else None
        request: dict[str, Any] = {"params": {"token": token}}
        method = "GET"
        if cursor is not None and form == "Last-Event-ID":
            request["headers"] = {"Last-Event-ID": str(cursor)}
        elif cursor is not None:
            request["params"]["starting_after"] = str(cursor)
        with httpx.Client(timeout=10) as client, \
                client.stream(method, app.stream(run_id), **request) as response:
            assert response.status_code == 200
            joined += read_frames(response, None if stop is None else stop - len(joined))
        if stop is not None:
            assert len(joined) == stop
            assert producer.is_alive(), "the run ended before the reader left: not a live run"
    producer.join(10)
    full = expected_frames(redis_client, run_id)
    assert len(full) == count + 1
    assert b"".join(joined) == b"".join(full)
    with httpx.Client(timeout=10) as client, \
            client.stream("GET", app.stream(run_id), params={"token": token}) as response:
        assert b"".join(read_frames(response)) == b"".join(full)  # one uninterrupted read


# -- case 7: bad input, watched with MONITOR ----------------------------------------------------


@pytest.fixture
def watched(private_server, settings) -> Iterator[tuple[App, Monitor, redis.Redis]]:
    local = settings.replace(redis_url=private_server.url)
    monitor = Monitor(private_server.url)
    admin = sync_client(local)
    with serve(local) as served:
        yield served, monitor, admin
    admin.close()
    monitor.close()


BAD_CURSORS = ["abc", "-1", "$", "1.5", "", "0x10", "1e3", "99999999999999999999",
               str(MAX_SEQ + 1), "\uff11"]
BAD_RUN_IDS = ["x" * 129, "a\x00b", "a\nb", "a\x7fb", "*", "run*", "a b", "sse:run:x", "a:meta",
               "\u00e9", "..", "%FF"]


def cursor_requests(cursor: str) -> list[tuple[str, dict[str, Any]]]:
    requests = [("GET", {"params": {"starting_after": cursor}}),
                ("GET", {"params": {"last_event_id": cursor}}),
                ("POST", {"json": {"starting_after": cursor}})]
    if cursor.isascii() and cursor.strip() == cursor:
        requests.append(("GET", {"headers": {"Last-Event-ID": cursor}}))
    return requests


def test_bad_cursors_and_run_ids_get_400_at_once_and_send_no_command(watched, run_id):
    app, monitor, _ = watched
    start = monitor.mark()
    answers = []
    with httpx.Client(timeout=5) as client:
        for cursor in [*BAD_CURSORS, -1, 1.5, True, [1], MAX_SEQ + 1]:
            for method, request in cursor_requests(cursor) if isinstance(cursor, str) else [
                    ("POST", {"json": {"starting_after": cursor}})]:
                request.setdefault("params", {})["token"] = app.token(run_id)
                answers.append((cursor, client.request(method, app.stream(run_id), **request)))
        for bad in BAD_RUN_IDS:
            path = quote(bad, safe="")
            for method, suffix in (("GET", "stream"), ("POST", "stream"), ("GET", "status"),
                                   ("POST", "cancel")):
                answers.append((bad, client.request(method, f"{app.url}/runs/{path}/{suffix}")))
    assert monitor.since(start) == []  # nothing was read, not even the run's status
    for value, response in answers:
        assert response.status_code in (400, 404), (value, response.status_code, response.text)
        if response.status_code == 400:
            assert response.json()["error"]["type"] in ("invalid_cursor", "invalid_run_id")
        assert response.elapsed.total_seconds() < 1.0
    assert app.launcher.calls == []


@pytest.mark.parametrize(("which", "kind", "make"), FOREIGN, ids=foreign_id)
def test_a_key_of_another_kind_gets_one_error_event_at_once(watched, run_id, which, kind, make):
    app, monitor, admin = watched
    key = getattr(RunKeys.for_run(run_id), which)
    make(admin, key)
    start = monitor.mark()
    with httpx.Client(timeout=5) as client:
        response = client.get(app.stream(run_id), params={"token": app.token(run_id)})
        status = client.get(f"{app.url}/runs/{run_id}/status",
                            params={"token": app.token(run_id)})
    commands = monitor.since(start)
    assert response.status_code == 200 and response.elapsed.total_seconds() < 1.0
    assert only_ending(response.text) == "not_found"
    assert status.status_code == 404 and status.json()["state"] == "missing"
    assert beyond_status_reads(commands, RunKeys.for_run(run_id)) == (set(), set())
    assert admin.type(key) == kind


def test_a_replaced_stream_key_gets_one_lost_event_at_once(watched, run_id):
    """A claimed run whose stream key now holds a string: an explicit ending, not a response
    that breaks off (which a browser would retry forever)."""
    app, _, admin = watched
    keys = RunKeys.for_run(run_id)
    admin.hset(keys.meta, mapping={"attempt": 1, "seq": 3})
    admin.set(keys.stream, "foreign")
    with httpx.Client(timeout=5) as client:
        response = client.get(app.stream(run_id), params={"token": app.token(run_id)})
    assert response.status_code == 200 and response.elapsed.total_seconds() < 1.0
    assert only_ending(response.text) == "lost"


# -- case 14: the API cut off from Redis during blocking reads ----------------------------------


def follow_like_a_browser(app: App, run_id: str, timeout: float) -> tuple[list[bytes], int]:
    """Read the run to its end the way ``EventSource`` does: reconnect with ``Last-Event-ID``
    when a response ends without the terminal event, wait and retry on 503. Returns the
    frames and the number of connections it took."""
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    connections = 0
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": str(frame_id(frames[-1]))} if frames else {}
        connections += 1
        try:
            with httpx.Client(timeout=httpx.Timeout(5, read=30)) as client, client.stream(
                    "GET", app.stream(run_id), params={"token": app.token(run_id)},
                    headers=headers) as response:
                if response.status_code == 204:
                    return frames, connections
                if response.status_code == 503:
                    time.sleep(0.2)
                    continue
                assert response.status_code == 200, response.status_code
                frames += read_frames(response)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if frames and (b"data: [DONE]" in frames[-1] or b"event: error" in frames[-1]):
            return frames, connections
    raise AssertionError(f"not done within {timeout} s: {len(frames)} frames")


def test_the_api_cut_off_from_redis_resumes_without_loss_or_duplicates(
        settings, redis_url, writer, redis_client, run_id):
    proxy = Proxy(port_of(redis_url))
    cut_off = settings.replace(redis_url=proxy.url, block_timeout=1.0, socket_timeout=1.0,
                               liveness_interval=30, producer_timeout=60)
    run = writer.open(run_id)
    try:
        with serve(cut_off) as app:
            result: dict[str, Any] = {}
            reader = threading.Thread(target=lambda: result.update(
                zip(("frames", "connections"), follow_like_a_browser(app, run_id, 60))),
                daemon=True)
            reader.start()
            for i in range(20):
                run.send(f"before {i}")
                time.sleep(0.01)
            time.sleep(0.5)
            proxy.stall.set()  # a silent network: connections open, nothing flows
            before = proxy.accepted
            for i in range(20):
                run.send(f"during {i}")
            run.flush()
            time.sleep(3.0)  # longer than the block and socket timeouts: the stall is noticed
            reconnected = proxy.accepted - before
            proxy.stall.clear()
            proxy.cut()  # and the connections it left behind are dropped
            for i in range(20):
                run.send(f"after {i}")
            run.finish()
            stalled_at = time.monotonic()
            reader.join(30)
            assert not reader.is_alive()
            assert time.monotonic() - stalled_at < 30
    finally:
        proxy.close()
    assert b"".join(result["frames"]) == b"".join(expected_frames(redis_client, run_id))
    # The API noticed the silent connections (socket timeouts) and connected again; the
    # client may or may not have had to reconnect for it.
    assert reconnected > 0


# -- case 15: a thousand slow readers; a thousand that leave at once ---------------------------


@pytest.fixture(scope="module")
def app_process() -> Iterator[tuple[AppProcess, Settings]]:
    from streaming.embedded import EmbeddedServer

    with EmbeddedServer() as server:
        env = {"REDIS_URL": server.url, "STREAMING_TOKEN_SECRET": SECRET,
               "STREAMING_READER_QUEUE": str(READER_QUEUE), "STREAMING_PING_INTERVAL": "30"}
        process = AppProcess(env).start()
        try:
            yield process, Settings(redis_url=server.url)
        finally:
            process.stop()


READER_QUEUE = 10
POOL = 16  # the hub's connections for non-blocking commands (streaming.hub._POOL)
OWN = 2  # besides them: the doorbell's subscription and its reads (streaming.doorbell)
PAD = "p" * 2000


def open_silent_readers(port: int, path: str, count: int) -> list[socket.socket]:
    """Sockets that send the request and never read a byte of the answer."""
    request = f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        sockets.append(sock)
    return sockets


def reset_all(sockets: list[socket.socket]) -> None:
    """Close every socket at once with a reset, as a crashing client or a dropped NAT does."""
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    for sock in sockets:
        sock.close()


def wait_idle(app: AppProcess, timeout: float = 30.0) -> None:
    """Until the app's CPU is quiet: every reader has been served what there was."""
    process = psutil.Process(app.process.pid)  # type: ignore[union-attr]
    process.cpu_percent()
    deadline = time.monotonic() + timeout
    while process.cpu_percent(0.5) > 20:
        assert time.monotonic() < deadline, f"the app stayed busy for {timeout} s"


def latencies(app: AppProcess, signer: TokenSigner, run: RunWriter, count: int) -> list[float]:
    """Seconds from each write of ``run`` to its arrival at a normal HTTP reader."""
    seen: list[float] = []
    url = f"{app.url}/runs/{run.run_id}/stream"
    with httpx.Client(timeout=10) as client, client.stream(
            "GET", url, params={"token": signer.issue(run.run_id, 600),
                                "starting_after": str(run.flush())}) as response:
        lines = response.iter_lines()
        for _ in range(count):
            sent = time.time()
            run.send(json.dumps({"sent": sent}))
            line = next(line for line in lines if line.startswith("data: "))
            seen.append(time.time() - json.loads(line[6:])["sent"])
            time.sleep(0.05)
    return seen


def test_a_thousand_silent_readers_then_all_leaving_at_once(app_process):
    """1000 clients that never read, on a live run: the app's memory is bounded by
    reader_queue per reader, a normal reader elsewhere keeps its latency; then all 1000
    reset their connections at once and nothing is left behind."""
    app, settings = app_process
    signer = TokenSigner(SECRET)
    writer = StreamWriter(settings).start()
    try:
        busy = writer.open(f"run-{uuid.uuid4().hex}")
        for i in range(40):
            busy.send(json.dumps({"i": i, "pad": PAD * 2}))
        quiet = writer.open(f"run-{uuid.uuid4().hex}")
        assert max(latencies(app, signer, quiet, 5)) < 1.0  # warm: imports, pools, scripts
        redis_port = port_of(settings.redis_url)
        baseline = (app.rss(), app.connections() - app.redis_connections(redis_port))
        path = f"/runs/{busy.run_id}/stream?token={signer.issue(busy.run_id, 600)}"
        sockets = open_silent_readers(app.port, path, 1000)
        try:
            wait_for(lambda: app.stats()["readers"] == 1000, 60, "every reader attached")
            wait_idle(app)
            held = app.rss() - baseline[0]
            assert app.redis_connections(redis_port) <= POOL + OWN  # not one per reader
            slow = latencies(app, signer, quiet, 10)
        finally:
            reset_all(sockets)
        wait_for(lambda: app.stats()["readers"] == 0 and app.stats()["followed"] == 0, 30,
                 "every reader detached")
        wait_for(lambda: app.connections() - app.redis_connections(redis_port) <= baseline[1],
                 15, "every client socket closed")
        assert app.redis_connections(redis_port) <= POOL + OWN
        busy.send("the run goes on: nobody cancelled it")
        busy.finish()
        quiet.finish()
    finally:
        writer.stop()
    # Per reader: at most reader_queue entries of ~4 KB in flight. With the former 500-entry
    # catch-up batch every reader held all 40 (~250 MB in all).
    assert held < 150 * 2**20, f"{held / 2**20:.0f} MB for 1000 silent readers"
    assert max(slow) < 0.5, slow
    assert "Traceback" not in app.output(), app.output()[-3000:]


def test_readers_whose_sockets_are_full_do_not_hold_the_run_back(app_process):
    """Clients stop reading a fast run until their sockets and the kernel's buffers are full:
    the app then holds at most reader_queue entries for each, however far the run goes on,
    and a normal reader of the same run keeps up."""
    app, settings = app_process
    signer = TokenSigner(SECRET)
    writer = StreamWriter(settings).start()
    try:
        run = writer.open(f"run-{uuid.uuid4().hex}")
        run.send("first")
        run.flush()
        wait_idle(app)
        baseline = app.rss()
        path = f"/runs/{run.run_id}/stream?token={signer.issue(run.run_id, 600)}"
        sockets = open_silent_readers(app.port, path, 30)
        try:
            held = []
            for _ in range(2):
                for i in range(3000):  # 6 MB: more than the kernel takes for a silent socket
                    run.send(json.dumps({"i": i, "pad": PAD}))
                run.flush()
                wait_idle(app)
                held.append(app.rss() - baseline)
            slow = latencies(app, signer, run, 10)
            assert app.stats()["readers"] == 30
        finally:
            reset_all(sockets)
        wait_for(lambda: app.stats()["readers"] == 0, 30, "every reader detached")
        run.finish()
    finally:
        writer.stop()
    # A stalled reader holds at most reader_queue (10) entries of ~2 KB and its socket's
    # write buffer; with the former 500-entry catch-up batch, ~2 MB each.
    assert held[0] < 30 * 2**20, f"{held[0] / 2**20:.0f} MB for 30 stalled readers"
    assert held[1] - held[0] < 10 * 2**20, "the app's memory follows the run's growth"
    assert max(slow) < 0.5, slow


# -- case 16: hostile requests ------------------------------------------------------------------


def test_bad_tokens_are_refused_before_any_command(watched, writer, run_id):
    app, monitor, _ = watched
    run = writer.open(run_id)
    run.send("secret")
    run.flush()
    good = app.token(run_id)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    tokens = {
        "missing": None, "forged": forged, "empty": "",
        "expired": app.signer.issue(run_id, 10, now=time.time() - 60),
        "other run": app.token(f"run-{uuid.uuid4().hex}"),
        "other secret": TokenSigner("o" * 40).issue(run_id, 60),
        "oversized": "a" * 8000, "non-ASCII": good + "\u00e9", "control": good + "\x00",
    }
    start = monitor.mark()
    answers = {}
    with httpx.Client(timeout=5) as client:
        for name, token in tokens.items():
            params = {} if token is None else {"token": token}
            for method, suffix in (("GET", "stream"), ("POST", "stream"), ("GET", "status"),
                                   ("POST", "cancel")):
                response = client.request(method, f"{app.url}/runs/{run_id}/{suffix}",
                                          params=params)
                answers[name, method, suffix] = response
    assert monitor.since(start) == []
    for (name, *_), response in answers.items():
        expected = 403 if name == "other run" else 401
        assert response.status_code == expected, (name, response.text)
        assert "secret" not in response.text and response.elapsed.total_seconds() < 1.0
    assert app.launcher.calls == []
    run.finish()


@pytest.mark.parametrize("body", [
    b"\xff\xfe{\"text\": \"a\"}", b"{\"text\": \"\xc3\x28\"}", b"[]", b"\"text\"", b"42",
    b"null", b"{\"text\": 5}", b"{\"rate\": true}", b"{\"chunk_size\": 1.5}", b"{",
], ids=repr)
def test_hostile_run_requests_start_nothing(watched, body):
    app, monitor, _ = watched
    start = monitor.mark()
    with httpx.Client(timeout=5) as client:
        response = client.post(f"{app.url}/runs", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request"
    assert app.launcher.calls == []
    assert monitor.since(start) == []


@pytest.mark.parametrize("body", [b"\xff\xfe", b"{\"starting_after\": \"\xc3\x28\"}", b"[0]",
                                  b"\"0\"", b"{\"include_pings\": 1}"], ids=repr)
def test_hostile_resume_bodies_are_refused_before_any_command(watched, run_id, body):
    app, monitor, _ = watched
    start = monitor.mark()
    with httpx.Client(timeout=5) as client:
        response = client.post(app.stream(run_id), params={"token": app.token(run_id)},
                               content=body)
    assert response.status_code == 400, response.text
    assert monitor.since(start) == []
