"""Prometheus metrics of the writer, the hub and the web tier (the optional ``metrics`` extra).

The rest of the library calls the small hooks below; each is a no-op when ``prometheus_client``
is not installed, which is imported on first use, never at import time. Metrics live in
``prometheus_client``'s default registry. Under a pre-forking server (Celery's prefork pool,
``uvicorn --workers``, gunicorn) set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before
the first process starts: every process then writes its values to files there and
``exposition()`` adds them up (prometheus_client's multiprocess mode; the variable is its own,
read when it is imported). ``python -m worker`` processes do this by themselves
(``worker.observe``).

Names (all prefixed ``streaming_``):

- web tier: ``readers_connected``, ``runs_followed`` (gauges), ``events_sent_total``,
  ``delivery_lag_seconds`` (histogram: from the writer accepting an entry to the web process
  handing it to the socket; both clocks are the hosts' wall clocks), ``http_responses_total``
  (by ``route``, ``status`` and ``error`` type), ``store_errors_total`` (by ``component``);
- writers: ``runs_started_total`` (by ``attempt``: first or later), ``runs_ended_total`` (by
  ``kind``), ``chunks_written_total``, ``written_bytes_total``, ``writer_buffer_bytes``
  (gauge), ``flush_seconds`` (histogram), ``writer_outages_total``, ``writer_fenced_total``,
  ``writer_busy_total``, ``writer_waiting_since_timestamp_seconds`` (per process: when its
  oldest unflushed chunk started waiting, 0 when nothing waits; the worker's health check),
  ``sweep_endings_total`` (by ``kind``).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .wire import Event

__all__ = [
    "CONTENT_TYPE",
    "available",
    "exposition",
    "multiprocess_dir",
    "observe_events",
    "reap_dead_processes",
    "use_multiprocess",
]

R = TypeVar("R")
T = TypeVar("T")
E = TypeVar("E", bound="Event | None")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FLUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class _Metrics:
    """The metric objects, made once per process on first use."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.readers = Gauge("streaming_readers_connected", "Streams being served to clients",
                             multiprocess_mode="livesum")
        self.followed = Gauge("streaming_runs_followed", "Runs this process is serving",
                              multiprocess_mode="livesum")
        self.events = Counter("streaming_events_sent", "Run events handed to clients")
        self.lag = Histogram("streaming_delivery_lag_seconds",
                             "From the writer accepting an entry to its socket write",
                             buckets=_LAG_BUCKETS)
        self.responses = Counter("streaming_http_responses", "Responses of the stream routes",
                                 ["route", "status", "error"])
        self.store_errors = Counter("streaming_store_errors", "Failed calls to the stream store",
                                    ["component"])
        self.started = Counter("streaming_runs_started", "Runs claimed by a writer", ["attempt"])
        self.ended = Counter("streaming_runs_ended", "Run endings a writer stored", ["kind"])
        self.chunks = Counter("streaming_chunks_written", "Entries stored by writers")
        self.bytes = Counter("streaming_written_bytes", "UTF-8 bytes of the frames stored")
        self.buffer = Gauge("streaming_writer_buffer_bytes", "Bytes accepted, not yet stored",
                            multiprocess_mode="livesum")
        self.flush = Histogram("streaming_flush_seconds", "One flush pipeline's round trip",
                               buckets=_FLUSH_BUCKETS)
        self.outages = Counter("streaming_writer_outages", "Times a writer lost the store")
        self.fenced = Counter("streaming_writer_fenced", "Writes refused: a newer attempt owns")
        self.busy = Counter("streaming_writer_busy", "Claims refused: another writer is live")
        self.waiting = Gauge("streaming_writer_waiting_since_timestamp_seconds",
                             "When the oldest unflushed chunk started waiting (0: none)",
                             multiprocess_mode="liveall")
        self.swept = Counter("streaming_sweep_endings", "Endings written by the sweep", ["kind"])


_metrics: _Metrics | None = None
_missing = False
_followed: dict[str, int] = {}
# The first use may come from two threads at once (a web request and a writer's flush thread,
# or two worker threads): one registers the collectors, the other would find them taken.
_creating = threading.Lock()


def _get() -> _Metrics | None:
    global _metrics, _missing
    if _metrics is None and not _missing:
        with _creating:
            if _metrics is None and not _missing:
                try:
                    _metrics = _Metrics()
                except ImportError:
                    _missing = True
    return _metrics


def available() -> bool:
    """Whether ``prometheus_client`` is installed (the ``metrics`` extra).

    Makes no metric: a process that only serves others' (a worker's main process) must not
    show up among the processes that record them.
    """
    if _metrics is not None:
        return True
    try:
        return importlib.util.find_spec("prometheus_client") is not None
    except ValueError:  # in sys.modules as None: made unimportable on purpose
        return False


