"""Celery state follows a run's stored ending: Flower never shows an ended run as running.

A run can end without its task storing a final Celery state: the reader or the worker's sweep
wrote ``lost`` after the whole worker died, the queue deadline ended a run whose message was
stranded, or the store was down when the task finished. ``follow_ending`` stores the state
that matches the stored ending for a task whose state is not final yet (``PENDING``,
``STARTED``, ``STREAMING``, ``RETRY``):

- ``done``: ``SUCCESS`` with ``{"run_id", "ending": "done", "last_seq"}``;
- ``cancelled``: ``REVOKED`` with the cancel reason;
- ``error``, ``timeout``, ``lost``: ``FAILURE`` with a ``RunEnded`` error whose message is the
  ending's kind and message.

A final state is never replaced: what the task itself stored stays. The task id of a run is its
run id (``tasks.api.Runs.start``). The matching task event (``task-failed``, ``task-revoked``,
``task-succeeded``) is sent too: Flower builds its view from events, not from the backend.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from celery import states
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult

from streaming.client import SyncClient
from streaming.control import run_status
from streaming.settings import Settings
from streaming.wire import RunKeys, Terminal, parse_frame

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["RunEnded", "follow_ending", "stored_ending"]

logger = logging.getLogger(__name__)


class RunEnded(Exception):
    """The Celery error of a run that ended ``error``, ``timeout`` or ``lost`` without its task
    storing a failure of its own; its message is the stored ending's."""


def stored_ending(client: SyncClient, run_id: str, settings: Settings
                  ) -> tuple[Terminal, str, int] | None:
    """The run's stored ending ``(kind, message, last seq)``, or None if it has not ended."""
    status = run_status(client, run_id, settings)
    if status.terminal is None:
        return None
    keys = RunKeys.for_run(run_id, hash_tag=settings.cluster_hash_tags)
    last = client.xrevrange(keys.stream, count=1)
    frame = last[0][1].get("data", "") if last else ""  # type: ignore[index]
    return status.terminal, _message(*parse_frame(frame)), status.last_seq


def _message(event: str, data: str) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    inner = body.get("error") or body.get("cancelled") or {}
    return str(inner.get("message") or inner.get("reason") or "") if isinstance(inner, dict) \
        else ""


def follow_ending(app: Celery, client: SyncClient, settings: Settings, run_id: str,
                  task_id: str | None = None) -> bool:
    """Store the Celery state of ``run_id``'s stored ending for its task (``task_id``, by
    default the run id) unless that task's state is final; True if a state was stored."""
    ending = stored_ending(client, run_id, settings)
    task_id = task_id or run_id
    if ending is None:
        return False
    result = AsyncResult(task_id, app=app)
    if result.state in states.READY_STATES:
        return False
    kind, message, last_seq = ending
    state, value = _celery_state(run_id, kind, message, last_seq)
    app.backend.store_result(task_id, value, state)
    _announce(app, task_id, state, value)
    logger.info("run %s ended %s: its task's state is now %s", run_id, kind.value, state)
    return True


def _announce(app: Celery, task_id: str, state: str, value: Any) -> None:
    """Send the task event of ``state`` (best effort: the backend holds the truth)."""
    fields: dict[str, Any] = {"uuid": task_id}
    if state == states.SUCCESS:
        kind, fields["result"], fields["runtime"] = "task-succeeded", repr(value), 0.0
    elif state == states.REVOKED:
        kind, fields["terminated"], fields["expired"] = "task-revoked", False, False
    else:
        kind, fields["exception"], fields["traceback"] = "task-failed", repr(value), ""
    with app.events.default_dispatcher() as dispatcher:
        dispatcher.send(kind, retry=False, **fields)


def _celery_state(run_id: str, kind: Terminal, message: str, last_seq: int) -> tuple[str, Any]:
    if kind is Terminal.DONE:
        return states.SUCCESS, {"run_id": run_id, "ending": kind.value, "last_seq": last_seq}
    if kind is Terminal.CANCELLED:
        return states.REVOKED, TaskRevokedError(message or "cancelled")
    return states.FAILURE, RunEnded(f"{kind.value}: {message}" if message else kind.value)
