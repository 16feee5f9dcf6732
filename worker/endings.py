"""Endings the worker's main process writes for runs whose task cannot write its own.

- ``task_failure`` with ``WorkerLostError``: the child died (SIGKILL, OOM) and the message was
  not requeued (``reject_on_worker_lost`` off, or retries exhausted): ``lost``.
- ``task_failure`` with ``TimeLimitExceeded``: the hard time limit killed the child: ``timeout``.
- ``task_revoked``: terminated on request (the fallback for a stuck run), or revoked before it
  started: ``cancelled``; expired before it started: ``timeout``.

A requeued task writes nothing here: its next attempt continues the run. Each ending goes
through the guarded ending script (``streaming.control.end_run`` with ``when="not_live"``): it
is written only while no live attempt holds the run, so it can never race a requeued attempt,
and it is stored like any ending (readers, reconnects and later attempts all see it). It is
written from a short-lived thread, not the worker's event loop: the dead child's lease must
lapse first (at most ``lease_ttl``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import TimeLimitExceeded
from redis.exceptions import RedisError

from streaming.control import cancel_reason, end_run
from streaming.wire import Terminal
from tasks import GENERATE

if TYPE_CHECKING:
    from .factory import StreamingCelery

__all__ = ["connect", "end_run_soon"]

logger = logging.getLogger(__name__)
_ending: set[str] = set()
_ending_lock = threading.Lock()
#: How often the ending is tried again while the dead process's lease has not lapsed yet.
RETRY_EVERY = 0.25


def connect(app: StreamingCelery) -> None:
    """Write the endings of ``app``'s runs whose worker process was lost, killed or revoked."""

    def failure(sender: Any = None, exception: object = None, kwargs: Any = None,
                **_: Any) -> None:
        if _ours(app, sender) and isinstance(exception, WorkerLostError | TimeLimitExceeded):
            kind = Terminal.TIMEOUT if isinstance(exception, TimeLimitExceeded) else Terminal.LOST
            end_run_soon(app, _run_id(kwargs), kind, _describe(exception))

    def revoked(sender: Any = None, request: Any = None, terminated: bool = False,
                expired: bool = False, **_: Any) -> None:
        if _ours(app, sender):
            kind = Terminal.TIMEOUT if expired else Terminal.CANCELLED
            reason = "expired before it started" if expired else (
                "terminated" if terminated else "revoked")
            end_run_soon(app, _run_id(getattr(request, "kwargs", None)), kind, reason)

    signals.task_failure.connect(failure, weak=False)
    signals.task_revoked.connect(revoked, weak=False)


def _ours(app: StreamingCelery, task: Any) -> bool:
    return getattr(task, "app", None) is app and getattr(task, "name", None) == GENERATE


def _run_id(kwargs: Any) -> str | None:
    run_id = kwargs.get("run_id") if isinstance(kwargs, dict) else None
    return run_id if isinstance(run_id, str) else None


def _describe(exception: object) -> str:
    if isinstance(exception, TimeLimitExceeded):
        return f"the run exceeded its hard time limit ({exception}) and its process was killed"
    return f"the worker process running the run was lost: {exception}"


def end_run_soon(app: StreamingCelery, run_id: str | None, kind: Terminal, message: str) -> None:
    """Write ``run_id``'s ending from a thread of its own, once per run in this process."""
    with _ending_lock:
        if run_id is None or run_id in _ending:
            return
        _ending.add(run_id)
    threading.Thread(target=_end, args=(app, run_id, kind, message), daemon=True,
                     name=f"end-run-{run_id}").start()


def _end(app: StreamingCelery, run_id: str, kind: Terminal, message: str) -> None:
    try:
        ended = _end_when_not_live(app, run_id, kind, message)
        if ended is kind:
            logger.warning("run %s ended by the worker: %s (%s)", run_id, kind.value, message)
        elif ended is None:
            logger.info("run %s is served by another live attempt; no ending written", run_id)
        else:
            logger.info("run %s had already ended (%s)", run_id, ended)
    except RedisError:
        logger.exception("could not write the ending of run %s", run_id)
    finally:
        with _ending_lock:
            _ending.discard(run_id)


def _end_when_not_live(app: StreamingCelery, run_id: str, kind: Terminal,
                       message: str) -> Terminal | None:
    """The guarded ending, tried until the dead process's lease lapses (``lease_ttl`` + 1 s).

    Returns the run's ending after the call, or None if a live attempt still holds it.
    """
    settings = app.config.streaming
    if kind is Terminal.CANCELLED:
        message = cancel_reason(app.redis, run_id, settings) or message  # the canceller's reason
    give_up = time.monotonic() + settings.lease_ttl + 1.0
    while True:
        ending = end_run(app.redis, run_id, settings, kind, message, when="not_live")
        if ending is not None or time.monotonic() >= give_up:
            return None if ending is None else Terminal(ending)
        time.sleep(RETRY_EVERY)
