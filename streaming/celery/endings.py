"""Endings the worker's main process writes for runs whose task cannot write its own.

- ``task_failure`` with ``WorkerLostError``: the child died (SIGKILL, OOM) and the message was
  not requeued (``reject_on_worker_lost`` off, or retries exhausted): ``lost``.
- ``task_failure`` with ``TimeLimitExceeded``: the hard time limit killed the child: ``timeout``.
- ``task_revoked``: terminated on request (the fallback for a stuck run), or revoked before it
  started: ``cancelled``; expired before it started: ``timeout``. A terminated run also gets a
  ``task-cancelled`` event: Celery's own ``task-revoked`` would leave it ``STREAMING`` in
  Flower (its event state ranks custom states above REVOKED), ``CANCELLED`` replaces it.

A requeued task writes nothing here: its next attempt continues the run. Each ending goes
through the guarded ending script (``streaming.control.end_run`` with ``when="not_live"``): it
is written only while no live attempt holds the run, so it can never race a requeued attempt,
and it is stored like any ending (readers, reconnects and later attempts all see it). It is
written from a short-lived thread, not the worker's event loop: the dead child's lease must
lapse first (at most ``lease_ttl``). The run is the one the task names (``run_id_for``: its
task id by default).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import TimeLimitExceeded
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from .. import metrics
from ..control import cancel_reason, end_run
from ..logs import run_extra
from ..wire import Terminal
from .app import Streaming

__all__ = ["connect", "end_run_soon"]

logger = logging.getLogger(__name__)
_ending: set[str] = set()
_ending_lock = threading.Lock()
#: How often the ending is tried again while the dead process's lease has not lapsed yet.
RETRY_EVERY = 0.25


def connect(streaming: Streaming, uid: str) -> None:
    """Write the endings of ``streaming.app``'s runs whose process was lost, killed or revoked."""

    def failure(sender: Any = None, task_id: Any = None, exception: object = None,
                args: Any = None, kwargs: Any = None, **_: Any) -> None:
        if _ours(streaming, sender) and isinstance(exception, WorkerLostError | TimeLimitExceeded):
            kind = Terminal.TIMEOUT if isinstance(exception, TimeLimitExceeded) else Terminal.LOST
            end_run_soon(streaming, _run_id(sender, task_id, args, kwargs), kind,
                         _describe(exception))

    def revoked(sender: Any = None, request: Any = None, terminated: bool = False,
                expired: bool = False, **_: Any) -> None:
        if _ours(streaming, sender):
            kind = Terminal.TIMEOUT if expired else Terminal.CANCELLED
            reason = "expired before it started" if expired else (
                "terminated" if terminated else "revoked")
            run_id = _run_id(sender, getattr(request, "id", None), getattr(request, "args", None),
                             getattr(request, "kwargs", None))
            end_run_soon(streaming, run_id, kind, reason)
            if terminated:
                _announce_cancelled(streaming, getattr(request, "id", None), reason)

    signals.task_failure.connect(failure, weak=False, dispatch_uid=uid)
    signals.task_revoked.connect(revoked, weak=False, dispatch_uid=uid)


def _announce_cancelled(streaming: Streaming, task_id: str | None, reason: str) -> None:
    """Flower's final state of a terminated run (best effort: the backend says REVOKED)."""
    if task_id is None:
        return
    try:
        with streaming.app.events.default_dispatcher() as dispatcher:
            dispatcher.send("task-cancelled", uuid=task_id, retry=False,
                            result=f"cancelled: {reason}")
    except (OSError, RedisError, OperationalError) as exc:
        logger.warning("could not announce the cancel of task %s: %s", task_id, exc)


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


def end_run_soon(streaming: Streaming, run_id: str | None, kind: Terminal, message: str) -> None:
    """Write ``run_id``'s ending from a thread of its own, once per run in this process."""
    if run_id is None:
        return
    with _ending_lock:
        if run_id in _ending:
            return
        _ending.add(run_id)
    threading.Thread(target=_end, args=(streaming, run_id, kind, message), daemon=True,
                     name=f"end-run-{run_id}").start()


def _end(streaming: Streaming, run_id: str, kind: Terminal, message: str) -> None:
    try:
        ended = _end_when_not_live(streaming, run_id, kind, message)
        if ended is kind:
            metrics.run_ended(kind.value)
            logger.warning("run %s ended by the worker: %s (%s)", run_id, kind.value, message,
                           extra=run_extra(run_id))
        elif ended is None:
            logger.info("run %s is served by another live attempt; no ending written", run_id,
                        extra=run_extra(run_id))
        else:
            logger.info("run %s had already ended (%s)", run_id, ended, extra=run_extra(run_id))
    except RedisError:
        logger.exception("could not write the ending of run %s", run_id, extra=run_extra(run_id))
    finally:
        with _ending_lock:
            _ending.discard(run_id)


def _end_when_not_live(streaming: Streaming, run_id: str, kind: Terminal,
                       message: str) -> Terminal | None:
    """The guarded ending, tried until the dead process's lease lapses (``lease_ttl`` + 1 s).

    Returns the run's ending after the call, or None if a live attempt still holds it.
    """
    settings, client = streaming.settings, streaming.redis
    if kind is Terminal.CANCELLED:
        message = cancel_reason(client, run_id, settings) or message  # the canceller's reason
    give_up = time.monotonic() + settings.lease_ttl + 1.0
    while True:
        ending = end_run(client, run_id, settings, kind, message, when="not_live")
        if ending is not None or time.monotonic() >= give_up:
            return None if ending is None else Terminal(ending)
        time.sleep(RETRY_EVERY)
