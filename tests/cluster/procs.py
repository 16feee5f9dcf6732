"""The processes of a scaled-out deployment, each a real subprocess: Celery workers (prefork)
and web processes (uvicorn serving the reference app), configured only by environment."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Variables of the test process that must not leak into the processes under test.
_OURS = ("REDIS_URL", "CELERY_", "STREAMING_", "WORKER_", "OPENAI_")


def clean_env(**values: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_OURS)} | values


class Proc:
    """One subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, f"{self.name} exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"{self.name}: no {what} in {timeout} s:\n" \
                                                f"{self.output()}"
            time.sleep(0.1)

    def children(self) -> set[int]:
        pid = self.process.pid
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group this test started
                self.process.wait(10)
        if self.process.returncode == 0:
            self.log.unlink(missing_ok=True)


def worker(name: str, env: dict[str, str]) -> Proc:
    """``celery -A worker worker`` with two prefork children, node name ``<name>@<host>``."""
    return Proc(name, [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "info",
                       "-P", "prefork", "-c", "2", "-n", f"{name}@%h"], env)


def web(name: str, port: int, env: dict[str, str]) -> Proc:
    """uvicorn serving the reference app (``examples.app``) on 127.0.0.1:``port``."""
    return Proc(name, [sys.executable, "-m", "uvicorn", "--factory", "examples.app:create_app",
                       "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                env)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
