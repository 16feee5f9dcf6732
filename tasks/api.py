"""Start, cancel and look up runs from any process: a web process needs only this module.

It imports no task or generator code: runs are sent by task name (``send_task``) to the queue
the workers consume, so the web tier needs neither the generators nor their dependencies.

    runs = Runs.from_config(WorkerConfig.from_env())
    run_id = runs.start("demo", {"text": "hello"})   # returns before the task starts
    runs.cancel(run_id, "user pressed stop", grace=5.0)

The ready-made app's tasks are ordinary users of ``streaming.celery``: ``Runs`` here is its
``Runs`` with the generator and params as the task's arguments.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Mapping
from typing import Any

from celery import Celery

from streaming.celery import Runs as TaskRuns
from streaming.client import SyncClient, sync_client
from streaming.settings import Settings
from streaming.wire import validate_run_id
from worker.config import WorkerConfig, celery_settings

from . import GENERATE
from .schemas import ParamsError, ParamsSchemas

__all__ = ["Runs", "new_run_id", "redact"]
#: Params whose names match this are shown as ``'***'`` in Flower and logs.
SECRET = re.compile(r"key|token|secret|passw|passphrase|pwd|auth|credential|cookie|session"
                    r"|bearer|jwt", re.I)


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


class Runs(TaskRuns):
    """Runs of the ``tasks.generate`` task, through ``celery`` (any app on the workers' broker)
    and ``client`` (the stream store): ``streaming.celery.Runs`` with the generator's name and
    params as the task's arguments. Cancel, status and task state are the base class's."""

    def __init__(self, celery: Celery, client: SyncClient, settings: Settings,
                 schemas: ParamsSchemas | None = None) -> None:
        super().__init__(celery, settings, client=client)
        #: Params are checked against these before anything is written or sent (None: only
        #: that they are a mapping; the worker checks the rest).
        self.schemas = schemas

    @property
    def celery(self) -> Celery:
        return self.app

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
        kwargs = {"run_id": run_id, "generator": generator, "params": params}
        return self.apply_async(
            GENERATE, kwargs=kwargs, run_id=run_id, shadow=f"{GENERATE}[{generator}]",
            kwargsrepr=repr(kwargs | {"params": redact(params)}),
            soft_time_limit=soft_time_limit, time_limit=time_limit,
        )

    def _checked(self, generator: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        if self.schemas is not None:
            return self.schemas.check(generator, params)
        if params is not None and not isinstance(params, Mapping):
            raise ParamsError(f"params must be a mapping (a JSON object), got "
                              f"{type(params).__name__}", "params")
        return dict(params or {})

    async def astart(self, generator: str, params: Mapping[str, Any] | None = None,
                     **options: Any) -> str:
        return await asyncio.to_thread(self.start, generator, params, **options)


def _schemas(config: WorkerConfig) -> ParamsSchemas | None:
    """The params schemas a sending process checks against (see ``WorkerConfig.params_schema``)."""
    if config.params_schema:
        return ParamsSchemas.load(config.params_schema)
    return None if config.generator_modules else ParamsSchemas.load()
