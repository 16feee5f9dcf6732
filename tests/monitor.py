"""MONITOR of a private server: which commands (and keys) an action sent, for tests that
promise "nothing else was read"."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from urllib.parse import urlparse

import redis

from streaming.wire import DOORBELL, RunKeys

_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')

#: How each key of a run may hold another kind of value, and the command that makes it so.
FOREIGN = [
    ("stream", "string", lambda c, k: c.set(k, "foreign")),
    ("stream", "hash", lambda c, k: c.hset(k, "field", "foreign")),
    ("stream", "list", lambda c, k: c.rpush(k, "foreign")),
    ("stream", "set", lambda c, k: c.sadd(k, "foreign")),
    ("stream", "zset", lambda c, k: c.zadd(k, {"foreign": 1})),
    ("meta", "string", lambda c, k: c.set(k, "foreign")),
    ("meta", "list", lambda c, k: c.rpush(k, "foreign")),
    ("lease", "hash", lambda c, k: c.hset(k, "field", "foreign")),
]
#: What a reader may send for such a run: connection set-up, its token generation (``HGET``
#: of the meta hash, refused by a foreign meta key) and the STATUS script (the keys' types, the
#: run's own status fields and the server's clock), never a read of the foreign value.
STATUS_ONLY = {"HELLO", "CLIENT", "PING", "EVAL", "EVALSHA", "TYPE", "HMGET", "TIME", "HGET"}


def foreign_id(value: object) -> str:
    """Test ids of ``FOREIGN`` parameters: the key and the kind, not the function."""
    return value if isinstance(value, str) else ""


class Monitor:
    """Records every command the server at ``url`` executes, scripts' inner commands included.

    Use it on a server of the test's own: ``between(action)`` returns the commands ``action``
    caused, delimited by two ``ECHO`` markers so nothing in flight is missed.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        self._sock = socket.create_connection((parsed.hostname, parsed.port), timeout=5)
        self._sock.sendall(b"MONITOR\r\n")
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._buffer = b""
        first = self._read_line()
        assert first == "+OK", first
        self._sock.settimeout(None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._admin = redis.Redis.from_url(url, decode_responses=True)

    def _read_line(self) -> str:
        while b"\r\n" not in self._buffer:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("monitor connection closed")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def _run(self) -> None:
        try:
            while True:
                line = self._read_line()
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
        except OSError:
            return

    def _echo(self) -> str:
        marker = f"monitor-mark-{uuid.uuid4().hex}"
        self._admin.echo(marker)
        deadline = time.monotonic() + 5
        with self._cond:
            while not any(marker in line for line in self._lines):
                left = deadline - time.monotonic()
                assert left > 0, "MONITOR did not see its own marker"
                self._cond.wait(left)
        return marker

    def mark(self) -> int:
        """Wait until everything sent so far is recorded; the position after it."""
        marker = self._echo()
        with self._cond:
            return next(i for i, line in enumerate(self._lines) if marker in line) + 1

    def since(self, start: int) -> list[list[str]]:
        """Commands executed between position ``start`` and now, as argument lists."""
        end = self.mark() - 1
        with self._cond:
            lines = self._lines[start:end]
        return [[_unescape(arg) for arg in _ARG.findall(line)] for line in lines]

    def close(self) -> None:
        self._admin.close()
        self._sock.close()


def _unescape(arg: str) -> str:
    return arg.replace('\\"', '"').replace("\\\\", "\\")


def keys_of(commands: list[list[str]], prefix: str = "sse:") -> set[str]:
    """Every argument that looks like one of our keys (``sse:...``)."""
    return {arg for command in commands for arg in command[1:] if arg.startswith(prefix)}


def names_of(commands: list[list[str]]) -> set[str]:
    return {command[0].upper() for command in commands if command}


def beyond_status_reads(commands: list[list[str]], keys: RunKeys) -> tuple[set[str], set[str]]:
    """What ``commands`` did besides reading the status of the run of ``keys``: the keys other
    than its own, and the command names outside ``STATUS_ONLY`` (both empty when nothing else
    was read). The hub's own doorbell subscription (``streaming.doorbell``, made from its task
    after it started, which a loaded machine can delay into the window) is no command about
    the run."""
    return (keys_of(commands) - {DOORBELL, keys.stream, keys.meta, keys.lease},
            names_of(commands) - STATUS_ONLY - {"SUBSCRIBE", "SSUBSCRIBE"})
