"""A real prefork worker's metrics and health endpoint, scraped while runs stream.

The worker's stream store is reached through a proxy (its broker and result backend are not),
so the store can go down under the worker while Celery keeps running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from worker_helpers import read_run, texts
from worker_procs import WorkerProcess

from streaming.embedded import free_port
from streaming.metrics import samples
from streaming.wire import Terminal
from tasks import GENERATE
from tests.proxy import Proxy
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
TEXT = "Metrics count what happened, and nothing else. " * 2


@pytest.fixture(scope="module")
def proxy(redis_url: str) -> Iterator[Proxy]:
    from tests.proxy import port_of

    proxy = Proxy(port_of(redis_url))
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def worker(redis_url: str, proxy: Proxy) -> Iterator[WorkerProcess]:
    port = free_port()
    process = WorkerProcess(proxy.url, CELERY_BROKER_URL=redis_url,
                            CELERY_RESULT_BACKEND=redis_url, WORKER_METRICS_PORT=str(port),
                            STREAMING_UNAVAILABLE_TIMEOUT="3").start()
    process.metrics_url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    process.wait_for_log("/healthz", 10)
    yield process
    process.stop()


def scrape(worker: WorkerProcess) -> str:
    response = httpx.get(f"{worker.metrics_url}/metrics", timeout=10)  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    return response.text


def health(worker: WorkerProcess) -> httpx.Response:
    return httpx.get(f"{worker.metrics_url}/healthz", timeout=15)  # type: ignore[attr-defined]


def value(text: str, name: str, **labels: str) -> float:
    return sum(v for found, v in samples(text, name) if labels.items() <= found.items())


def stored(worker: WorkerProcess, run_id: str) -> list[str]:
    entries = worker.reader.xrange(f"sse:run:{run_id}")
    return [fields["data"] for _, fields in entries]


def test_counters_add_up_over_both_children(worker):
    before = scrape(worker)
    run_ids = [worker.runs.start("demo", {"text": TEXT, "chunk_size": 7, "rate": 40})
               for _ in range(4)]
    for run_id in run_ids:
        assert texts(read_run(worker.reader, run_id, worker.config.streaming)) == TEXT
    pids = {worker.runs.celery.AsyncResult(r).get(timeout=30)["worker_pid"] for r in run_ids}
    frames = [frame for run_id in run_ids for frame in stored(worker, run_id)]
    after = scrape(worker)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("streaming_runs_started_total", attempt="first") == 4
    assert delta("streaming_runs_ended_total", kind="done") == 4
    assert delta("streaming_chunks_written_total") == len(frames)
    assert delta("streaming_written_bytes_total") == sum(len(f.encode()) for f in frames)
    assert delta("streaming_flush_seconds_count") >= 4
    assert value(after, "streaming_writer_buffer_bytes") == 0
    # One sample per process that wrote (the main process may add one if it records, e.g.
    # a sweep): the aggregate covers every child of the pool that ran these runs.
    waiting = {labels["pid"] for labels, _ in
               samples(after, "streaming_writer_waiting_since_timestamp_seconds")}
    assert {str(pid) for pid in pids} <= waiting
    assert {str(pid) for pid in pids} <= {str(p) for p in worker.children()}


def test_a_duplicate_delivery_counts_as_busy_and_a_cancel_by_its_kind(worker):
    before = scrape(worker)
    run_id = worker.runs.start("test.ticks", {"interval": 0.1, "count": 1000})
    worker.wait_progress(run_id, chunks=2)
    worker.runs.celery.send_task(  # a second delivery of the same run, as a broker may do
        GENERATE, kwargs={"run_id": run_id, "generator": "test.ticks", "params": {}})
    wait_for(lambda: value(scrape(worker), "streaming_writer_busy_total")
             > value(before, "streaming_writer_busy_total"), 30, "the busy claim is counted")
    assert worker.runs.cancel(run_id, "enough")
    events = read_run(worker.reader, run_id, worker.config.streaming)
    assert events[-1].terminal is Terminal.CANCELLED
    wait_for(lambda: value(scrape(worker), "streaming_runs_ended_total", kind="cancelled")
             == value(before, "streaming_runs_ended_total", kind="cancelled") + 1, 30,
             "the cancelled ending is counted")


def test_health_with_the_store_down_then_back(worker, proxy):
    assert health(worker).json() == {"healthy": True, "checks": {"store": "ok", "writers": "ok"}}
    outages = value(scrape(worker), "streaming_writer_outages_total")
    run_id = worker.runs.start("test.ticks", {"interval": 0.1, "count": 1000})
    worker.wait_progress(run_id, chunks=2)
    proxy.set_refuse(True)
    try:
        # Past STREAMING_UNAVAILABLE_TIMEOUT (3 s) the child's unflushed ticks make it unhealthy.
        wait_for(lambda: "unflushed" in health(worker).json()["checks"]["writers"], 30,
                 "the stalled writer is reported")
        answer = health(worker)
        assert answer.status_code == 503
        assert answer.json()["checks"]["store"].startswith("unreachable")
        assert value(scrape(worker), "streaming_writer_outages_total") > outages
    finally:
        proxy.set_refuse(False)
    wait_for(lambda: health(worker).status_code == 200, 30, "healthy once the store is back")
    worker.runs.cancel(run_id, "the test is over")
    ending = read_run(worker.reader, run_id, worker.config.streaming)[-1]
    assert ending.terminal in (Terminal.CANCELLED, Terminal.ERROR), json.dumps(ending.data)
    time.sleep(0)
