"""Letta's official Python SDK reads our runs through the seed's resume route, unmodified.

``letta-client`` (1.x, from PyPI) lives in its own virtualenv under the user's cache
(``~/.cache/celery-streaming-tests/letta-venv``, made on first use) because its pins are not
ours. ``letta_reader.py`` runs there: ``Letta(base_url=..., api_key=<read token>)`` and
``client.runs.messages.stream(run_id, starting_after=N)``, resuming by the last ``seq_id`` after
a cut connection. The server is the library's endpoints mounted under ``/v1`` as the README
shows, with ``retry_ms`` set as the reference app sets it; runs are written by the library's
writer into a real Redis-compatible server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from streaming.settings import Settings
from streaming.tokens import TokenSigner
from streaming.web import StreamEndpoints
from streaming.writer import StreamWriter
from tests.conftest import require
from tests.web.http_server import ServerThread
from tests.web.sse_proxy import CuttingProxy

pytestmark = pytest.mark.slow

SECRET = "letta-test-" + "k" * 32
READER = Path(__file__).with_name("letta_reader.py")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
VENV = CACHE / "celery-streaming-tests" / "letta-venv"
REQUIREMENT = "letta-client>=1.12,<2"


@pytest.fixture(scope="session")
def letta_python() -> Path:
    """The Python of a virtualenv with Letta's SDK (made once, from PyPI)."""
    python = VENV / "bin" / "python"
    if not _has_sdk(python):
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", REQUIREMENT],
                              capture_output=True, text=True, timeout=600)
        require(done.returncode == 0, f"could not install {REQUIREMENT}: {done.stderr[-500:]}")
    return python


def _has_sdk(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import letta_client"], capture_output=True,
                           timeout=60)
    return probe.returncode == 0


@pytest.fixture
def letta_settings(settings: Settings) -> Settings:
    return settings.replace(token_secret=SECRET, ping_interval=30.0)


def served(settings: Settings) -> ServerThread:
    """The endpoints under /v1, where Letta's SDK looks for them."""
    streams = StreamEndpoints(settings, retry_ms=1000)
    app = Starlette(routes=[Mount("/v1", routes=streams.routes)], lifespan=streams.lifespan)
    server = ServerThread(app)
    server.streams = streams  # type: ignore[attr-defined]
    return server


def wait_for_a_reader(server: ServerThread, timeout: float = 60.0) -> None:
    """Until the SDK (a process still starting) has its stream open."""
    deadline = time.monotonic() + timeout
    while not ((hub := server.streams.hub) and hub.stats()["readers"]):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the SDK never opened the stream"
        time.sleep(0.02)


