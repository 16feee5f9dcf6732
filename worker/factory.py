"""The ready-made Celery app of the stream workers, built from a ``WorkerConfig``.

A plain user of the public API: ``streaming.celery.install()`` gives it the worker side
(per-process writers, endings of lost runs, the sweep of overdue runs, progress), and its one
task, ``tasks.generate``, is a ``StreamingTask``.
"""

from __future__ import annotations

from celery import Celery

from streaming.celery import Streaming, StreamingOptions, install
from streaming.client import SyncClient
from streaming.writer import StreamWriter
from tasks import GENERATE

from . import observe
from .config import WorkerConfig, celery_settings

__all__ = ["StreamingCelery", "create_app", "stream_options"]


class StreamingCelery(Celery):
    """A Celery app that carries the worker's configuration, with streaming installed."""

    def __init__(self, config: WorkerConfig, **kwargs: object) -> None:
        include = ["tasks.generate", "tasks.generators", *config.generator_modules]
        super().__init__("worker", include=include, **kwargs)
        self.config = config
        self.conf.update(celery_settings(config))
        # Streaming tasks requeue a task whose process died unless the worker is told not to.
        self.conf.task_annotations = {
            GENERATE: {"reject_on_worker_lost": config.reject_on_worker_lost}}
        self.streaming: Streaming = install(self, config.streaming,
                                            options=stream_options(config))

    @property
    def redis(self) -> SyncClient:
        """For small reads (a run's cancel flag); connects on first use, and again after fork."""
        return self.streaming.redis

    def stream_writer(self, start_timeout: float = 2.0) -> StreamWriter:
        """This process's stream writer, started on first use (after fork, in each child)."""
        return self.streaming.writer(start_timeout)

    def stop_stream_writer(self, timeout: float) -> None:
        """Flush and stop this process's writer, if it started one (at most ``timeout`` s)."""
        self.streaming.stop_writer(timeout)


def stream_options(config: WorkerConfig) -> StreamingOptions:
    """The ``WORKER_*`` settings that streaming tasks and the sweep read."""
    return StreamingOptions(max_attempts=config.max_attempts,
                            progress_interval=config.progress_interval,
                            cancel_check_interval=config.cancel_check_interval,
                            send_tracebacks=config.send_tracebacks,
                            sweep_interval=config.sweep_interval,
                            # The built-in generators' tokens (the openai one) merge.
                            merge_text_deltas=True)


def create_app(config: WorkerConfig, **kwargs: object) -> StreamingCelery:
    """A configured app whose workers stream ``tasks.generate`` runs (with metrics, health
    and run-tagged logs: ``worker.observe``)."""
    app = StreamingCelery(config, **kwargs)
    observe.connect(app)
    return app
