"""The worker side of one app: a bootstep that ties its writer to the worker's processes and
writes the endings of runs whose task cannot write its own.

Every signal is connected for this worker only: process signals with ``sender=`` the worker's
host name, ``worker_shutdown`` with ``sender=`` the worker, and the task signals act only on
this app's streaming tasks. Another app in the same process never sees these hooks fire.

Prefork: each child starts its writer in ``worker_process_init`` (which Celery gives 4 s:
``start()`` only starts a thread and does no I/O) and flushes and stops it in
``worker_process_shutdown``. That signal is not guaranteed to run, which is why a task reports
success only after its chunks are stored. Solo and threads pools run tasks in the main
process: the bootstep starts the writer there, and ``worker_shutdown`` stops it after the
pool has finished its tasks.

The bootstep also gives the worker ``.consumer.Consumer`` (Celery's, without Celery 5.7's second
close of a lost Redis broker connection, which stops the worker), unless the app names a
consumer other than Celery's (``worker_consumer``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps, signals
from celery.utils.imports import symbol_by_name
from celery.worker.consumer import Consumer as CeleryConsumer

from ..errors import StreamingError
from . import endings
from .app import Streaming, streaming_of
from .consumer import Consumer

__all__ = ["WorkerStep"]

logger = logging.getLogger(__name__)
#: Bounds on starting (thread handshake; Celery allows process init 4 s) and stopping (final
#: flush) a writer.
START_TIMEOUT = 2.0
STOP_TIMEOUT = 10.0


class WorkerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Streaming's part of a worker of one app (``install()`` adds it to that app)."""

    label = "streaming"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.streaming = streaming_of(worker.app)
        self.prefork = _is_prefork(worker)
        _connect(self.streaming, worker)
        # Every step is made before any creates its part, the consumer included.
        if symbol_by_name(worker.consumer_cls) is CeleryConsumer:
            worker.consumer_cls = Consumer

    def start(self, worker: Any) -> None:
        if not self.prefork:  # solo and threads pools run tasks in this process
            start_writer(self.streaming)

    def stop(self, worker: Any) -> None:
        pass  # worker_shutdown stops the writer once the pool has finished its tasks


def _connect(streaming: Streaming, worker: Any) -> None:
    uid = f"streaming-{id(streaming)}"

    def process_init(**_: Any) -> None:
        start_writer(streaming)

    def process_shutdown(**_: Any) -> None:
        streaming.stop_writer(STOP_TIMEOUT)

    def worker_shutdown(**_: Any) -> None:
        streaming.stop_writer(STOP_TIMEOUT)

    hostname = worker.hostname
    signals.worker_process_init.connect(process_init, sender=hostname, weak=False,
                                        dispatch_uid=uid)
    signals.worker_process_shutdown.connect(process_shutdown, sender=hostname, weak=False,
                                            dispatch_uid=uid)
    signals.worker_shutdown.connect(worker_shutdown, sender=worker, weak=False,
                                    dispatch_uid=uid)
    endings.connect(streaming, uid)


def start_writer(streaming: Streaming) -> None:
    try:
        streaming.writer(START_TIMEOUT)
    except StreamingError:  # tasks retry on first use; the process itself must come up
        logger.exception("the stream writer did not start")


def _is_prefork(worker: Any) -> bool:
    pool = getattr(worker, "pool_cls", None)  # a name like "prefork", or a class
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    return "prefork" in name or name == "processes"
