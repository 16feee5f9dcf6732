"""What ``install()`` attaches to a Celery app: its stream settings, writer and store client.

Nothing here touches the app's configuration or its other tasks: the worker side is one
bootstep of this app's own (``app.steps['worker']``), and streaming tasks carry their own
options (``StreamingTask``).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from celery import Celery

from ..client import SyncClient, sync_client
from ..control import mark_pending
from ..errors import ConfigurationError
from ..settings import Settings
from ..writer import StreamWriter, shared_writer

__all__ = ["Streaming", "StreamingOptions", "install", "streaming_of"]

_installed: weakref.WeakKeyDictionary[Any, Streaming] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@dataclass(frozen=True)
class StreamingOptions:
    """How streaming tasks of one app behave; a task may override each (``max_attempts=...``
    in its decorator). Durations are seconds."""

    #: Claims of one run (first run, retries, redeliveries) before it is ended ``lost``: a
    #: task that kills its worker every time is not redelivered forever.
    max_attempts: int = 3
    #: Least time between two progress reports (the ``STREAMING`` state Flower shows).
    progress_interval: float = 1.0
    #: Least time between two reads of a run's cancel flag, besides the flag every flush
    #: brings back.
    cancel_check_interval: float = 0.2
    #: Put a failing task's traceback into the run's error ending (clients see it).
    send_tracebacks: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("progress_interval", "cancel_check_interval"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive, got {getattr(self, name)}")


class Streaming:
    """The streaming side of one Celery app (``install()`` makes it; ``streaming_of()`` finds
    it). Connects to nothing until first use, and again in each forked child."""

    def __init__(self, app: Celery, settings: Settings, options: StreamingOptions) -> None:
        self.app = app
        self.settings = settings
        self.options = options
        self._client: tuple[int, SyncClient] | None = None
        self._writer: StreamWriter | None = None
        self._own: tuple[int, StreamWriter] | None = None

    def configure(self, settings: Settings) -> None:
        """Stream to ``settings``' store from now on (tests point an app at a private store)."""
        self.settings = settings
        self._client = None

    @property
    def redis(self) -> SyncClient:
        """A client of the stream store for small commands (cancel flags, queued runs)."""
        if self._client is None or self._client[0] != os.getpid():
            self._client = (os.getpid(), sync_client(self.settings))
        return self._client[1]

    def writer(self, start_timeout: float = 2.0) -> StreamWriter:
        """This process's stream writer, started on first use (after fork, in each child);
        starting waits at most ``start_timeout`` s for its thread (it does no I/O).

        Apps with the same settings share the process's writer (``shared_writer()``); an app
        streaming to another store gets one of its own.
        """
        writer = shared_writer(self.settings, start_timeout=start_timeout)
        if writer.settings != self.settings:
            writer = self._own_writer(start_timeout)
        self._writer = writer
        return writer

    def _own_writer(self, start_timeout: float) -> StreamWriter:
        with _lock:
            own = self._own
            if own is None or own[0] != os.getpid() or not own[1].running:
                own = (os.getpid(), StreamWriter(self.settings).start(start_timeout))
                self._own = own
            return own[1]

    def stop_writer(self, timeout: float) -> None:
        """Flush and stop this process's writer if this app started it (at most ``timeout``)."""
        if self._writer is not None:
            self._writer.stop(timeout)  # one inherited from the parent process is left alone

    def mark_pending(self, run_id: str) -> None:
        """Record a queued run, so readers wait for it instead of answering ``not_found``."""
        mark_pending(self.redis, run_id, self.settings)


def install(app: Celery, settings: Settings | None = None, *,
            options: StreamingOptions | None = None) -> Streaming:
    """Add the streaming worker side to ``app`` and return it (again: the same object).

    ``settings`` default to ``Settings.from_env()`` (``REDIS_URL``, ``STREAMING_*``). The
    worker side is a bootstep of this app only: each worker process gets its writer, the
    main process writes the endings of runs whose process died, was killed or revoked. Other
    apps in the process and this app's other tasks are left as they are.
    """
    from .lifecycle import WorkerStep  # the bootstep needs this module's Streaming

    with _lock:
        known = _installed.get(app)
        if known is not None:
            return known
        streaming = Streaming(app, settings or Settings.from_env(),
                              options or StreamingOptions())
        _installed[app] = streaming
        app.steps["worker"].add(WorkerStep)
        return streaming


def streaming_of(app: Celery) -> Streaming:
    """The streaming side ``install()`` added to ``app``."""
    try:
        return _installed[app]
    except KeyError:
        raise ConfigurationError(
            f"streaming is not installed on the Celery app {app.main!r}: call "
            "streaming.celery.install(app) where the app is made (e.g. proj/celery.py)"
        ) from None
