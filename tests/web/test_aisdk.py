"""The Vercel AI SDK's chat client follows runs through the UI message stream route.

``tests/node/aisdk_chat.mjs`` runs under Node 20 with the real ``ai`` package (6.x, pinned in
``tests/node/package-lock.json``; ``npm ci`` installs it on first use): the package's own chat
(what ``useChat`` wraps) with ``DefaultChatTransport``, reconnecting with ``resumeStream()`` as
``useChat({resume: true})`` does, to ``GET /runs/{id}/ui-stream``. Runs are written by the
library's writer into a real Redis-compatible server; the server is the library's endpoints
under uvicorn, a proxy in between cuts connections mid-stream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from streaming.settings import Settings
from streaming.tokens import TokenSigner
from streaming.web import StreamEndpoints
from streaming.wire import Terminal
from streaming.writer import StreamWriter
from tests.conftest import require
from tests.web.http_server import ServerThread
from tests.web.sse_proxy import CuttingProxy

pytestmark = pytest.mark.slow

SECRET = "aisdk-test-" + "u" * 32
NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "aisdk_chat.mjs"
TEXTS = [f"word{i} " for i in range(24)]


@pytest.fixture(scope="session")
def node() -> str:
    """Node 20+ with the locked ``ai`` package installed in tests/node."""
    node = shutil.which("node")
    require(node is not None, "no node on PATH (Node 20 runs the AI SDK's client)")
    assert node is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    require(int(version.stdout.strip().lstrip("v").split(".")[0]) >= 20,
            f"the ai package needs Node 20+, found {version.stdout.strip()}")
    if not (NODE_DIR / "node_modules" / "ai" / "package.json").exists():
        npm = shutil.which("npm")
        require(npm is not None, "no npm to install tests/node's packages")
        done = subprocess.run([str(npm), "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=600)
        require(done.returncode == 0, f"npm ci failed in tests/node: {done.stderr[-500:]}")
    return node


@pytest.fixture
def ui_settings(settings: Settings) -> Settings:
    return settings.replace(token_secret=SECRET, ping_interval=0.5)


def served(settings: Settings) -> ServerThread:
    streams = StreamEndpoints(settings, retry_ms=1000)
    app = Starlette(routes=[Mount("", routes=streams.routes)], lifespan=streams.lifespan)
    server = ServerThread(app)
    server.streams = streams  # type: ignore[attr-defined]
    return server


def wait_for_readers(server: ServerThread, count: int, timeout: float = 60.0) -> None:
    """Until ``count`` clients (processes still starting) have their streams open."""
    deadline = time.monotonic() + timeout
    while not ((hub := server.streams.hub) and hub.stats()["readers"] >= count):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the clients never opened their streams"
        time.sleep(0.02)


def chat(node: str, base_url: str, run_id: str) -> dict[str, Any]:
    token = TokenSigner(SECRET).issue(run_id, 600)
    done = subprocess.run([node, str(SCRIPT), base_url, run_id, token], capture_output=True,
                          text=True, timeout=120, cwd=NODE_DIR)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def text_of(message: dict[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


def produce(writer: StreamWriter, run_id: str, texts: list[str], *, pause: float = 0.04,
            ending: Terminal = Terminal.DONE, message: str = "",
            readers: tuple[ServerThread, int] | None = None) -> None:
    """Write ``texts`` as demo chunks, then the ending; with ``readers``, once that many
    clients read."""
    handle = writer.open(run_id)
    handle.flush()
    if readers is not None:
        wait_for_readers(*readers)
    for index, text in enumerate(texts):
        handle.send(json.dumps({"text": text, "index": index}))
        handle.flush()
        time.sleep(pause)
    handle.finish(ending, message)


def test_live_run_cut_mid_stream_assembles_the_uninterrupted_message(
        node: str, ui_settings: Settings, writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    with served(ui_settings) as server:
        producer = threading.Thread(target=produce, args=(writer, run_id, TEXTS),
                                    kwargs={"readers": (server, 2), "pause": 0.06})
        proxy = CuttingProxy(server.port, cut_after=6, marker=b"\ndata: ")
        results: dict[str, dict[str, Any]] = {}

        def follow(name: str, url: str) -> None:
            results[name] = chat(node, url, run_id)

        clients = [threading.Thread(target=follow, args=("cut", proxy.url)),
                   threading.Thread(target=follow, args=("whole", server.url))]
        producer.start()
        for client in clients:
            client.start()
        for client in [*clients, producer]:
            client.join(120)
        proxy.close()
        results["finished"] = chat(node, server.url, run_id)
    cut, whole, finished = results["cut"], results["whole"], results["finished"]
    assert cut["cuts"] >= 2 and proxy.cuts >= 2
    assert whole["cuts"] == 0
    for result in (cut, whole, finished):
        assert result["status"] == "ready", result
        assert [m["id"] for m in result["messages"]] == [run_id]  # one message, never two
        assert text_of(result["messages"][0]) == "".join(TEXTS)
        assert result["responses"][-1][-1] == "finish"
    assert cut["messages"] == whole["messages"] == finished["messages"]


def test_error_ending_is_the_protocols_error(node: str, ui_settings: Settings,
                                             writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    produce(writer, run_id, TEXTS[:3], pause=0, ending=Terminal.ERROR, message="model failed")
    with served(ui_settings) as server:
        result = chat(node, server.url, run_id)
    assert result["status"] == "error" and result["error"] == "error: model failed"
    assert result["responses"][-1][-1] == "error"
    assert text_of(result["messages"][0]) == "".join(TEXTS[:3])


def test_cancelled_run_ends_with_abort(node: str, ui_settings: Settings, writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    produce(writer, run_id, TEXTS[:2], pause=0, ending=Terminal.CANCELLED, message="stop")
    with served(ui_settings) as server:
        result = chat(node, server.url, run_id)
    assert result["status"] == "ready" and result["error"] is None
    assert result["responses"][-1][-2:] == ["text-end", "abort"]
    assert text_of(result["messages"][0]) == "".join(TEXTS[:2])


def test_lost_run_is_an_error(node: str, ui_settings: Settings, writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    handle.send("then the producer died")
    handle.release()
    with served(ui_settings) as server:
        result = chat(node, server.url, run_id)
    assert result["status"] == "error" and result["error"].startswith("lost: ")


def test_finished_restarted_run_shows_only_the_last_attempt(node: str, ui_settings: Settings,
                                                            writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    first = writer.open(run_id)
    first.send(json.dumps({"text": "abandoned text ", "index": 0}))
    first.release()
    produce(writer, run_id, TEXTS[:4], pause=0)  # the second attempt starts over
    with served(ui_settings) as server:
        result = chat(node, server.url, run_id)
    [message] = result["messages"]
    assert text_of(message) == "".join(TEXTS[:4])
    restarts = [p for p in message["parts"] if p["type"] == "data-restarted"]
    assert len(restarts) == 1 and restarts[0]["data"]["attempt"] == 2


def test_live_restart_rebuilds_the_message_without_the_abandoned_text(
        node: str, ui_settings: Settings, writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    first = writer.open(run_id)
    first.send(json.dumps({"text": "abandoned text ", "index": 0}))
    first.flush()

    def restart(server: ServerThread) -> None:
        wait_for_readers(server, 1)
        time.sleep(0.5)  # the client has the abandoned text by now
        first.release()
        produce(writer, run_id, TEXTS[:4])

    with served(ui_settings) as server:
        producer = threading.Thread(target=restart, args=(server,))
        producer.start()
        result = chat(node, server.url, run_id)
    producer.join(30)
    [message] = result["messages"]
    assert text_of(message) == "".join(TEXTS[:4])
    assert result["resumes"] >= 2  # the server dropped the stale view; the client resumed


def test_unknown_run_is_an_error(node: str, ui_settings: Settings):
    with served(ui_settings) as server:
        result = chat(node, server.url, f"run-{uuid.uuid4().hex}")
    assert result["status"] == "error" and "does not exist" in result["error"]


def test_protocol_header_parts_and_done(ui_settings: Settings, writer: StreamWriter):
    """What the route sends, byte for byte: the header the SDK checks, JSON parts, [DONE]."""
    run_id = f"run-{uuid.uuid4().hex}"
    produce(writer, run_id, TEXTS[:2], pause=0)
    token = TokenSigner(SECRET).issue(run_id, 600)
    with served(ui_settings) as server:
        url = f"{server.url}/runs/{run_id}/ui-stream"
        response = httpx.get(url, params={"token": token}, timeout=10)
        at_end = httpx.get(url, params={"token": token, "starting_after": 3}, timeout=10)
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.text.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    parts = [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]
    assert parts == [
        {"type": "start", "messageId": run_id},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": TEXTS[0]},
        {"type": "text-delta", "id": "text-1", "delta": TEXTS[1]},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish", "finishReason": "stop"},
    ]
    assert at_end.status_code == 204  # the transport's "no active stream"
