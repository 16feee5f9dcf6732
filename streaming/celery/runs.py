"""Start, cancel and look up runs from any process, by task name: a web process imports no
task code (``send_task``), so it needs neither the tasks nor their dependencies.

    runs = Runs(app)                                   # the project's Celery app
    run_id = runs.delay("chat.answer", "Why is the sky blue?", model="small")
    runs.cancel(run_id, "user pressed stop", grace=5.0)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from ..client import SyncClient, sync_client
from ..control import mark_pending, request_cancel, run_status
from ..cursor import RunStatus
from ..settings import Settings
from ..wire import validate_run_id
from .app import _installed

__all__ = ["Runs", "new_run_id"]
_POLL = 0.1


def new_run_id() -> str:
    """An unguessable run id (a Celery task id: a random UUID)."""
    from celery.utils import uuid

    return str(uuid())


class Runs:
    """Runs of streaming tasks, sent through ``app`` (any app on the workers' broker) and
    looked up in the stream store (``settings``: the ones ``install()`` gave ``app``, else
    ``Settings.from_env()``)."""

    def __init__(self, app: Celery, settings: Settings | None = None, *,
                 client: SyncClient | None = None) -> None:
        installed = _installed.get(app)
        self.app = app
        self.settings = settings or (installed.settings if installed else Settings.from_env())
        self._client = client

    @property
    def client(self) -> SyncClient:
        """The stream store's client (made on first use)."""
        if self._client is None:
            self._client = sync_client(self.settings)
        return self._client

    @client.setter
    def client(self, client: SyncClient) -> None:
        self._client = client

    def apply_async(self, name: str, args: Sequence[Any] = (),
                    kwargs: Mapping[str, Any] | None = None, *, run_id: str | None = None,
                    **options: Any) -> str:
        """Queue a run of the task ``name`` and return its id (the task id) at once; readers
        may attach now. ``options`` are ``send_task``'s: ``queue``, ``countdown``,
        ``soft_time_limit``, ``time_limit``, ``shadow``, ``kwargsrepr``..."""
        run_id = validate_run_id(run_id) if run_id else new_run_id()
        mark_pending(self.client, run_id, self.settings)
        self.app.send_task(name, args=list(args), kwargs=dict(kwargs or {}), task_id=run_id,
                           **options)
        return run_id

    def delay(self, name: str, /, *args: Any, **kwargs: Any) -> str:
        """``apply_async(name, args, kwargs)``: the task's own arguments, nothing else."""
        return self.apply_async(name, args, kwargs)

    def cancel(self, run_id: str, reason: str = "cancelled", *, grace: float | None = None) -> bool:
        """Ask the run to stop; False if it is unknown or has already ended.

        The task stops at its next chunk (within about a second for one that yields once a
        second) and ends the run ``cancelled``; a queued run ends when a worker receives it.
        With ``grace``, a run still going after ``grace`` s is stuck: its process is
        terminated and the worker writes the ending once the process's lease lapses.
        """
        if not request_cancel(self.client, run_id, self.settings, reason):
            return False
        self.app.control.revoke(run_id)  # a queued copy is dropped when a worker gets it
        if grace is not None and not self._wait_ended(run_id, grace):
            self.app.control.revoke(run_id, terminate=True, signal="SIGKILL")
        return True

    def _wait_ended(self, run_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.status(run_id).state != "ended":
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True

    def status(self, run_id: str) -> RunStatus:
        """The run's state in the stream store: missing, pending, live, idle or ended."""
        return run_status(self.client, run_id, self.settings)

    def task_state(self, run_id: str) -> tuple[str, Any]:
        """The Celery state of the run's task and its info (``STREAMING``: progress)."""
        result = AsyncResult(run_id, app=self.app)
        return result.state, result.info

    async def aapply_async(self, name: str, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None, **options: Any) -> str:
        return await asyncio.to_thread(self.apply_async, name, args, kwargs, **options)

    async def adelay(self, name: str, /, *args: Any, **kwargs: Any) -> str:
        return await asyncio.to_thread(self.apply_async, name, args, kwargs)

    async def acancel(self, run_id: str, reason: str = "cancelled", *,
                      grace: float | None = None) -> bool:
        return await asyncio.to_thread(self.cancel, run_id, reason, grace=grace)

    async def astatus(self, run_id: str) -> RunStatus:
        return await asyncio.to_thread(self.status, run_id)
