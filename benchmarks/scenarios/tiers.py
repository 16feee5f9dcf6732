"""The worker and web tiers as subprocesses of the harness: a prefork Celery worker and the
reference app under uvicorn, both against the harness's server, through ``examples.services``
(each child in its own session, logging to a file, stopped with SIGTERM then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from examples.services import ServiceError, Services
from streaming.embedded import free_port

__all__ = ["ROOT", "ServiceError", "app_service", "services", "start_worker", "uvicorn_args"]

ROOT = Path(__file__).resolve().parents[2]
WORKER_READY_TIMEOUT = 60.0
APP_READY_TIMEOUT = 30.0
#: What a production deployment runs: uvloop and httptools (the web extra installs both).
UVICORN_ARGS = ("--loop", "uvloop", "--http", "httptools")


def uvicorn_args() -> list[str]:
    """The app's uvicorn options: ``UVICORN_ARGS``, or ``BENCH_UVICORN_ARGS`` from the
    environment to compare event loops and HTTP parsers (the scenarios report which ran)."""
    override = os.environ.get("BENCH_UVICORN_ARGS")
    return shlex.split(override) if override is not None else list(UVICORN_ARGS)


@contextlib.contextmanager
def services(redis_url: str, secret: str | None = None) -> Iterator[Services]:
    """A ``Services`` whose children see ``redis_url`` (and ``secret`` as the token secret);
    every child is stopped on the way out, and the logs directory removed."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = os.environ | {
        "REDIS_URL": redis_url,
        "STREAMING_TOKEN_SECRET": secret or secrets.token_urlsafe(32),
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
    }
    with tempfile.TemporaryDirectory(prefix="bench-tiers-") as logs:
        console = Console(stderr=True, quiet=True)
        with Services(ROOT, env, Path(logs), console) as started:
            yield started


def start_worker(started: Services, concurrency: int = 2) -> None:
    """``celery -A worker worker -P prefork -c N``; returns once its log says it is ready."""
    started.start("worker", [sys.executable, "-m", "celery", "-A", "worker", "worker",
                             "-P", "prefork", "-c", str(concurrency), "-l", "info",
                             "--without-mingle", "--without-gossip",
                             "-n", f"bench-{os.getpid()}-{time.monotonic_ns()}@%h"])
    started.wait_for_log("worker", " ready.", timeout=WORKER_READY_TIMEOUT)


def app_service(started: Services, extra: list[str] | None = None) -> str:
    """The reference app (``examples.app``) under uvicorn, one process; returns its URL once
    it answers."""
    port = free_port()
    started.start("app", [sys.executable, "-m", "uvicorn", "--factory",
                          "examples.app:create_app", "--host", "127.0.0.1", "--port", str(port),
                          "--log-level", "warning", "--backlog", "4096", *(extra or [])])
    url = f"http://127.0.0.1:{port}"
    started.wait_for_http("app", url + "/", timeout=APP_READY_TIMEOUT)
    return url
