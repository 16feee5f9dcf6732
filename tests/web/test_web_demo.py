"""The demo command, run as a new user would: a subprocess, non-interactive, ``--once``."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from streaming.embedded import free_port
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
_OURS = ("REDIS_URL", "CELERY_", "STREAMING_", "WORKER_", "OPENAI_")


def fresh_env(**values: str) -> dict[str, str]:
    """The caller's environment without any of the system's settings: a fresh machine."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_OURS)} | values


def run_demo(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    require((ROOT / "worker" / "__init__.py").exists(), "the worker package (issue 3) is absent")
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--once", "--port", str(port), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    return done, port


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_demo_once_on_a_fresh_machine():
    """No REDIS_URL: embedded server, prefork worker, Flower, app; one run; exit 0."""
    flower = free_port()
    done, port = run_demo(fresh_env(), "--flower-port", str(flower))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "starting the embedded Redis-compatible server" in done.stdout
    assert f"http://127.0.0.1:{port}/" in done.stdout
    assert f"http://127.0.0.1:{flower}/" in done.stdout
    assert "run ended: done" in done.stdout
    assert not listening(port) and not listening(flower)  # everything was stopped


@pytest.mark.slow
def test_demo_uses_the_given_redis(redis_url: str):
    done, _ = run_demo(fresh_env(REDIS_URL=redis_url), "--no-flower")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded" not in done.stdout
    run_id = re.search(r"started run (\S+);", done.stdout)
    assert run_id is not None, done.stdout
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hget(f"sse:run:{run_id[1]}:meta", "end") == "done"
    client.close()
    # The printed tail command, copied as it is (with this test's Python), replays the run.
    tail = re.search(r"^  (REDIS_URL=\S+) python (-m streaming tail \S+)$", done.stdout, re.M)
    assert tail is not None and tail[2].endswith(run_id[1]), done.stdout
    tailed = subprocess.run(f"{tail[1]} {shlex.quote(sys.executable)} {tail[2]}", shell=True,
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert tailed.returncode == 0, tailed.stderr
    assert tailed.stdout.splitlines()[-1] == "[DONE]"
