"""pytest fixtures for testing your own streaming tasks (a pytest plugin: installed with
``celery-streaming``, nothing to register). They import Celery only when a test uses them.

    # conftest.py
    @pytest.fixture
    def streaming_app():
        from proj.celery import app
        return app

    # test_tasks.py
    def test_answer(streaming_worker, streaming_runs):
        run = streaming_runs.run("proj.tasks.answer", "Why?")
        assert run.ending == "done" and run.text() == "Because."

Fixtures, each overridable:

- ``streaming_store_url`` (session): ``STREAMING_TEST_REDIS_URL``, else a private embedded
  server (the ``embedded`` extra); keys are random run ids, nothing is flushed.
- ``streaming_settings`` (session): ``Settings`` for that store, with short leases.
- ``streaming_app``: your Celery app (override it). Its broker must be one the test can reach:
  set ``broker_url="memory://"`` and ``result_backend="cache+memory://"`` in your test
  configuration for a worker inside the test process.
- ``streaming_worker``: a real Celery worker in the test process (threads pool) on that app,
  streaming to ``streaming_settings``, consuming the default queue and every streaming
  task's queue.
- ``streaming_runs``: ``StreamingRuns``: start a run by task name (or task) and collect its
  events and ending.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .client import sync_client
from .reader import read_events
from .settings import Settings
from .wire import Event

__all__ = ["CollectedRun", "StreamingRuns"]


@dataclass(frozen=True)
class CollectedRun:
    """Every event of one run, its ending included (the last event)."""

    run_id: str
    events: list[Event]

    @property
    def ending(self) -> str:
        """``done``, ``error``, ``cancelled``, ``timeout``, ``lost`` or ``not_found``."""
        last = self.events[-1].terminal if self.events else None
        return last.value if last is not None else ""

    @property
    def chunks(self) -> list[Event]:
        """The output events: no ending, no ``restarted`` or ``gap`` markers."""
        return [e for e in self.events
                if e.terminal is None and e.event not in ("restarted", "gap")]

    def data(self) -> list[Any]:
        """Each output event's data, parsed as JSON where it is JSON."""
        return [_parse(e.data) for e in self.chunks]

    def text(self, field: str = "text") -> str:
        """The text of the run: plain text chunks, and ``field`` of JSON objects, joined."""
        parts = (item if isinstance(item, str) else item.get(field, "")
                 for item in self.data() if isinstance(item, str | dict))
        return "".join(parts)


def _parse(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


class StreamingRuns:
    """Start runs on ``app`` and read them back from the store of ``settings``."""

    def __init__(self, app: Any, settings: Settings) -> None:
        from .celery import Runs

        self.app = app
        self.settings = settings
        self.runs = Runs(app, settings)

    def start(self, task: Any, /, *args: Any, **kwargs: Any) -> str:
        """Queue a run of ``task`` (a name, or the task: then its own routing applies)."""
        if isinstance(task, str):
            return self.runs.apply_async(task, args, kwargs)
        return str(task.apply_async(args, kwargs).id)

    def collect(self, run_id: str) -> CollectedRun:
        """Every event of the run until its ending (bounded by ``producer_timeout``)."""
        client = sync_client(self.settings, reader=True)
        try:
            return CollectedRun(run_id, list(read_events(client, run_id, self.settings)))
        finally:
            client.close()

    def run(self, task: Any, /, *args: Any, **kwargs: Any) -> CollectedRun:
        """``start()`` then ``collect()``."""
        return self.collect(self.start(task, *args, **kwargs))


@pytest.fixture(scope="session")
def streaming_store_url() -> Iterator[str]:
    """The test store: ``STREAMING_TEST_REDIS_URL``, else a private embedded server."""
    url = os.environ.get("STREAMING_TEST_REDIS_URL")
    if url:
        yield url
        return
    from .embedded import EmbeddedServer

    with EmbeddedServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def streaming_settings(streaming_store_url: str) -> Settings:
    """Settings of the test store: short leases, so lost runs end within seconds."""
    return Settings(redis_url=streaming_store_url, lease_ttl=1.0, liveness_interval=0.5,
                    producer_timeout=15.0, block_timeout=1.0)


@pytest.fixture
def streaming_app() -> Any:
    """Your Celery app: override this fixture to return it."""
    raise pytest.UsageError("override the streaming_app fixture to return your Celery app")


@pytest.fixture
def streaming_worker(streaming_app: Any, streaming_settings: Settings) -> Iterator[Any]:
    """A real worker in this process (threads pool) on ``streaming_app``."""
    from celery.contrib.testing.worker import start_worker

    from .celery import StreamingTask, install

    streaming = install(streaming_app, streaming_settings)
    before = streaming.settings
    streaming.configure(streaming_settings)
    queues = {streaming_app.conf.task_default_queue}
    queues |= {task.queue for task in streaming_app.tasks.values()
               if isinstance(task, StreamingTask) and getattr(task, "queue", None)}
    try:
        with start_worker(streaming_app, pool="threads", concurrency=4, queues=sorted(queues),
                          perform_ping_check=False, shutdown_timeout=30) as worker:
            yield worker
    finally:
        streaming.configure(before)


@pytest.fixture
def streaming_runs(streaming_app: Any, streaming_settings: Settings) -> StreamingRuns:
    """Start runs on ``streaming_app`` and collect their events (see ``StreamingRuns``)."""
    return StreamingRuns(streaming_app, streaming_settings)
