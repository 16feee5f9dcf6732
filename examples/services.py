"""Child processes of the demo: start them with logs, wait until they are ready, stop them all."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console

__all__ = ["ServiceError", "Services"]


class ServiceError(RuntimeError):
    """A child process died or did not become ready in time."""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Services:
    """Children started in ``root`` with ``env``, each in its own session (so a Ctrl-C in
    the terminal reaches only the demo, which stops them in order) and logging to ``logs``."""

    def __init__(self, root: Path, env: dict[str, str], logs: Path, console: Console) -> None:
        self.root = root
        self.env = env
        self.logs = logs
        self.console = console
        self.services: dict[str, Service] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Service:
        """Start ``argv`` as ``name``, with the shared environment plus ``env``."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(argv, cwd=self.root, env=self.env | (env or {}),
                                       stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        service = self.services[name] = Service(name, process, log)
        return service

    def check(self) -> None:
        """Raise ``ServiceError`` if a child has exited."""
        for service in self.services.values():
            if service.process.poll() is not None:
                raise ServiceError(f"{service.name} exited with {service.process.returncode}:\n"
                                   f"{service.output()}")

    def wait_for_log(self, name: str, text: str, timeout: float) -> None:
        service = self.services[name]
        self._wait(name, timeout, lambda: text in service.log.read_text(errors="replace"))

    def wait_for_http(self, name: str, url: str, timeout: float, *,
                      required: bool = True) -> None:
        def answers() -> bool:
            try:
                return httpx.get(url, timeout=1.0).status_code == 200
            except httpx.TransportError:
                return False

        try:
            self._wait(name, timeout, answers)
        except ServiceError as exc:
            if required:
                raise
            self.console.print(f"[yellow]warning:[/] {exc}")

    def _wait(self, name: str, timeout: float, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check()
            if time.monotonic() > deadline:
                raise ServiceError(f"{name} not ready within {timeout:g} s:\n"
                                   f"{self.services[name].output()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every child (the newest first), wait, then SIGKILL what is left.

        SIGTERM goes to the child alone: a Celery worker then finishes its tasks and stops its
        pool itself (warm shutdown). SIGKILL goes to the child's whole process group.
        """
        running = [s for s in reversed(self.services.values()) if s.process.poll() is None]
        for service in running:
            service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for service in running:
            try:
                service.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.console.print(f"[yellow]{service.name} did not stop: killing it[/]")
                _signal(service, signal.SIGKILL)
                service.process.wait(5)

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal(service: Service, signum: int) -> None:
    """Signal the child's whole process group (a prefork worker's pool processes too)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.process.pid, signum)
