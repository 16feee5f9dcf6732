"""The Celery app of the stream workers, built from a ``WorkerConfig``."""

from __future__ import annotations

from celery import Celery

from streaming.client import SyncClient, sync_client
from streaming.writer import StreamWriter, shared_writer

from . import endings, lifecycle, sweeper
from .config import WorkerConfig, celery_settings

__all__ = ["StreamingCelery", "create_app"]


class StreamingCelery(Celery):
    """A Celery app that carries the worker's configuration and the process's stream writer."""

    def __init__(self, config: WorkerConfig, **kwargs: object) -> None:
        include = ["tasks.generate", "tasks.generators", *config.generator_modules]
        super().__init__("worker", include=include, **kwargs)
        self.config = config
        self.conf.update(celery_settings(config))
        self._redis: SyncClient | None = None
        self._writer: StreamWriter | None = None

    @property
    def redis(self) -> SyncClient:
        """For small reads (a run's cancel flag); connects on first use, and again after fork.

        Made on first use: a cluster client discovers its nodes as soon as it is created, and
        building the app (``celery -A worker``) must not need the store to be up.
        """
        if self._redis is None:
            self._redis = sync_client(self.config.streaming)
        return self._redis

    def stream_writer(self, start_timeout: float = 2.0) -> StreamWriter:
        """This process's stream writer, started on first use (after fork, in each child);
        starting waits at most ``start_timeout`` s for its thread (it does no I/O)."""
        self._writer = shared_writer(self.config.streaming, start_timeout=start_timeout)
        return self._writer

    def stop_stream_writer(self, timeout: float) -> None:
        """Flush and stop this process's writer, if it started one (at most ``timeout`` s)."""
        if self._writer is not None:
            self._writer.stop(timeout)  # a writer inherited from the parent is left alone


def create_app(config: WorkerConfig, **kwargs: object) -> StreamingCelery:
    """A configured app whose worker starts and stops stream writers, ends lost runs and
    sweeps the run index (see ``worker.sweeper``)."""
    app = StreamingCelery(config, **kwargs)
    lifecycle.connect(app)
    endings.connect(app)
    sweeper.connect(app)
    return app
