"""Starting and stopping the stream writer with the worker's processes.

Prefork: each child starts its writer in ``worker_process_init`` (which Celery gives 4 s:
``start()`` only starts a thread and does no I/O, so it is quick even when Redis is down) and
flushes and stops it in ``worker_process_shutdown``. That signal is not guaranteed to run, which
is why a task reports success only after its chunks are stored (``RunWriter.finish``). Solo and
threads pools run tasks in the main process: ``worker_init`` and ``worker_shutdown`` do it there.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import signals

from streaming.errors import StreamingError

if TYPE_CHECKING:
    from .factory import StreamingCelery

__all__ = ["connect"]

logger = logging.getLogger(__name__)
#: Bounds on starting (thread handshake; Celery allows process init 4 s) and stopping (final
#: flush) a writer.
START_TIMEOUT = 2.0
STOP_TIMEOUT = 10.0


def connect(app: StreamingCelery) -> None:
    """Tie ``app``'s stream writer to its worker's process signals."""

    def process_init(**_: Any) -> None:
        _start(app)

    def process_shutdown(**_: Any) -> None:
        app.stop_stream_writer(STOP_TIMEOUT)

    def worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and not _is_prefork(sender):
            _start(app)

    def worker_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            app.stop_stream_writer(STOP_TIMEOUT)

    signals.worker_process_init.connect(process_init, weak=False)
    signals.worker_process_shutdown.connect(process_shutdown, weak=False)
    signals.worker_init.connect(worker_init, weak=False)
    signals.worker_shutdown.connect(worker_shutdown, weak=False)


def _start(app: StreamingCelery) -> None:
    try:
        app.stream_writer(START_TIMEOUT)
    except StreamingError:  # tasks retry on first use; the process itself must come up
        logger.exception("the stream writer did not start")


def _is_prefork(worker: Any) -> bool:
    pool = getattr(worker, "pool_cls", None)  # at worker_init: a name like "prefork", or a class
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    return "prefork" in name or name == "processes"
