"""The worker's consumer: Celery's, without the second close of a lost Redis broker connection.

Celery 5.7 closes a lost broker connection twice: ``collect()``, which also lets go of the
connection's transport, then ``close()``. With the Redis broker, when the server went away
the first close of the connection's channel stops at its first step (reading the last
``BRPOP`` reply), so the channel stays open, with the messages of the tasks still running. The
second close then drops the channel's connection pool and tries to put those messages back in
their queue through the detached transport. kombu raises ``AttributeError: 'NoneType' object
has no attribute 'hostname'``, which Celery takes for an unrecoverable error, and so does
every later ack of those tasks: the worker shuts down whenever the broker restarts while a
task runs (``acks_late``, as streaming tasks are). Celery 5.6 made no second close.

This consumer skips that second close on the Redis transport, as 5.6 did. The channel keeps
its pool, and a running task is acknowledged through it when it ends, once the server is back
(if the server is still away, Celery logs that the ack failed and the broker delivers the
message again after ``visibility_timeout``; the run, already ended, writes nothing). The
streaming bootstep (``.lifecycle``) gives the worker this class unless the app names a
consumer of its own (``worker_consumer``), which can subclass this one to keep the fix.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport.redis import Transport as RedisTransport

__all__ = ["Consumer"]


class Consumer(CeleryConsumer):  # type: ignore[misc]  # Celery has no type hints
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        if connection is not None and isinstance(connection.transport, RedisTransport):
            # On this connection object only: Celery drops it once this returns, and
            # reconnects with a new one.
            connection.close = connection.release = _skip
        super().on_connection_error_after_connected(exc)


def _skip(*_: Any) -> None:
    pass