def multiprocess_dir() -> str | None:
    """prometheus_client's multiprocess directory, if this process uses one."""
    # prometheus_client's own contract: it reads this variable when it is imported.
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def use_multiprocess(path: str) -> None:
    """Make this process and the ones it forks from now on write their metrics under ``path``.

    Call it before the first metric is recorded (a pre-forking server's main process, before
    it forks). prometheus_client picks its value store when it is imported, which may have
    happened already (Celery's command line loads Flower's, which imports it): it is picked
    again here.
    """
    if _metrics is not None:
        raise RuntimeError("metrics were recorded before multiprocess mode was chosen")
    # prometheus_client's own contract: it reads this variable, and children inherit it.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def exposition() -> bytes:
    """This process's metrics in the text format; in multiprocess mode, every process's."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    path = multiprocess_dir()
    if path is None:
        _get()  # every metric is listed, at 0 until used
        return generate_latest(REGISTRY)
    reap_dead_processes(path)
    registry = CollectorRegistry()
    registry.register(_RecordedFiles(path))
    return generate_latest(registry)


class _RecordedFiles:
    """prometheus_client's ``MultiProcessCollector`` without its files that are still empty.

    A process creates its file, then sizes it: a scrape in between read a file of 0 bytes and
    failed whole (``struct.error``), and a process killed in between left it so for good
    (prometheus/client_python#1199). An empty file holds no value yet, so it is left out; a
    file only grows, so one seen non-empty stays readable.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Any]:
        from prometheus_client import multiprocess

        files = [name for name in glob.glob(os.path.join(self.path, "*.db")) if _size(name)]
        return multiprocess.MultiProcessCollector.merge(  # type: ignore[no-untyped-call,no-any-return]
            files, accumulate=True)


def _size(name: str) -> int:
    try:
        return os.path.getsize(name)
    except FileNotFoundError:  # a live gauge of a process another scrape marked dead
        return 0


def reap_dead_processes(path: str) -> list[int]:
    """Drop the live gauges of processes that exited (a killed child never says so itself)."""
    from prometheus_client import multiprocess

    dead = set()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = int(name.rsplit("_", 1)[1][:-3])
        if not _alive(pid):
            dead.add(pid)
    for pid in dead:
        # Two processes scraping at once both reap it; the second finds the files gone.
        with contextlib.suppress(FileNotFoundError):
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- web tier hooks --------------------------------------------------------------------------


async def observe_events(run_id: str, events: AsyncGenerator[E, None]) -> AsyncIterator[E]:
    """``events`` as they are, counting the reader, its run, each event and its lag (a
    ``None`` in the source, a silence marked by ``HubReader.timed``, is passed on uncounted)."""
    m = _get()
    if m is None:
        async with contextlib.aclosing(events):
            async for event in events:
                yield event
        return
    m.readers.inc()
    _follow(m, run_id, 1)
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                if event is not None:
                    m.events.inc()
                    if event.stored_ms:
                        m.lag.observe(max(time.time() - event.stored_ms / 1000, 0.0))
                yield event
    finally:
        m.readers.dec()
        _follow(m, run_id, -1)


def _follow(m: _Metrics, run_id: str, delta: int) -> None:
    count = _followed.get(run_id, 0) + delta
    if count > 0:
        _followed[run_id] = count
    else:
        _followed.pop(run_id, None)
    m.followed.set(len(_followed))


def counted(route: str, handler: Callable[[R], Awaitable[T]]) -> Callable[[R], Awaitable[T]]:
    """``handler`` (a request handler), counting its responses by status and error type."""

    async def handle(request: R) -> T:
        result = await handler(request)
        if (m := _get()) is not None:
            status = str(getattr(result, "status_code", ""))
            m.responses.labels(route, status, getattr(result, "error_type", "")).inc()
        return result

    return handle


def store_error(component: str) -> None:
    if (m := _get()) is not None:
        m.store_errors.labels(component).inc()


# -- writer hooks ----------------------------------------------------------------------------


def run_started(attempt: int) -> None:
    if (m := _get()) is not None:
        m.started.labels("first" if attempt <= 1 else "later").inc()


def run_ended(kind: str) -> None:
    if (m := _get()) is not None:
        m.ended.labels(kind).inc()


def flushed(seconds: float, chunks: int, frames: Iterable[str]) -> None:
    """A flush's round trip and what it stored: ``chunks`` chunks, their ``frames``."""
    if (m := _get()) is not None:
        m.flush.observe(seconds)
        m.chunks.inc(chunks)
        # One encode of them all: a call per frame cost the writer more than the flush's sending.
        m.bytes.inc(len("".join(frames).encode()))


def buffered(nbytes: int, waiting_since: float) -> None:
    """The writer's buffer after a change: its bytes and when its oldest chunk began waiting."""
    if (m := _get()) is not None:
        m.buffer.set(nbytes)
        m.waiting.set(waiting_since)


def waiting(since: float) -> None:
    """When the writer's oldest unflushed chunk began waiting (0: nothing waits)."""
    if (m := _get()) is not None:
        m.waiting.set(since)


def outage() -> None:
    if (m := _get()) is not None:
        m.outages.inc()


def fenced() -> None:
    if (m := _get()) is not None:
        m.fenced.inc()


def busy() -> None:
    if (m := _get()) is not None:
        m.busy.inc()


def swept(kind: str) -> None:
    if (m := _get()) is not None:
        m.swept.labels(kind).inc()


def samples(text: bytes | str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in an exposition (for health checks and tests)."""
    from prometheus_client.parser import text_string_to_metric_families

    raw = text.decode() if isinstance(text, bytes) else text
    found: list[tuple[dict[str, str], float]] = []
    for family in text_string_to_metric_families(raw):
        found.extend((dict(s.labels), s.value) for s in family.samples if s.name == name)
    return found

