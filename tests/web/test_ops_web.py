"""The web tier's metrics and probes, scraped from a real uvicorn process serving real runs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from streaming.embedded import EmbeddedServer
from streaming.metrics import samples
from streaming.settings import Settings
from streaming.tokens import TokenSigner
from streaming.writer import StreamWriter
from tests.waiting import wait_for
from tests.web.app_process import AppProcess

SECRET = "ops-suite-" + "s" * 32
SIGNER = TokenSigner(SECRET)


@pytest.fixture(scope="module")
def store() -> Iterator[EmbeddedServer]:
    """A server of this module's own: the last case stops it."""
    with EmbeddedServer() as server:
        yield server


@pytest.fixture(scope="module")
def web(store: EmbeddedServer) -> Iterator[AppProcess]:
    env = {"REDIS_URL": store.url, "STREAMING_TOKEN_SECRET": SECRET,
           "STREAMING_LIVENESS_INTERVAL": "0.5"}
    process = AppProcess(env).start()
    yield process
    process.stop()


@pytest.fixture
def store_writer(store: EmbeddedServer) -> Iterator[StreamWriter]:
    writer = StreamWriter(Settings(redis_url=store.url, lease_ttl=2.0)).start()
    yield writer
    writer.stop(timeout=5)


def scrape(web: AppProcess) -> str:
    response = httpx.get(f"{web.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def value(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for found, v in samples(text, name) if labels.items() <= found.items())


def stream_url(web: AppProcess, run_id: str) -> str:
    return f"{web.url}/runs/{run_id}/stream?token={SIGNER.issue(run_id, 600)}"


def test_counters_follow_what_the_web_process_served(web, store_writer, run_id):
    before = scrape(web)
    run = store_writer.open(run_id)
    for i in range(20):
        run.send(f"chunk {i}")
    run.finish()
    body = httpx.get(stream_url(web, run_id), timeout=10).text
    assert body.count("\nid: ") + body.startswith("id: ") == 21
    httpx.get(f"{web.url}/runs/{run_id}/stream", timeout=10)  # no token: 401
    httpx.get(stream_url(web, run_id) + "&starting_after=x", timeout=10)  # 400
    httpx.get(stream_url(web, run_id) + "&starting_after=21", timeout=10)  # has it all: 204
    after = scrape(web)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("streaming_events_sent_total") == 21
    assert delta("streaming_delivery_lag_seconds_count") == 21
    assert delta("streaming_http_responses_total", route="stream", status="200", error="") == 1
    assert delta("streaming_http_responses_total", status="401", error="unauthenticated") == 1
    assert delta("streaming_http_responses_total", status="400", error="invalid_cursor") == 1
    assert delta("streaming_http_responses_total", status="204") == 1
    assert value(after, "streaming_readers_connected") == 0
    assert value(after, "streaming_runs_followed") == 0


def test_a_live_reader_is_counted_while_it_reads_and_its_lag_is_measured(web, store_writer,
                                                                       run_id):
    run = store_writer.open(run_id)
    run.send("first")
    run.flush()
    received: list[str] = []

    def read() -> None:
        with httpx.stream("GET", stream_url(web, run_id), timeout=30) as response:
            received.extend(line for line in response.iter_lines() if line.startswith("data:"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: value(scrape(web), "streaming_readers_connected") == 1, 20,
             "the reader is counted")
    text = scrape(web)
    assert value(text, "streaming_runs_followed") == 1
    lag_before = value(text, "streaming_delivery_lag_seconds_count")
    slow_before = lag_before - value(text, "streaming_delivery_lag_seconds_bucket", le="5.0")
    for i in range(5):
        run.send(f"live {i}")
        time.sleep(0.05)
    run.finish()
    reader.join(30)
    assert not reader.is_alive() and len(received) == 7
    text = scrape(web)
    assert value(text, "streaming_readers_connected") == 0
    assert value(text, "streaming_delivery_lag_seconds_count") - lag_before == 6
    # Live entries reach the socket within seconds of being written (a generous bound: the
    # point is that the figure is the write-to-socket time, not the run's age).
    slow = (value(text, "streaming_delivery_lag_seconds_count")
            - value(text, "streaming_delivery_lag_seconds_bucket", le="5.0"))
    assert slow == slow_before


def test_probes_with_the_store_up_then_down_then_back(web, store):
    assert httpx.get(f"{web.url}/livez", timeout=10).status_code == 200
    ready = httpx.get(f"{web.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"ready": True, "checks": {"store": "ok", "hub": "ok"}}
    errors = value(scrape(web), "streaming_store_errors_total")
    store.stop()
    try:
        ready = httpx.get(f"{web.url}/readyz", timeout=15)
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["store"] != "ok"
        assert ready.json()["checks"]["hub"] == "ok"
        assert httpx.get(f"{web.url}/livez", timeout=10).status_code == 200
        status = httpx.get(f"{web.url}/runs/any-run/status?token={SIGNER.issue('any-run', 60)}",
                           timeout=15)
        assert status.status_code == 503
        text = scrape(web)
        assert value(text, "streaming_store_errors_total") > errors
        assert value(text, "streaming_http_responses_total", status="503",
                      error="unavailable") >= 1
    finally:
        store.start()
    wait_for(lambda: httpx.get(f"{web.url}/readyz", timeout=15).status_code == 200, 30,
             "ready again once the store is back")


def test_several_web_processes_report_one_sum(store, store_writer, tmp_path):
    """``uvicorn --workers 2`` with PROMETHEUS_MULTIPROC_DIR: whichever process answers
    ``/metrics``, it reports every process's counts added up."""
    env = {"REDIS_URL": store.url, "STREAMING_TOKEN_SECRET": SECRET,
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    web = AppProcess(env, "--workers", "2").start()
    try:
        runs = []
        bodies: list[str] = []
        readers: list[threading.Thread] = []

        def read(run_id: str) -> None:
            with httpx.Client(timeout=30) as client:
                bodies.append(client.get(stream_url(web, run_id)).text)

        # The workers share one listening socket and the kernel picks who accepts: a worker
        # still starting (CI found one) takes none. More readers join, held open, until both
        # workers serve some, as their own sockets show.
        while len(runs) < 12 or len(web.serving()) < 2:
            assert len(runs) < 60, f"one worker took every stream: {web.serving()}"
            run = store_writer.open(f"multi-{len(runs)}-{tmp_path.name}")
            run.send("one")
            run.flush()
            runs.append(run)
            readers.append(threading.Thread(target=read, args=(run.run_id,)))
            readers[-1].start()
            wait_for(lambda: value(scrape(web), "streaming_readers_connected") == len(runs), 30,
                     "every reader is counted, whichever process serves it")
        for run in runs:
            run.send("two")
            run.finish()
        for reader in readers:
            reader.join(30)
        assert len(bodies) == len(runs) and all("[DONE]" in body for body in bodies)
        counting = {name.rsplit("_", 1)[1] for name in os.listdir(tmp_path)
                    if name.startswith("counter_")}
        assert len(counting) == 2  # both processes counted what they served
        seen = {value(scrape(web), "streaming_events_sent_total") for _ in range(8)}
        assert seen == {3.0 * len(runs)}
    finally:
        web.stop()
