"""The metrics module: optional, named as the dashboard expects, silent without its extra."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streaming import metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "examples" / "grafana" / "streaming.json"


def exposed_names() -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    text = metrics.exposition().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_dashboard_query_names_a_metric_the_library_exposes():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bstreaming_[a-z_]+", expr)}
    # Labelled counters show no sample until a label is used: list the families as well.
    exposed = exposed_names() | {f"streaming_{n}_total" for n in
                                 ("http_responses", "store_errors", "runs_started",
                                  "runs_ended", "sweep_endings")}
    assert used and used <= exposed, used - exposed


def test_the_library_streams_without_prometheus_client(redis_url):
    """prometheus_client made unimportable: a writer and a reader still work, metrics are off."""
    code = f"""
import sys
sys.modules["prometheus_client"] = None  # as if the metrics extra were not installed
from streaming import metrics
from streaming.client import sync_client
from streaming.reader import read_events
from streaming.settings import Settings
from streaming.writer import StreamWriter
settings = Settings(redis_url={redis_url!r})
writer = StreamWriter(settings).start()
run = writer.open("no-metrics-" + __import__("uuid").uuid4().hex)
run.send("hello")
run.finish()
events = list(read_events(sync_client(settings), run.run_id, settings))
writer.stop()
assert not metrics.available()
print(len(events), "prometheus_client" in sys.modules and sys.modules["prometheus_client"])
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "None"]


def counter(name: str, **labels: str) -> float:
    return sum(v for found, v in metrics.samples(metrics.exposition(), name)
               if labels.items() <= found.items())


def test_endings_the_sweep_writes_are_counted_by_kind(private_server, settings):
    import redis

    from streaming.control import mark_pending, sweep

    local = settings.replace(redis_url=private_server.url)
    client = redis.Redis.from_url(private_server.url, decode_responses=True)
    mark_pending(client, "queued-too-long", local)
    seconds, micros = client.time()
    queued = int(seconds * 1000 + micros // 1000 - (local.queue_timeout + 1) * 1000)
    client.hset("sse:run:queued-too-long:meta", "queued", queued)
    before = counter("streaming_sweep_endings_total", kind="timeout")
    assert sweep(client, local) == {"queued-too-long": "timeout"}
    assert counter("streaming_sweep_endings_total", kind="timeout") == before + 1
    assert sweep(client, local) == {}
    assert counter("streaming_sweep_endings_total", kind="timeout") == before + 1
    client.close()


def test_a_fenced_write_and_a_busy_claim_are_counted(settings, writer, redis_client, run_id):
    from streaming.errors import RunBusyError, StaleWriterError
    from streaming.writer import StreamWriter

    fenced, busy = counter("streaming_writer_fenced_total"), counter("streaming_writer_busy_total")
    stale = writer.open(run_id)
    stale.send("old")
    stale.flush()
    other = StreamWriter(settings).start()
    try:
        with pytest.raises(RunBusyError):
            other.open(run_id)  # the first writer's lease is live
        assert counter("streaming_writer_busy_total") == busy + 1
        redis_client.delete(f"sse:run:{run_id}:lease")  # a pause longer than the lease
        fresh = other.open(run_id)
        stale.send("late")
        with pytest.raises(StaleWriterError):
            stale.flush()
        assert counter("streaming_writer_fenced_total") == fenced + 1
        fresh.finish()
    finally:
        other.stop()


def test_a_writer_whose_text_deltas_cannot_flush_is_reported_stalled(settings, redis_url,
                                                                      run_id):
    """The worker's health check (``worker.observe.health``) from this process's gauge."""
    import time

    from streaming.writer import StreamWriter
    from tests.proxy import Proxy, port_of
    from worker.observe import health

    proxy = Proxy(port_of(redis_url))
    writer = StreamWriter(settings.replace(redis_url=proxy.url)).start()
    try:
        run = writer.open(run_id)
        run.send_text("flushed")
        run.flush()
        assert health(stall=1.0) == "ok"
        proxy.set_refuse(True)
        run.send_text("stuck")
        time.sleep(1.5)
        assert "unflushed for" in health(stall=1.0)
        proxy.set_refuse(False)
        run.finish(timeout=30)
        assert health(stall=1.0) == "ok"
    finally:
        writer.stop(5)
        proxy.close()


def test_threads_that_use_the_metrics_first_at_once_all_count():
    """The first use from many threads at once (a web request and a writer's flush thread):
    one set of collectors is registered, no thread gets ``DuplicateTimeseries``."""
    code = """
import threading
from streaming import metrics
start, errors = threading.Barrier(8), []
def first_use():
    start.wait()
    try:
        metrics.store_error("web")
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=first_use) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
counted = metrics.samples(metrics.exposition(), "streaming_store_errors_total")
print(errors, counted)
assert not errors and counted == [({"component": "web"}, 8.0)], (errors, counted)
"""
    for _ in range(5):  # a fresh process each time: the first use is the one that races
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_process_killed_as_it_made_its_metrics_file_does_not_break_the_scrape(tmp_path):
    """prometheus_client creates a process's file, then sizes it: a scrape in between, or for
    good after the process is killed in between, met an empty file and failed whole (CI saw
    ``/metrics`` answer 500 while a second ``uvicorn`` worker served its first stream)."""
    (tmp_path / "counter_999999.db").touch()  # what the killed process left
    (tmp_path / "histogram_999999.db").touch()
    code = """
from streaming import metrics
metrics.store_error("web")
counted = metrics.samples(metrics.exposition(), "streaming_store_errors_total")
assert counted == [({"component": "web"}, 1.0)], counted
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
