"""RabbitMQ as the broker: a prefork worker consuming from it, streams still in Redis."""

from __future__ import annotations

import os
import signal

import pytest
from kombu import Connection
from worker_helpers import read_run, texts
from worker_procs import WorkerProcess

from streaming.wire import Terminal
from tests.conftest import port_open, require

pytestmark = pytest.mark.slow
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def test_runs_through_a_rabbitmq_broker(redis_url):
    require(port_open("127.0.0.1", 5672), "RabbitMQ is not running on 127.0.0.1:5672")
    worker = WorkerProcess(redis_url, CELERY_BROKER_URL=AMQP_URL).start()
    try:
        text = "carried by AMQP, stored in Redis streams"
        run_id = worker.runs.start("demo", {"text": text, "chunk_size": 6, "rate": 50})
        events = read_run(worker.reader, run_id, worker.config.streaming)
        assert texts(events) == text and events[-1].terminal is Terminal.DONE
        assert worker.runs.celery.AsyncResult(run_id).get(timeout=20)["ending"] == "done"

        # acks_late on AMQP: a killed child's message is requeued and the run continues.
        slow = worker.runs.start("demo", {"text": text, "chunk_size": 2, "rate": 10})
        os.kill(worker.wait_progress(slow, chunks=2)["worker_pid"], signal.SIGKILL)
        events = read_run(worker.reader, slow, worker.config.streaming)
        assert [e.event for e in events].count("restarted") == 1
        assert events[-1].terminal is Terminal.DONE
        assert "amqp://" in worker.output()
    finally:
        worker.stop()
        with Connection(AMQP_URL) as connection:
            connection.default_channel.queue_delete(worker.queue)
