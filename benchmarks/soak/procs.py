"""The soak's real components as child processes: a store with an append-only file that can be
restarted on its own port, prefork Celery workers, and the reference app under uvicorn.

Every child runs in a session of its own and is killed (its whole process group) by
``Fleet.close()``, which the runner calls on every way out (Ctrl-C and errors included).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from streaming.embedded import EmbeddedServer, free_port

__all__ = ["AofStore", "App", "Child", "Fleet", "Worker"]

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 10.0


class StartError(RuntimeError):
    """A child process died or did not become ready in time."""


@dataclass
class Child:
    """One child process in a session of its own, logging to ``log``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    #: Where this start's output begins in the log (a restart appends).
    offset: int = 0

    def start(self) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        with self.log.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.alive:
                raise StartError(f"{self.name} exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise StartError(f"{self.name}: no {text!r} within {timeout:g} s:\n{self.tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the child's whole process group (a worker's pool processes too)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL of the group after ``timeout``."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill()


class AofStore:
    """The embedded Valkey with an append-only file in ``directory``, on a fixed port so that
    a restart (SIGTERM or SIGKILL, then start) reloads the data at the same address."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.server = EmbeddedServer(free_port(), extra_args=[
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(directory)])

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int | None:
        process = self.server.process
        return process.pid if process is not None and process.poll() is None else None

    def start(self, timeout: float = 30.0) -> None:
        if self.server.directory is not None:  # the last start's log directory
            shutil.rmtree(self.server.directory, ignore_errors=True)
        self.server.start(timeout)

    def down(self, how: signal.Signals) -> None:
        """Stop the server with ``how`` (SIGTERM: it writes its AOF and exits; SIGKILL)."""
        process = self.server.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(how)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def close(self) -> None:
        self.down(signal.SIGKILL)
        self.server.stop()


def worker_child(name: str, env: dict[str, str], logs: Path, concurrency: int) -> Child:
    argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "prefork",
            "-c", str(concurrency), "-l", "info", "--without-mingle", "--without-gossip",
            "-n", f"{name}-{os.getpid()}@%h"]
    return Child(name, argv, env, logs / f"{name}.log")


@dataclass
class Worker:
    """A prefork worker whose way to the store goes through ``proxy_url``."""

    child: Child
    proxy_name: str
    restarts: int = 0
    #: Killed on purpose by a fault and not restarted yet (the supervisor leaves it alone).
    down_on_purpose: bool = False
    #: Times it exited on its own, with the last error line of its log each time.
    exits: list[str] = field(default_factory=list)

    def last_error(self) -> str:
        lines = [line for line in self.child.output().splitlines()
                 if "CRITICAL" in line or "Unrecoverable" in line or "Error" in line[:80]]
        return lines[-1][:300] if lines else self.child.tail(1)[:300]

    def children(self) -> list[int]:
        """Pids of the pool processes (empty if the worker is down)."""
        if not self.child.alive:
            return []
        pid = self.child.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []


@dataclass
class App:
    child: Child
    url: str

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.child.alive:
                raise StartError(f"app exited:\n{self.child.tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/", timeout=1.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise StartError(f"app not ready within {timeout:g} s:\n{self.child.tail()}")
            time.sleep(0.2)


def app_child(env: dict[str, str], logs: Path) -> App:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--factory", "examples.app:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return App(Child("app", argv, env, logs / "app.log"), f"http://127.0.0.1:{port}")


@dataclass
class Fleet:
    """Everything the soak started, so one call stops it all."""

    children: list[Child] = field(default_factory=list)
    stores: list[AofStore] = field(default_factory=list)

    def close(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(OSError):
                child.stop(timeout=3.0)
        for store in self.stores:
            with contextlib.suppress(OSError):
                store.close()
