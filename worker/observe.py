"""The worker's metrics, health endpoint and run-tagged logs.

Logs: every handler Celery sets up gets ``TaskRunFilter``, so each line about a run starts with
``run=<id> attempt=<n>`` (``streaming.logs``), Celery's own task lines included.

Metrics and health: served by the main process for all its children.

With ``WORKER_METRICS_PORT`` set, ``worker_init`` (in the main process, before the pool forks)
points prometheus_client's multiprocess mode at a directory (``PROMETHEUS_MULTIPROC_DIR`` if
given, its old ``*.db`` files removed; else a fresh temporary one), which the pool's children
inherit, and starts ``streaming.exporter`` there: ``/metrics`` adds up every process's metrics,
``/healthz`` says whether the worker can stream:

- ``store``: the stream store answers a ``PING`` within 2 s;
- ``writers``: no process's stream writer has had chunks waiting unflushed for longer than
  ``STREAMING_UNAVAILABLE_TIMEOUT`` (past which its runs fail), from the per-process
  ``streaming_writer_waiting_since_timestamp_seconds`` gauge.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Any

from celery import signals
from redis.exceptions import RedisError

from streaming import exporter, logs, metrics
from streaming.client import sync_client
from tasks import GENERATE

if TYPE_CHECKING:
    from .factory import StreamingCelery

__all__ = ["TaskRunFilter", "connect", "health"]

logger = logging.getLogger(__name__)
_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
_PING_TIMEOUT = 2.0
_ATTEMPT = re.compile(r"'attempt': (\d+)")


def connect(app: StreamingCelery) -> None:
    """Serve ``app``'s worker metrics and health on ``app.config.metrics_port``, if set."""
    served: list[_Endpoint] = []

    def worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and app.config.metrics_port:
            served.append(_start(app))

    def worker_ready(**_: Any) -> None:
        for endpoint in served:  # logging is set up by now (not yet at worker_init)
            url = endpoint.exporter.url
            logger.info("worker metrics on %s/metrics, health on %s/healthz", url, url)

    def worker_shutdown(sender: Any = None, **_: Any) -> None:
        while served:
            served.pop().close()

    def setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
        logs.install(logger, TaskRunFilter())

    signals.after_setup_logger.connect(setup_logger, weak=False)
    signals.after_setup_task_logger.connect(setup_logger, weak=False)
    signals.worker_init.connect(worker_init, weak=False)
    signals.worker_ready.connect(worker_ready, weak=False)
    signals.worker_shutdown.connect(worker_shutdown, weak=False)


class _Endpoint:
    """The running endpoint, its health check's client and the directory it made, if any."""

    def __init__(self, served: exporter.Exporter, check: _Health, made: str | None) -> None:
        self.exporter = served
        self.check = check
        self.made = made

    def close(self) -> None:
        self.exporter.close()
        self.check.close()
        if self.made is not None:
            shutil.rmtree(self.made, ignore_errors=True)


def _start(app: StreamingCelery) -> _Endpoint:
    made = _multiprocess_dir()
    config = app.config
    check = _Health(app)
    return _Endpoint(exporter.serve(config.metrics_host, config.metrics_port, check), check, made)


def _multiprocess_dir() -> str | None:
    """Choose the directory every pool process writes its metrics to (before the fork);
    returns it if this function made it (removed at shutdown)."""
    path = os.environ.get(_MULTIPROC)
    made = None
    if path:
        os.makedirs(path, exist_ok=True)
        for name in glob.glob(os.path.join(path, "*.db")):  # a previous run's processes
            os.remove(name)
    else:
        path = made = tempfile.mkdtemp(prefix="streaming-metrics-")
    metrics.use_multiprocess(path)
    return made


class TaskRunFilter(logs.RunFilter):
    """``streaming.logs.RunFilter`` that also knows Celery's own lines about a run's task
    (received, succeeded, failed): their arguments name the task and its id, the run id."""

    def run_of(self, record: logging.LogRecord) -> tuple[str, int | None] | None:
        run = super().run_of(record)
        args = record.args
        # The name is the run's shadow name, "tasks.generate[<generator>]".
        name = str(args.get("name", "")) if isinstance(args, dict) else ""
        if run is None and isinstance(args, dict) and name.split("[", 1)[0] == GENERATE:
            run_id = args.get("id")
            # A succeeded line's return value is the attempt's summary: it tells the attempt.
            attempt = _ATTEMPT.search(str(args.get("return_value", "")))
            if isinstance(run_id, str):
                return run_id, int(attempt[1]) if attempt else None
        return run


class _Health:
    """The ``/healthz`` verdict of one worker."""

    def __init__(self, app: StreamingCelery) -> None:
        self.app = app
        self._client = sync_client(app.config.streaming, socket_timeout=_PING_TIMEOUT,
                                   socket_connect_timeout=_PING_TIMEOUT, retry=None)

    def __call__(self) -> tuple[bool, dict[str, str]]:
        checks = {"store": self._store(), "writers": self._writers()}
        return all(v == "ok" for v in checks.values()), checks

    def _store(self) -> str:
        try:
            self._client.ping()
        except (RedisError, OSError) as exc:
            return f"unreachable: {exc}"
        return "ok"

    def _writers(self) -> str:
        return health(self.app.config.streaming.unavailable_timeout)

    def close(self) -> None:
        self._client.close()


def health(stall: float, now: float | None = None) -> str:
    """'ok' unless a process's writer has had chunks waiting for more than ``stall`` s."""
    if not metrics.available():
        return "ok"  # nothing to read them from; the store check still runs
    now = time.time() if now is None else now
    name = "streaming_writer_waiting_since_timestamp_seconds"
    stalled = [(labels.get("pid", "this"), now - since)
               for labels, since in metrics.samples(metrics.exposition(), name)
               if since > 0 and now - since > stall]
    if not stalled:
        return "ok"
    return "; ".join(f"process {pid}: chunks unflushed for {age:.0f} s" for pid, age in stalled)
