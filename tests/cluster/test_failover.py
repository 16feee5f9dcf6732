"""Failover in a Redis Cluster with replicas (issue 15): a primary that hangs (SIGSTOP: its
connections stay open, nothing answers) is given up by the hub within its check bound, and its
runs are followed on the replica the cluster promotes, while the old primary is still stopped.
A cluster that cannot serve a slot (a primary and its replica both hung) answers every web
route with 503, never 500.

Each test has a cluster of its own (three primaries, one replica each). Times are printed
(``pytest -s``); the assertions are that delivery resumed before the hung node came back, and
that every chunk arrived exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from redis.crc import key_slot

from examples.app import create_app
from streaming import ReaderHub, StreamWriter
from streaming.control import mark_pending
from streaming.embedded import EmbeddedCluster, EmbeddedServer
from streaming.settings import Settings
from streaming.wire import RunKeys
from tests.web.http_server import ServerThread
from tests.web.test_faults_http import Recorder

pytestmark = [pytest.mark.fault, pytest.mark.slow]
SECRET = "failover-suite-" + "s" * 32
CHECK = 0.5  # node_check_interval: a hung node is given up within twice this
HANG = 30.0  # the longest the primary stays stopped: far longer than the failover


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3, node_timeout_ms=2000, replicas=1) as cluster:
        yield cluster
        for server in cluster.servers:  # whatever a test stopped is resumed before stop()
            if server.process is not None and server.process.poll() is None:
                os.kill(server.process.pid, signal.SIGCONT)


def owner_slots(server: EmbeddedServer) -> tuple[int, int]:
    slots = EmbeddedCluster.client(server).cluster("SLOTS")
    port = server.port
    for start, end, primary, *_ in slots:
        if int(primary[1]) == port:
            return int(start), int(end)
    raise AssertionError(f"{port} owns no slots")


def run_in(slots: tuple[int, int]) -> str:
    while True:
        run_id = f"run-{uuid.uuid4().hex}"
        if slots[0] <= key_slot(RunKeys.for_run(run_id, hash_tag=True).stream.encode()) <= \
                slots[1]:
            return run_id


def is_primary(server: EmbeddedServer) -> bool:
    with contextlib.suppress(redis.RedisError):
        return EmbeddedCluster.client(server).info("replication")["role"] == "master"
    return False


def stored_seqs(server: EmbeddedServer, run_id: str) -> int:
    """The last seq of the run stored on ``server`` (0 if none is, or it does not answer)."""
    client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=1)
    try:
        client.execute_command("READONLY")
        entries = client.xrevrange(RunKeys.for_run(run_id, hash_tag=True).stream, count=1)
        return int(entries[0][1]["seq_id"]) if entries else 0
    except redis.RedisError:
        return 0
    finally:
        client.close()


async def watch_failover(replica: EmbeddedServer, run_id: str,
                         seen: list[tuple[int | None, float]], stopped: float) -> dict[str, float]:
    """Seconds after the stop when the replica was promoted, stored the first chunk sent after
    the stop, and when the reader got it; gives up after ``HANG`` s."""
    times: dict[str, float] = {}
    while time.monotonic() - stopped < HANG:
        now = time.monotonic() - stopped
        if "promoted" not in times and await asyncio.to_thread(is_primary, replica):
            times["promoted"] = now
        if "stored" not in times and await asyncio.to_thread(stored_seqs, replica, run_id) > 10:
            times["stored"] = now
        after = [t for seq, t in seen if seq is not None and seq > 10]
        if after:
            times["delivered"] = after[0] - stopped
            return times
        await asyncio.sleep(0.05)
    return times


async def test_a_hung_primary_is_given_up_and_its_runs_followed_on_the_promoted_replica(
        cluster):
    primary, replica = cluster.servers[0], cluster.replicas_of(0)[0]
    settings = Settings(redis_url=cluster.url, node_check_interval=CHECK)
    run_id = run_in(owner_slots(primary))
    writer = StreamWriter(settings).start()
    run = writer.open(run_id)
    hub = await ReaderHub(settings).start()
    seen: list[tuple[int | None, float]] = []

    async def read() -> None:
        async for event in hub.read(run_id):
            seen.append((event.seq, time.monotonic()))

    reader = asyncio.create_task(read())
    for i in range(10):
        run.send(f"before {i}")
    await asyncio.to_thread(run.flush)
    while len(seen) < 10:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # replicated (asynchronous replication: let it catch up)

    sending = threading.Event()
    sending.set()

    def send() -> None:
        i = 0
        while sending.is_set():
            run.send(f"during {i}")
            i += 1
            time.sleep(0.1)

    sender = threading.Thread(target=send, daemon=True)
    stopped = time.monotonic()
    os.kill(primary.process.pid, signal.SIGSTOP)
    sender.start()
    try:
        times = await watch_failover(replica, run_id, seen, stopped)
    finally:
        os.kill(primary.process.pid, signal.SIGCONT)
        resumed = time.monotonic() - stopped
        sending.clear()
        sender.join(10)
    delivered_while_stopped = "delivered" in times
    run.finish()
    await asyncio.wait_for(reader, 60)
    writer.stop()
    await hub.aclose()
    print(f"\nSIGSTOP at 0; replica promoted at {times.get('promoted', -1):.1f} s; first chunk "
          f"after the stop stored there at {times.get('stored', -1):.1f} s; delivered to the "
          f"hub's reader at {times.get('delivered', -1):.1f} s; SIGCONT at {resumed:.1f} s")
    assert delivered_while_stopped, f"nothing delivered while the primary was hung: {times}"
    seqs = [seq for seq, _ in seen]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # each seq once, in order, to the end
    assert times["promoted"] < times["delivered"]


async def test_a_cluster_that_cannot_serve_a_slot_answers_503(cluster):
    settings = Settings(redis_url=cluster.url, token_secret=SECRET, request_timeout=1.0,
                        node_check_interval=CHECK)
    primary, replica = cluster.servers[0], cluster.replicas_of(0)[0]
    run_id = run_in(owner_slots(primary))
    admin = redis.cluster.RedisCluster.from_url(cluster.url.replace("+cluster", ""),
                                                decode_responses=True)
    mark_pending(admin, run_id, settings)
    admin.close()
    app = create_app(settings, launcher=Recorder())
    streams = app.state.streams
    token = streams.issue_token(run_id)
    cancel = streams.issue_token(run_id, scopes=("cancel",))
    routes = [("GET", "stream", token), ("POST", "stream", token), ("GET", "status", token),
              ("POST", "token", token), ("POST", "cancel", cancel)]
    with ServerThread(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            ok = await client.get(f"/runs/{run_id}/status", params={"token": token})
            assert ok.status_code == 200
            for node in (primary, replica):
                os.kill(node.process.pid, signal.SIGSTOP)
            try:
                answers = {}
                for until in (1.0, 8.0):  # hung; then (node timeout passed) the cluster down
                    await asyncio.sleep(until)
                    for method, path, credential in routes:
                        started = time.monotonic()
                        response = await client.request(method, f"/runs/{run_id}/{path}",
                                                        params={"token": credential})
                        answers[f"{method} {path} after {until:g} s"] = (
                            response.status_code, time.monotonic() - started)
            finally:
                for node in (primary, replica):
                    os.kill(node.process.pid, signal.SIGCONT)
    print("\n" + ", ".join(f"{name}: {status} in {seconds:.2f} s"
                           for name, (status, seconds) in answers.items()))
    assert {status for status, _ in answers.values()} == {503}, answers
    assert max(seconds for _, seconds in answers.values()) < 5.0, answers
