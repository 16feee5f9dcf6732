"""Endings the worker's main process writes for runs whose task cannot write its own.

- ``task_failure`` with ``WorkerLostError``: the child died (SIGKILL, OOM) and the message was
  not requeued (``reject_on_worker_lost`` off, or retries exhausted): ``lost``.
- ``task_failure`` with ``TimeLimitExceeded``: the hard time limit killed the child: ``timeout``.
- ``task_revoked``: terminated on request (the fallback for a stuck run), or revoked before it
  started: ``cancelled``; expired before it started: ``timeout``.

A requeued task writes nothing here: its next attempt continues the run. Each ending is written
from a short-lived thread, not the worker's event loop: the dead child's lease must lapse first
(at most ``lease_ttl``), and the claim skips the ``restarted`` event (nothing restarts).
The run is the task's id.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import TimeLimitExceeded

from ..errors import RunBusyError, RunClosedError, StreamingError
from ..wire import Terminal
from .app import Streaming

__all__ = ["connect", "end_run"]

logger = logging.getLogger(__name__)
_ending: set[str] = set()
_ending_lock = threading.Lock()


def connect(streaming: Streaming, uid: str) -> None:
    """Write the endings of ``streaming.app``'s runs whose process was lost, killed or revoked."""

    def failure(sender: Any = None, task_id: Any = None, exception: object = None,
                args: Any = None, kwargs: Any = None, **_: Any) -> None:
        if _ours(streaming, sender) and isinstance(exception, WorkerLostError | TimeLimitExceeded):
            kind = Terminal.TIMEOUT if isinstance(exception, TimeLimitExceeded) else Terminal.LOST
            end_run(streaming, _run_id(sender, task_id, args, kwargs), kind,
                    _describe(exception))

    def revoked(sender: Any = None, request: Any = None, terminated: bool = False,
                expired: bool = False, **_: Any) -> None:
        if _ours(streaming, sender):
            kind = Terminal.TIMEOUT if expired else Terminal.CANCELLED
            reason = "expired before it started" if expired else (
                "terminated" if terminated else "revoked")
            run_id = _run_id(sender, getattr(request, "id", None), getattr(request, "args", None),
                             getattr(request, "kwargs", None))
            end_run(streaming, run_id, kind, reason)

    signals.task_failure.connect(failure, weak=False, dispatch_uid=uid)
    signals.task_revoked.connect(revoked, weak=False, dispatch_uid=uid)


def _ours(streaming: Streaming, task: Any) -> bool:
    from .task import StreamingTask

    return isinstance(task, StreamingTask) and task.app is streaming.app


def _run_id(task: Any, task_id: Any, args: Any, kwargs: Any) -> str | None:
    if not isinstance(task_id, str):
        return None
    run_id = task.run_id_for(task_id, args or (), kwargs if isinstance(kwargs, dict) else {})
    return run_id if isinstance(run_id, str) else None


def _describe(exception: object) -> str:
    if isinstance(exception, TimeLimitExceeded):
        return f"the run exceeded its hard time limit ({exception}) and its process was killed"
    return f"the worker process running the run was lost: {exception}"


def end_run(streaming: Streaming, run_id: object, kind: Terminal, message: str) -> None:
    """Write ``run_id``'s ending from a thread of its own, once per run in this process."""
    if not isinstance(run_id, str):
        return
    with _ending_lock:
        if run_id in _ending:
            return
        _ending.add(run_id)
    threading.Thread(target=_end, args=(streaming, run_id, kind, message), daemon=True,
                     name=f"end-run-{run_id}").start()


def _end(streaming: Streaming, run_id: str, kind: Terminal, message: str) -> None:
    wait = streaming.settings.lease_ttl + 1.0  # the dead process's lease lapses by then
    try:
        run = streaming.writer().open(run_id, wait=wait, announce_restart=False)
        if kind is Terminal.CANCELLED and run.cancel_requested:
            message = run.cancel_requested  # the reason the canceller gave
        run.finish(kind, message)
        logger.warning("run %s ended by the worker: %s (%s)", run_id, kind.value, message)
    except (RunBusyError, RunClosedError):
        logger.info("run %s is served by another attempt or has ended", run_id)
    except StreamingError:
        logger.exception("could not write the ending of run %s", run_id)
    finally:
        with _ending_lock:
            _ending.discard(run_id)