def read_with_sdk(python: Path, base_url: str, run_id: str, *args: str) -> list[dict[str, Any]]:
    token = TokenSigner(SECRET).issue(run_id, 600)
    done = subprocess.run([str(python), str(READER), base_url, token, run_id, *args],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def messages(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line["message"] | {"_type": line["type"]} for line in lines if "message" in line]


def letta_frame(content: str, **fields: Any) -> str:
    """An assistant message as Letta's server stores it: placeholders for seq_id and run_id."""
    message = {"id": f"message-{uuid.uuid4()}", "date": "2026-01-01T00:00:00+00:00",
               "message_type": "assistant_message", "content": content, "seq_id": None,
               "run_id": None, **fields}
    return json.dumps(message, separators=(",", ":"))


def write_letta_run(writer: StreamWriter, run_id: str, contents: list[str],
                    server: ServerThread) -> None:
    """A run written as Letta writes one, paced once a client reads: messages, its stop
    reason, [DONE]."""
    handle = writer.open(run_id)
    handle.flush()
    wait_for_a_reader(server)
    for content in contents:
        handle.send(letta_frame(content))
        handle.flush()
        time.sleep(0.08)
    handle.send(json.dumps({"message_type": "stop_reason", "stop_reason": "end_turn"}))
    handle.finish()


def test_sdk_reads_a_letta_run_and_resumes_by_seq_id_after_cuts(
        letta_python: Path, letta_settings: Settings, writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    contents = [f"part {i} " for i in range(15)]
    with served(letta_settings) as server:
        producer = threading.Thread(target=write_letta_run,
                                    args=(writer, run_id, contents, server))
        producer.start()
        proxy = CuttingProxy(server.port, cut_after=4)
        try:
            lines = read_with_sdk(letta_python, proxy.url, run_id)
        finally:
            proxy.close()
            producer.join(10)
    got = messages(lines)
    assistant = [m for m in got if m["_type"] == "AssistantMessage"]
    assert [m["content"] for m in assistant] == contents
    assert [m["seq_id"] for m in assistant] == list(range(1, 16))  # filled, each once
    assert {m["run_id"] for m in assistant} == {run_id}
    assert [m["stop_reason"] for m in got if m["_type"] == "LettaStopReason"] == ["end_turn"]
    assert sum("cut" in line for line in lines) >= 3 and proxy.cuts >= 3
    assert lines[-1] == {"end": "done"}


def test_sdk_reads_plain_chunks_pings_and_a_restart_of_a_live_run(
        letta_python: Path, letta_settings: Settings, writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    first = writer.open(run_id)
    first.send(json.dumps({"text": "abandoned ", "index": 0}))
    first.flush()
    settings = letta_settings.replace(ping_interval=0.2)

    def produce(server: ServerThread) -> None:
        wait_for_a_reader(server)
        time.sleep(1.0)  # five ping intervals of quiet: the client gets pings meanwhile
        # Released only now: a run with no writer for producer_timeout (2 s here) is lost,
        # and the SDK's process alone can take that long to start on a loaded machine.
        first.release()
        second = writer.open(run_id)  # the second attempt: a `restarted` event first
        second.send("plain text")
        second.send(json.dumps({"text": "json text", "index": 0}))
        second.finish()

    with served(settings) as server:
        producer = threading.Thread(target=produce, args=(server,))
        producer.start()
        lines = read_with_sdk(letta_python, server.url, run_id)
        producer.join(10)
    got = messages(lines)
    kinds = [m["_type"] for m in got]
    assert "LettaPing" in kinds and all(m["run_id"] == run_id for m in got)
    restarted = [m for m in got if m.get("message_type") == "restarted"]
    assert len(restarted) == 1 and restarted[0]["attempt"] == 2
    after = got[got.index(restarted[0]) + 1:]
    assistant = [m for m in after if m["_type"] == "AssistantMessage"]
    assert [m["content"] for m in assistant] == ["plain text", "json text"]
    assert assistant[1]["index"] == 0  # the chunk's own fields are kept
    assert [m["stop_reason"] for m in got if m["_type"] == "LettaStopReason"] == ["end_turn"]
    assert lines[-1] == {"end": "done"}


def test_sdk_without_pings_gets_none(letta_python: Path, letta_settings: Settings,
                                     writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    handle.send("hello")
    handle.flush()
    threading.Timer(1.0, handle.finish).start()
    with served(letta_settings.replace(ping_interval=0.1)) as server:
        lines = read_with_sdk(letta_python, server.url, run_id, "--no-pings")
    assert [m["_type"] for m in messages(lines)] == ["AssistantMessage", "LettaStopReason"]


def test_cancelled_run_is_a_cancelled_stop_reason(letta_python: Path, letta_settings: Settings,
                                                   writer: StreamWriter):
    from streaming.wire import Terminal

    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    handle.send("before the cancel")
    handle.finish(Terminal.CANCELLED, "the user pressed stop")
    with served(letta_settings) as server:
        lines = read_with_sdk(letta_python, server.url, run_id)
    got = messages(lines)
    assert [m["stop_reason"] for m in got if m["_type"] == "LettaStopReason"] == ["cancelled"]
    assert lines[-1] == {"end": "done"}  # Letta's SDK ends a cancelled run without raising


@pytest.mark.parametrize("kind", ["error", "timeout"])
def test_failed_run_raises_the_sdks_error_with_letta_error_message(
        letta_python: Path, letta_settings: Settings, writer: StreamWriter, kind: str):
    from streaming.wire import Terminal

    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    handle.send("partial")
    handle.finish(Terminal(kind), "the model went away", type="UpstreamError")
    with served(letta_settings) as server:
        lines = read_with_sdk(letta_python, server.url, run_id)
    got = messages(lines)
    assert [m["stop_reason"] for m in got if m["_type"] == "LettaStopReason"] == ["error"]
    end = lines[-1]
    assert end["end"] == "error"
    assert end["body"]["message_type"] == "error_message"
    assert end["body"]["error_type"] == kind and end["body"]["run_id"] == run_id
    assert end["body"]["message"] == "the model went away"


def test_lost_run_raises_the_sdks_error(letta_python: Path, letta_settings: Settings,
                                        writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    handle = writer.open(run_id)
    handle.send("then the producer died")
    handle.release()  # no ending: readers end it `lost` after producer_timeout
    with served(letta_settings) as server:
        lines = read_with_sdk(letta_python, server.url, run_id)
    assert lines[-1]["end"] == "error" and lines[-1]["body"]["error_type"] == "lost"


def test_unknown_run_is_the_sdks_not_found(letta_python: Path, letta_settings: Settings):
    with served(letta_settings) as server:
        lines = read_with_sdk(letta_python, server.url, f"run-{uuid.uuid4().hex}")
    assert lines == [lines[-1]] and lines[-1]["status"] == 404
