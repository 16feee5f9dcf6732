"""Start, cancel and look up runs from any process: a web process needs only this module.

It imports no task or generator code: runs are sent by task name (``send_task``) to the queue
the workers consume, so the web tier needs neither the generators nor their dependencies.

    runs = Runs.from_config(WorkerConfig.from_env())
    run_id = runs.start("demo", {"text": "hello"})   # returns before the task starts
    runs.cancel(run_id, "user pressed stop", grace=5.0)
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery
from celery.result import AsyncResult

from streaming.client import sync_client
from streaming.control import mark_pending, request_cancel, run_status
from streaming.cursor import RunStatus
from streaming.settings import Settings
from streaming.wire import validate_run_id
from worker.config import WorkerConfig, celery_settings

from . import GENERATE
from .schemas import ParamsError, ParamsSchemas

__all__ = ["Runs", "new_run_id", "redact"]
#: Params whose names match this are shown as ``'***'`` in Flower and logs.
SECRET = re.compile(r"key|token|secret|passw|passphrase|pwd|auth|credential|cookie|session"
                    r"|bearer|jwt", re.I)
_POLL = 0.1


def new_run_id() -> str:
    """An unguessable run id: ``run-`` and 128 random bits in hex."""
    return f"run-{secrets.token_hex(16)}"


def redact(value: Any) -> Any:
    """``value`` with every secret-looking mapping key's value replaced by ``'***'``."""
    if isinstance(value, Mapping):
        return {k: "***" if SECRET.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


class Runs:
    """Runs of the ``tasks.generate`` task, through ``celery`` (any app on the workers' broker)
    and ``client`` (the stream store)."""

    def __init__(self, celery: Celery, client: redis.Redis, settings: Settings,
                 schemas: ParamsSchemas | None = None) -> None:
        self.celery = celery
        self.client = client
        self.settings = settings
        #: Params are checked against these before anything is written or sent (None: only
        #: that they are a mapping; the worker checks the rest).
        self.schemas = schemas

    @classmethod
    def from_config(cls, config: WorkerConfig) -> Runs:
        """A sending-only Celery app and a Redis client for ``config`` (connect on first use)."""
        celery = Celery("runs", set_as_current=False)
        celery.conf.update(celery_settings(config))
        return cls(celery, sync_client(config.streaming), config.streaming, _schemas(config))

    def start(self, generator: str, params: Mapping[str, Any] | None = None, *,
              run_id: str | None = None, soft_time_limit: float | None = None,
              time_limit: float | None = None) -> str:
        """Queue a run of ``generator`` and return its id at once (readers may attach now).

        Params that do not fit raise ``tasks.schemas.ParamsError`` (naming the field) and an
        unknown generator ``UnknownGeneratorError``, before anything is written or sent.
        """
        run_id = validate_run_id(run_id) if run_id else new_run_id()
        params = self._checked(generator, params)
        mark_pending(self.client, run_id, self.settings)
        self.celery.send_task(
            GENERATE, task_id=run_id, shadow=f"{GENERATE}[{generator}]",
            kwargs={"run_id": run_id, "generator": generator, "params": params},
            kwargsrepr=repr({"run_id": run_id, "generator": generator, "params": redact(params)}),
            soft_time_limit=soft_time_limit, time_limit=time_limit,
        )
        return run_id

    def _checked(self, generator: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        if self.schemas is not None:
            return self.schemas.check(generator, params)
        if params is not None and not isinstance(params, Mapping):
            raise ParamsError(f"params must be a mapping (a JSON object), got "
                              f"{type(params).__name__}", "params")
        return dict(params or {})

    def cancel(self, run_id: str, reason: str = "cancelled", *, grace: float | None = None) -> bool:
        """Ask the run to stop; False if it is unknown or has already ended.

        The task stops at its next chunk (within about a second for a generator that yields
        once a second) and ends the run ``cancelled``; a queued run ends when a worker receives
        it. With ``grace``, a run still going after ``grace`` s is stuck: its process is
        terminated and the worker writes the ending once the process's lease lapses.
        """
        if not request_cancel(self.client, run_id, self.settings, reason):
            return False
        self.celery.control.revoke(run_id)  # a queued copy is dropped when a worker gets it
        if grace is not None and not self._wait_ended(run_id, grace):
            self.celery.control.revoke(run_id, terminate=True, signal="SIGKILL")
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
        result = AsyncResult(run_id, app=self.celery)
        return result.state, result.info

    async def astart(self, generator: str, params: Mapping[str, Any] | None = None,
                     **options: Any) -> str:
        return await asyncio.to_thread(self.start, generator, params, **options)

    async def acancel(self, run_id: str, reason: str = "cancelled", *,
                      grace: float | None = None) -> bool:
        return await asyncio.to_thread(self.cancel, run_id, reason, grace=grace)

    async def astatus(self, run_id: str) -> RunStatus:
        return await asyncio.to_thread(self.status, run_id)


def _schemas(config: WorkerConfig) -> ParamsSchemas | None:
    """The params schemas a sending process checks against (see ``WorkerConfig.params_schema``)."""
    if config.params_schema:
        return ParamsSchemas.load(config.params_schema)
    return None if config.generator_modules else ParamsSchemas.load()
