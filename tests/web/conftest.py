"""Fixtures of the web tests: a real Celery worker in the test process (threads pool) and the
runs API that feeds it. The reference app's ``POST /runs`` goes through ``tasks.api.Runs`` to
this worker, which writes the run with the library's writer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import celery.contrib.testing.tasks  # noqa: F401  (registers celery.ping for start_worker)
import pytest
from celery.contrib.testing.worker import start_worker

from streaming.settings import Settings
from tasks.api import Runs
from worker.config import WorkerConfig
from worker.factory import StreamingCelery, create_app


@pytest.fixture(scope="session")
def web_worker_app(redis_url: str) -> StreamingCelery:
    streaming = Settings(redis_url=redis_url, lease_ttl=1.0, liveness_interval=0.5,
                         producer_timeout=15.0, block_timeout=2.0)
    config = WorkerConfig(streaming=streaming, broker_url=redis_url, result_backend=redis_url,
                          queue=f"web-test-{uuid.uuid4().hex}", cancel_check_interval=0.1)
    return create_app(config)


class TrackedRuns(Runs):
    """The tasks API, remembering every run it started so the session can end them."""

    started: list[str]

    def start(self, *args: Any, **kwargs: Any) -> str:
        run_id = super().start(*args, **kwargs)
        self.started.append(run_id)
        return run_id


@pytest.fixture(scope="module")
def celery_runs(web_worker_app: StreamingCelery) -> Iterator[Runs]:
    """The tasks API, with a real worker consuming its queue for the whole session.

    Module-scoped (never two in-process workers at once: Celery's testing worker stops on a
    process-wide flag). At the end every run a test left going is cancelled, so the worker's
    threads are free when it shuts down.
    """
    with start_worker(web_worker_app, pool="threads", concurrency=4, perform_ping_check=True,
                      ping_task_timeout=30, shutdown_timeout=30):
        runs = TrackedRuns(web_worker_app, web_worker_app.redis, web_worker_app.config.streaming)
        runs.started = []
        yield runs
        for run_id in runs.started:
            runs.cancel(run_id, "the test session is over")
