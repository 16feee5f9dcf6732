"""The worker's configuration: one frozen dataclass read from the environment once, at the edge.

``REDIS_URL`` (the stream store) is required; ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND``
default to it, except when the store is a Redis Cluster (``STREAMING_CLUSTER=true`` or a
``redis+cluster://`` URL): Celery cannot use one, so both must then be given. ``WORKER_*``
variables tune the Celery side, ``OPENAI_*`` the built-in chat-completions generator, and
``STREAMING_*`` the stream writer (``streaming.settings``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streaming.errors import ConfigurationError
from streaming.settings import Settings

__all__ = ["FLOWER_TASKS_COLUMNS", "WorkerConfig", "celery_settings"]

#: Flower's tasks list for stream runs (``celery -A worker flower --tasks_columns=...``, as the
#: demo and docker-compose.yml start it): the Result column shows a running run's progress
#: (``12/49 chunks, last_seq 12, attempt 1``) and a finished one's summary.
FLOWER_TASKS_COLUMNS = "name,uuid,state,result,received,started,runtime,worker"

#: Environment variable of each ``WorkerConfig`` field (besides ``streaming``).
ENVIRONMENT = {
    "broker_url": "CELERY_BROKER_URL",
    "result_backend": "CELERY_RESULT_BACKEND",
    "queue": "WORKER_QUEUE",
    "soft_time_limit": "WORKER_SOFT_TIME_LIMIT",
    "time_limit": "WORKER_TIME_LIMIT",
    "visibility_timeout": "WORKER_VISIBILITY_TIMEOUT",
    "reject_on_worker_lost": "WORKER_REJECT_ON_WORKER_LOST",
    "max_attempts": "WORKER_MAX_ATTEMPTS",
    "max_retries": "WORKER_MAX_RETRIES",
    "progress_interval": "WORKER_PROGRESS_INTERVAL",
    "cancel_check_interval": "WORKER_CANCEL_CHECK_INTERVAL",
    "sweep_interval": "WORKER_SWEEP_INTERVAL",
    "store_retries": "WORKER_STORE_RETRIES",
    "send_tracebacks": "WORKER_SEND_TRACEBACKS",
    "generator_modules": "WORKER_GENERATOR_MODULES",
    "params_schema": "WORKER_PARAMS_SCHEMA",
    "openai_base_url": "OPENAI_BASE_URL",
    "openai_model": "OPENAI_MODEL",
    "openai_api_key": "OPENAI_API_KEY",
}


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the Celery app and its tasks need; durations are seconds."""

    #: The stream writer's settings; its ``redis_url`` is ``REDIS_URL``.
    streaming: Settings
    broker_url: str
    result_backend: str
    #: The queue runs are sent to and the worker consumes.
    queue: str = "streaming"
    #: A run past this raises SoftTimeLimitExceeded in the task: it ends with ``timeout``.
    soft_time_limit: float = 1800.0
    #: A run past this is killed by the worker; the main process writes its ``timeout`` ending.
    time_limit: float = 1860.0
    #: Redis broker only: an unacknowledged task is delivered again after this long.
    visibility_timeout: int = 7200
    #: Requeue a task whose worker process died (its next attempt continues the run).
    reject_on_worker_lost: bool = True
    #: Claims of one run (first run, retries, redeliveries) before it is ended as ``lost``:
    #: a task that kills its worker every time is not redelivered forever.
    max_attempts: int = 3
    #: Retries of a generator's transient errors (those its registration names).
    max_retries: int = 2
    #: Least time between two progress reports (Flower's STREAMING state).
    progress_interval: float = 1.0
    #: Least time between two reads of a run's cancel flag, besides the flag every flush
    #: brings back.
    cancel_check_interval: float = 0.2
    #: How often the worker's main process sweeps the run index: it writes the endings of
    #: overdue runs (queued too long, or claimed and abandoned) and makes their Celery state
    #: follow every ending it finds.
    sweep_interval: float = 5.0
    #: Retries of one result-backend write (a progress report, a task's result) while the
    #: store is unreachable; each try waits at most ``STREAMING_SOCKET_TIMEOUT``. Bounds how
    #: long an outage can hold a task, also when the store is the broker and result backend.
    store_retries: int = 1
    #: Put the traceback of a generator's error into the run's error message (clients see it).
    send_tracebacks: bool = False
    #: Extra modules, comma separated, whose generators are registered at worker start.
    generator_modules: tuple[str, ...] = ()
    #: JSON Schema file of the generators' params (``python -m tasks.schemas``): processes
    #: that start runs check params against it before enqueueing. Default: the built-in
    #: generators' file, unless ``generator_modules`` adds generators it does not know.
    params_schema: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.time_limit <= self.soft_time_limit:
            raise ConfigurationError(
                f"WORKER_TIME_LIMIT ({self.time_limit}) must be greater than "
                f"WORKER_SOFT_TIME_LIMIT ({self.soft_time_limit})"
            )
        if self.max_attempts < 1 or self.max_retries < 0:
            raise ConfigurationError("WORKER_MAX_ATTEMPTS must be >= 1, WORKER_MAX_RETRIES >= 0")
        if self.sweep_interval <= 0 or self.store_retries < 0:
            raise ConfigurationError("WORKER_SWEEP_INTERVAL must be > 0, WORKER_STORE_RETRIES >= 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> WorkerConfig:
        """Read the configuration from ``environ`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ
        redis_url = env.get("REDIS_URL", "")
        if not redis_url and "streaming" not in overrides:
            raise ConfigurationError(
                "REDIS_URL is not set: the worker needs the Redis server that stores the streams "
                "(for example REDIS_URL=redis://localhost:6379/0)"
            )
        values: dict[str, Any] = {"broker_url": redis_url, "result_backend": redis_url}
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        for name, variable in ENVIRONMENT.items():
            if env.get(variable):
                values[name] = _parse(variable, env[variable], types[name])
        values.update(overrides)
        values.setdefault("streaming", Settings.from_env(env))
        _check_cluster_store(values)
        return cls(**values)


def _check_cluster_store(values: dict[str, Any]) -> None:
    """A cluster stream store cannot be Celery's broker or result backend too."""
    store: Settings = values["streaming"]
    if not store.cluster:
        return
    for name in ("broker_url", "result_backend"):
        if values[name] in ("", store.redis_url):
            raise ConfigurationError(
                f"{ENVIRONMENT[name]} is not set: the stream store is a Redis Cluster, which "
                "Celery cannot use; name a separate broker and result backend (a plain Redis "
                "server or RabbitMQ)"
            )


def _parse(variable: str, raw: str, kind: str) -> Any:
    try:
        if kind == "bool":
            return _parse_bool(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{variable}={raw!r} is not a valid {kind}") from exc
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _parse_bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def celery_settings(config: WorkerConfig) -> dict[str, Any]:
    """The Celery settings of the worker and of every process that sends runs to it."""
    return _task_settings(config) | _bounded_store_settings(config)


def _bounded_store_settings(config: WorkerConfig) -> dict[str, Any]:
    """Bounds on every Redis call Celery makes for a task, so that an outage of a store that
    is also the broker or result backend cannot hold a task longer than its own deadline
    (``STREAMING_UNAVAILABLE_TIMEOUT``): Celery's defaults wait 120 s per socket read and
    retry a result write 20 times."""
    timeout = config.streaming.socket_timeout
    broker = {"visibility_timeout": config.visibility_timeout}
    if config.broker_url.startswith(("redis://", "rediss://", "unix://")):
        broker |= {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return {
        "broker_transport_options": broker,
        "redis_socket_timeout": timeout,
        "redis_socket_connect_timeout": timeout,
        "redis_retry_on_timeout": False,
        "result_backend_always_retry": False,
        "result_backend_transport_options": {"retry_policy": {
            "max_retries": config.store_retries, "interval_start": 0, "interval_step": 0.5,
            "interval_max": 1}},
    }


def _task_settings(config: WorkerConfig) -> dict[str, Any]:
    return {
        "broker_url": config.broker_url,
        "result_backend": config.result_backend,
        "task_default_queue": config.queue,
        # A task is acknowledged when it ends, not when it starts: if its worker process dies
        # the broker still has the message, and reject_on_worker_lost requeues it at once so
        # the next attempt continues the run (readers see a `restarted` event).
        "task_acks_late": True,
        "task_reject_on_worker_lost": config.reject_on_worker_lost,
        # One message per idle process: a run that takes minutes must not sit prefetched
        # behind another while a sibling process is free.
        "worker_prefetch_multiplier": 1,
        # Redis broker (``broker_transport_options``, below): a task unacknowledged for
        # ``visibility_timeout`` is delivered again. Keep it above the hard time limit; a copy
        # delivered while the first is alive finds the run busy and ends quietly (fencing),
        # one delivered after a crash continues the run, one delivered after the run ended
        # (its queue deadline passed) finds it ended and writes nothing.
        "task_soft_time_limit": config.soft_time_limit,
        "task_time_limit": config.time_limit,
        # Flower sees every task from the moment it is sent, and its progress while it runs.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
    }
