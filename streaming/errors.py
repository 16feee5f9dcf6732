"""Every exception `streaming` raises, under one root.

    StreamingError
    ├── InvalidInput (also a ValueError): bad input, refused before any Redis I/O
    │   ├── InvalidRunId
    │   ├── InvalidCursor
    │   ├── InvalidChunk
    │   │   └── UnsupportedChunk: a task yielded a value that has no SSE framing
    │   └── RequestTooLarge: a request body past the web tier's limit (HTTP 413)
    ├── Unavailable: the stream store did not answer a web request in time, or failed it
    │   (HTTP 503 with Retry-After)
    ├── ConfigurationError: a setting or environment variable that cannot be used
    ├── WriterError
    │   ├── WriterStateError: the writer is not started, is closed, or was created before fork()
    │   ├── BufferFullError: the bounded buffer stayed full for longer than its timeout
    │   ├── StoreUnavailableError: Redis has been unreachable for longer than the deadline
    │   ├── RunClosedError: a write after the run's terminal entry
    │   └── FencedError: another writer owns the run
    │       ├── RunBusyError: claimed while another live writer holds the run
    │       └── StaleWriterError: this writer lost the run to a newer one
    ├── ReaderError
    ├── AccessDenied: the caller may not read this run (HTTP 403), e.g. a token for another run
    │   └── Unauthenticated: no credentials, or forged, malformed or expired ones (HTTP 401)
    ├── StreamGoneError (a WriterError and a ReaderError): the run's keys vanished under a
    │   writer or reader (expired, deleted, or Redis restarted empty)
    └── RunCancelled: raised by a streaming task's run handle once a cancel was requested

Library errors (redis-py's) are wrapped with ``raise ... from exc`` at the boundary where
they stop being retried.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "BufferFullError",
    "ConfigurationError",
    "FencedError",
    "InvalidChunk",
    "InvalidCursor",
    "InvalidInput",
    "InvalidRunId",
    "ReaderError",
    "RequestTooLarge",
    "RunBusyError",
    "RunCancelled",
    "RunClosedError",
    "StaleWriterError",
    "StoreUnavailableError",
    "StreamGoneError",
    "StreamingError",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedChunk",
    "WriterError",
    "WriterStateError",
]


class StreamingError(Exception):
    """Root of every exception raised by `streaming`."""


class InvalidInput(StreamingError, ValueError):
    """Input refused before it reached Redis."""


class InvalidRunId(InvalidInput):
    """A run id with characters or a length that is not allowed."""


class InvalidCursor(InvalidInput):
    """A cursor (``starting_after`` / ``Last-Event-ID``) that is not a usable sequence number."""


class InvalidChunk(InvalidInput):
    """Chunk data that is not text, or is larger than the configured limit."""


class UnsupportedChunk(InvalidChunk):
    """A task yielded a value that is not text, JSON (a dict or list) or a named event."""


class RequestTooLarge(InvalidInput):
    """A request body larger than the configured limit."""


class Unavailable(StreamingError):
    """The stream store did not answer within the web tier's bound, or failed the request.

    ``retry_after`` is the seconds a client should wait before trying again.
    """

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigurationError(StreamingError):
    """A setting that cannot be used."""


class WriterError(StreamingError):
    """A write could not be accepted or delivered."""


class WriterStateError(WriterError):
    """The writer is not running here: not started, already closed, or inherited across fork()."""


class BufferFullError(WriterError):
    """The writer's bounded buffer stayed full for longer than ``buffer_timeout``."""


class StoreUnavailableError(WriterError):
    """Redis stayed unreachable for longer than ``unavailable_timeout``.

    Chunks accepted before the outage stay buffered and are delivered when Redis returns.
    """


class RunClosedError(WriterError):
    """The run already has its terminal entry; nothing more can be written to it."""


class FencedError(WriterError):
    """Another writer owns the run; this one must not write to it."""


class RunBusyError(FencedError):
    """Another writer holds a live lease on the run."""


class StaleWriterError(FencedError):
    """This writer's lease lapsed and a newer writer took the run over."""


class ReaderError(StreamingError):
    """A stream could not be read."""


class AccessDenied(StreamingError):
    """The caller may not read this run. Decided before any Redis I/O, so it never tells
    whether the run exists."""


class Unauthenticated(AccessDenied):
    """No credentials, or credentials that are forged, malformed or expired."""


class StreamGoneError(ReaderError, WriterError):
    """The stream disappeared while being read (expired, deleted, or Redis restarted empty)."""


class RunCancelled(StreamingError):
    """A cancel was requested for the run a task is writing; the task stops and the run ends
    ``cancelled`` (raised by ``streaming.celery.RunHandle.send``)."""
