"""The stream loop on its own, with a production-like lease (10 s): the writer's lease refresh
does not bring the cancel flag back in time, so these pin the loop's own cancel checks."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from streaming.celery.handle import RunHandle
from streaming.celery.runner import CancelWatch, pump
from streaming.control import mark_pending, request_cancel
from streaming.settings import Settings
from streaming.wire import RunKeys
from streaming.writer import StreamWriter


@pytest.fixture
def slow_lease_writer(redis_url: str) -> Iterator[StreamWriter]:
    writer = StreamWriter(Settings(redis_url=redis_url, lease_ttl=10.0)).start()
    yield writer
    writer.stop()


def claimed(writer: StreamWriter, redis_client):
    run_id = f"run-{uuid.uuid4().hex}"
    mark_pending(redis_client, run_id, writer.settings)
    run = writer.open(run_id)
    meta = RunKeys.for_run(run_id).meta
    watch = CancelWatch(run, lambda: redis_client.hget(meta, "cancel") or "", interval=0.05)
    handle = RunHandle(run, watch, lambda _: None)
    return handle, watch, handle.summary


def test_a_sync_generator_stops_at_its_first_chunk_after_the_request(slow_lease_writer,
                                                                     redis_client):
    run, watch, summary = claimed(slow_lease_writer, redis_client)
    closed = threading.Event()

    def chunks() -> Iterator[str]:
        try:
            for index in range(50):
                if index == 2:
                    request_cancel(redis_client, run.run_id, slow_lease_writer.settings, "now")
                yield f"chunk {index}"
                time.sleep(0.4)
        finally:
            closed.set()

    pump(run, chunks(), poll=0.2)
    assert watch.reason() == "now"
    assert summary.chunks == 3  # chunk 2, yielded after the request, is the last one
    assert closed.is_set()


def test_a_waiting_async_generator_is_interrupted_and_closed(slow_lease_writer, redis_client):
    run, watch, summary = claimed(slow_lease_writer, redis_client)
    closed = threading.Event()

    async def chunks():
        try:
            yield "first"
            await asyncio.sleep(30)  # e.g. a model thinking; the cancel must not wait for it
            yield "never"
        finally:
            closed.set()

    threading.Timer(0.3, request_cancel,
                    (redis_client, run.run_id, slow_lease_writer.settings, "stop")).start()
    started = time.monotonic()
    pump(run, chunks(), poll=0.05)
    assert time.monotonic() - started < 2.0
    assert watch.reason() == "stop" and summary.chunks == 1 and closed.is_set()


def test_an_async_generator_runs_on_its_own_loop_not_the_writers(slow_lease_writer,
                                                                 redis_client):
    run, _, _ = claimed(slow_lease_writer, redis_client)
    loops = []

    async def chunks():
        loops.append(asyncio.get_running_loop())
        yield "one"

    pump(run, chunks(), poll=0.2)
    assert loops and loops[0] is not slow_lease_writer._loop and loops[0].is_closed()
