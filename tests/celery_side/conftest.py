"""Fixtures of the Celery side: an in-process worker (threads pool) on the test server, the
runs API and a reader client. Helpers and test-only generators are in ``worker_helpers``.

Fixture names avoid ``celery_app``/``celery_worker``, which Celery's pytest plugin owns.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import celery.contrib.testing.tasks  # noqa: F401  (registers celery.ping for start_worker)
import pytest
import redis
import worker_helpers  # noqa: F401  (registers the test generators in this process)
from celery.contrib.testing.worker import start_worker
from chat_server import ChatServer
from worker_helpers import stream_settings
from worker_procs import WorkerProcess

from streaming.client import sync_client
from tasks.api import Runs
from worker.config import WorkerConfig
from worker.factory import StreamingCelery, create_app


@pytest.fixture(scope="session")
def chat_server() -> Iterator[ChatServer]:
    """A local OpenAI-compatible chat-completions server."""
    server = ChatServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def worker_config(redis_url: str, chat_server: ChatServer) -> WorkerConfig:
    return WorkerConfig(streaming=stream_settings(redis_url), broker_url=redis_url,
                        result_backend=redis_url, queue=f"test-{uuid.uuid4().hex}",
                        cancel_check_interval=0.1, progress_interval=0.2,
                        openai_base_url=chat_server.url, openai_model="test-model",
                        openai_api_key="sk-test-key")


@pytest.fixture(scope="session")
def stream_app(worker_config: WorkerConfig) -> StreamingCelery:
    return create_app(worker_config)


@pytest.fixture(scope="module")
def stream_worker(stream_app: StreamingCelery) -> Iterator[Any]:
    """A real Celery worker in this process (threads pool), consuming the test queue.

    Module-scoped so that two in-process workers are never alive at once: Celery's testing
    worker stops on a process-wide flag, and two shutting down together hung past the timeout.
    """
    with start_worker(stream_app, pool="threads", concurrency=4, perform_ping_check=True,
                      shutdown_timeout=30) as worker:
        yield worker


@pytest.fixture
def worker_factory() -> Iterator[Any]:
    """Start ``celery -A worker worker`` processes (``worker_procs.WorkerProcess``); every one
    is stopped (and its children with it) at the end."""
    started: list[WorkerProcess] = []

    def start(redis_url: str, *args: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(redis_url, *args, **env)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def reader_client(worker_config: WorkerConfig) -> Iterator[redis.Redis]:
    client = sync_client(worker_config.streaming, reader=True)
    yield client
    client.close()


@pytest.fixture
def runs(stream_app: StreamingCelery, worker_config: WorkerConfig) -> Runs:
    """The web-side API, on the same broker and store as the worker."""
    return Runs(stream_app, stream_app.redis, worker_config.streaming)
