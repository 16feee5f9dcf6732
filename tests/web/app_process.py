"""The reference app in a uvicorn subprocess, for tests that measure the API process itself
(its memory, its connections) or kill it. ``/_stats`` adds the hub's counters to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from streaming.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


def create_app() -> Any:
    """``examples.app.create_app`` from the environment, plus ``GET /_stats`` (the hub's
    counters), which the reference app does not expose."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from examples.app import create_app as create_reference_app

    app = create_reference_app()

    async def stats(request: Request) -> JSONResponse:
        hub = app.state.streams.hub
        return JSONResponse(hub.stats() if hub is not None else {})

    app.router.routes.append(Route("/_stats", stats))
    return app


class AppProcess:
    """``uvicorn --factory tests.web.app_process:create_app`` on a free port."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.args = list(args)  # more uvicorn options, e.g. --workers 2
        self.port = free_port()
        self.env = {**os.environ, **env}
        self.log = Path(tempfile.mkstemp(prefix="app-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> AppProcess:
        command = [sys.executable, "-m", "uvicorn", "--factory",
                   "tests.web.app_process:create_app", "--host", "127.0.0.1",
                   "--port", str(self.port), "--log-level", "warning",
                   "--timeout-graceful-shutdown", "2", *self.args]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/_stats", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the app did not start:\n{self.output()}"
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/_stats", timeout=10).json()

    def rss(self) -> int:
        assert self.process is not None
        return psutil.Process(self.process.pid).memory_info().rss

    def connections(self) -> int:
        """TCP connections the app process holds (clients and Redis alike)."""
        assert self.process is not None
        return len(psutil.Process(self.process.pid).net_connections("tcp"))

    def redis_connections(self, port: int) -> int:
        """Connections the app process holds to the server on ``port``."""
        assert self.process is not None
        return sum(1 for c in psutil.Process(self.process.pid).net_connections("tcp")
                   if c.raddr and c.raddr.port == port)

    def serving(self) -> dict[int, int]:
        """Client connections each worker process holds on the app's port (``--workers``)."""
        assert self.process is not None
        held = {}
        for worker in psutil.Process(self.process.pid).children():
            held[worker.pid] = sum(1 for c in worker.net_connections("tcp")
                                   if c.laddr.port == self.port
                                   and c.status == psutil.CONN_ESTABLISHED)
        return {pid: count for pid, count in held.items() if count}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the session this test started
                self.process.wait(5)
        self.log.unlink(missing_ok=True)
