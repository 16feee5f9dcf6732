"""Scale-out, end to end: two workers (``-n w1@%h``, ``-n w2@%h``) and two web processes (the
reference app under uvicorn) share a Redis Cluster stream store, with Celery's broker and result
backend on servers of their own. Runs are started through one web process and read through the
other, or partly through each (a reconnect with ``Last-Event-ID`` to the other process): every
chunk arrives exactly once, in order, whichever worker produced it."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from httpx_sse import aconnect_sse
from kombu import Connection
from procs import Proc, clean_env, listening, web, worker

from streaming.embedded import EmbeddedCluster, EmbeddedServer, free_ports
from streaming.wire import RunKeys
from tasks.api import Runs
from tests.conftest import port_open, require
from worker.config import WorkerConfig

pytestmark = pytest.mark.slow
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
RUNS = 8


class Deployment:
    """Two workers and two web processes on one stream store, broker and result backend."""

    def __init__(self, store_url: str, broker_url: str, backend_url: str) -> None:
        self.queue = f"scale-{uuid.uuid4().hex}"
        self.env = clean_env(
            REDIS_URL=store_url, CELERY_BROKER_URL=broker_url, CELERY_RESULT_BACKEND=backend_url,
            WORKER_QUEUE=self.queue, STREAMING_TOKEN_SECRET=secrets.token_urlsafe(32),
            STREAMING_LEASE_TTL="2", STREAMING_LIVENESS_INTERVAL="1")
        self.ports = free_ports(2)
        self.workers: list[Proc] = []
        self.webs: list[Proc] = []

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self) -> Deployment:
        self.workers = [worker(name, self.env) for name in ("w1", "w2")]
        self.webs = [web(f"web{i}", port, self.env) for i, port in enumerate(self.ports, 1)]
        for proc in self.workers:
            proc.wait_until(lambda proc=proc: " ready." in proc.output(), 60, "ready line")
        for proc, port in zip(self.webs, self.ports):
            proc.wait_until(lambda port=port: listening(port), 30, "listening port")
        return self

    def stop(self) -> None:
        for proc in [*self.webs, *self.workers]:
            proc.stop()

    def producers(self, run_ids: list[str]) -> dict[str, str]:
        """Which worker (``w1``/``w2``) produced each run, from the result backend."""
        runs = Runs.from_config(WorkerConfig.from_env(self.env))
        pids = {pid: proc.name for proc in self.workers for pid in proc.children()}
        found = {}
        for run_id in run_ids:
            summary = runs.celery.AsyncResult(run_id).get(timeout=30)
            assert summary["ending"] == "done", summary
            found[run_id] = pids.get(summary["worker_pid"], "?")
        runs.client.close()
        return found


@pytest.fixture
def backend() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as server:
        yield server


@pytest.fixture
def broker() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as server:
        yield server


async def read_sse(http, url, *, last_id=None, limit=None):
    """``(id, event, data)`` of each event (not the ``retry:`` preamble), until the stream
    ends or ``limit`` events came."""
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    events = []
    async with aconnect_sse(http, "GET", url, headers=headers) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for event in source.aiter_sse():
            if event.id:
                events.append((int(event.id), event.event, event.data))
            if limit is not None and len(events) >= limit:
                break
    return events


async def start_and_read(deployment: Deployment) -> tuple[list[str], list[str]]:
    """Start ``RUNS`` runs, alternating web processes, and read each through the other one
    (every fourth: its first events through its own, then a reconnect to the other)."""
    texts = [f"[run {i}] " + "streams that outlive their web process. " * 3 for i in range(RUNS)]
    urls = deployment.urls
    async with httpx.AsyncClient(timeout=60) as http:
        await http.get(f"{urls[0]}/")  # the page session (a create token in a cookie)
        created = []
        for i, text in enumerate(texts):
            reply = await http.post(f"{urls[i % 2]}/runs",
                                    json={"text": text, "chunk_size": 4, "rate": 60})
            assert reply.status_code == 201, reply.text
            created.append(reply.json())

        async def read(i: int, body: dict) -> list:
            own, other = urls[i % 2] + body["stream_url"], urls[(i + 1) % 2] + body["stream_url"]
            if i % 4 != 3:
                return await read_sse(http, other)
            first = await read_sse(http, own, limit=5)
            return first + await read_sse(http, other, last_id=first[-1][0])

        results = await asyncio.wait_for(
            asyncio.gather(*(read(i, body) for i, body in enumerate(created))), 60)
    for text, events in zip(texts, results):
        assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
        assert events[-1][2] == "[DONE]"
        assert "".join(json.loads(data)["text"] for _, _, data in events[:-1]) == text
    return [body["run_id"] for body in created], texts


def keys_matching(client: redis.Redis, pattern: str) -> list[str]:
    return list(client.scan_iter(match=pattern, count=1000))


def assert_streams_only_in_the_store(cluster: EmbeddedCluster, run_ids: list[str],
                                     *others: redis.Redis) -> None:
    for server in cluster.servers:  # no Celery data in the stream store
        node = cluster.client(server)
        assert keys_matching(node, "celery*") == [] and keys_matching(node, "_kombu*") == []
        node.close()
    store = redis.cluster.RedisCluster.from_url(
        cluster.url.replace("+cluster", ""), decode_responses=True)
    assert all(store.exists(RunKeys.for_run(run_id, hash_tag=True).stream) for run_id in run_ids)
    store.close()
    for other in others:  # no stream data on Celery's servers
        assert keys_matching(other, "sse:*") == []


def test_two_workers_two_web_processes_three_servers(cluster, broker, backend):
    deployment = Deployment(cluster.url, broker.url, backend.url).start()
    try:
        run_ids, _ = asyncio.run(start_and_read(deployment))
        producers = deployment.producers(run_ids)
    finally:
        deployment.stop()
    assert set(producers.values()) == {"w1", "w2"}, producers
    broker_client = redis.Redis.from_url(broker.url, decode_responses=True)
    backend_client = redis.Redis.from_url(backend.url, decode_responses=True)
    assert keys_matching(broker_client, "_kombu.binding.*")  # the broker is this one
    assert all(backend_client.exists(f"celery-task-meta-{run_id}") for run_id in run_ids)
    assert_streams_only_in_the_store(cluster, run_ids, broker_client, backend_client)


def test_the_same_with_rabbitmq_as_the_broker(cluster, backend):
    require(port_open("127.0.0.1", 5672), "RabbitMQ is not running on 127.0.0.1:5672")
    deployment = Deployment(cluster.url, AMQP_URL, backend.url).start()
    try:
        run_ids, _ = asyncio.run(start_and_read(deployment))
        producers = deployment.producers(run_ids)
        assert all("amqp://" in proc.output() for proc in deployment.workers)
    finally:
        deployment.stop()
        with Connection(AMQP_URL) as connection:
            connection.default_channel.queue_delete(deployment.queue)
    assert set(producers.values()) == {"w1", "w2"}, producers
    backend_client = redis.Redis.from_url(backend.url, decode_responses=True)
    assert all(backend_client.exists(f"celery-task-meta-{run_id}") for run_id in run_ids)
    assert_streams_only_in_the_store(cluster, run_ids, backend_client)
