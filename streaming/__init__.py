"""Resumable Server-Sent-Events streams for long Celery tasks, on Redis Streams.

The library half of the project: it never imports Celery, so web processes import it alone.

- ``StreamWriter`` / ``shared_writer()``: the per-process batched writer (producers).
- ``ReaderHub``: the shared, blocking reader of a web process (many readers, few connections).
- ``read_events()``: a blocking reader for threads and command-line tools.
- ``sse_frames()``: SSE text with ``id:`` lines and keepalive pings.
- ``mark_pending()``, ``end_run()``, ``sweep()``, ``list_runs()``, ``run_status()``: run
  control for any process (``streaming.control``): queued runs, stored endings, the run index.
- ``Settings``: every knob, read from the environment once (``STREAMING_CLUSTER`` or a
  ``redis+cluster://`` URL: the store is a Redis Cluster; see ``streaming.cluster``).
- ``TokenSigner``: signed, expiring tokens scoped to one run and to what they allow (read,
  cancel, create); ``streaming.tokens.revoke_tokens`` revokes one run's tokens.

``streaming.web`` (the SSE endpoint for Starlette/FastAPI apps) needs the ``web`` extra and is
not imported here.
"""

from .control import (
    aend_run,
    alist_runs,
    amark_pending,
    arequest_cancel,
    arun_status,
    asweep,
    end_run,
    list_runs,
    mark_pending,
    request_cancel,
    run_status,
    sweep,
)
from .cursor import RunStatus
from .errors import (
    AccessDenied,
    BufferFullError,
    ConfigurationError,
    FencedError,
    InvalidChunk,
    InvalidCursor,
    InvalidInput,
    InvalidRunId,
    ReaderError,
    RequestTooLarge,
    RunBusyError,
    RunClosedError,
    StaleWriterError,
    StoreUnavailableError,
    StreamGoneError,
    StreamingError,
    Unauthenticated,
    Unavailable,
    WriterError,
    WriterStateError,
)
from .hub import HubReader, ReaderHub
from .reader import RunReader, read_events
from .settings import Settings
from .sse import sse_frames
from .tokens import TokenSigner
from .wire import Event, Terminal, encode_frame, parse_cursor, validate_run_id
from .writer import RunWriter, StreamWriter, shared_writer

__all__ = [
    "AccessDenied",
    "BufferFullError",
    "ConfigurationError",
    "Event",
    "FencedError",
    "HubReader",
    "InvalidChunk",
    "InvalidCursor",
    "InvalidInput",
    "InvalidRunId",
    "ReaderError",
    "ReaderHub",
    "RequestTooLarge",
    "RunBusyError",
    "RunClosedError",
    "RunReader",
    "RunStatus",
    "RunWriter",
    "Settings",
    "StaleWriterError",
    "StoreUnavailableError",
    "StreamGoneError",
    "StreamWriter",
    "StreamingError",
    "Terminal",
    "TokenSigner",
    "Unauthenticated",
    "Unavailable",
    "WriterError",
    "WriterStateError",
    "aend_run",
    "alist_runs",
    "amark_pending",
    "arequest_cancel",
    "arun_status",
    "asweep",
    "encode_frame",
    "end_run",
    "list_runs",
    "mark_pending",
    "parse_cursor",
    "read_events",
    "request_cancel",
    "run_status",
    "shared_writer",
    "sse_frames",
    "sweep",
    "validate_run_id",
]
