"""The Redis wire format, shared with the seed (Letta's stream manager). One place, documented.

One Redis stream per run, key ``sse:run:<run_id>``. Each entry has the fields

- ``seq_id``: the chunk's sequence number as text; 1 for a run's first chunk, +1 for each next;
- ``data``: one complete SSE frame, e.g. ``data: {"text": "hi"}\\n\\n`` (no ``id:`` line: readers
  add ``id: <seq_id>`` when they serve it);
- ``timestamp``: milliseconds since the epoch when the chunk was written;
- ``complete``: ``"true"`` on the run's one terminal entry, absent elsewhere.

Terminal frames: ``data: [DONE]`` (done), ``event: error`` with ``{"error": {"kind", "type",
"message"}}`` (kind ``error``, ``timeout`` or ``lost``; the seed writes no kind, read as
``error``) and ``event: cancelled``.

This project adds, without changing what the seed reads:

- entry ids ``0-<seq_id>``, so a cursor maps to a stream position (``XREAD`` from ``0-N`` returns
  exactly the chunks after N) and a replayed write is refused by Redis itself. Streams written by
  the seed (time-based ids) are read by filtering on ``seq_id``.
- ``sse:run:<run_id>:meta``, a hash: ``owner`` (the writer's token), ``acked`` (how many of the
  owner's chunks are stored, for exactly-once retries), ``seq`` (last seq id), ``attempt``
  (claims so far), ``end`` (the terminal kind, once written), ``chunks`` (output chunks stored
  by the attempts the current one continues: ``restarted`` events and the ending not counted),
  and server times in ms: ``queued`` (when it was queued) and ``expires`` (when the writer's
  lease expires or expired);
- ``sse:run:<run_id>:lease``, the owner's token with a short expiry that the live writer
  refreshes: no lease and no terminal entry means the producer is gone;
- ``sse:runs``, the run index (``RUN_INDEX``).

Endings the project decides (a queued run never started, a producer lost) are stored like
any other: the ``END`` script (``streaming.scripts``) appends the terminal entry.

With ``cluster_hash_tags`` the run id is written as ``{<run_id>}`` in all three keys so they
share one Redis Cluster slot. In a cluster, writers also publish each batch's last seq id on the
run's shard channel ``sse:run:{<run_id>}:notify`` (same slot), which readers subscribe to.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import InvalidChunk, InvalidCursor, InvalidRunId

__all__ = [
    "DONE_FRAME",
    "MAX_SEQ",
    "Event",
    "RunKeys",
    "Terminal",
    "encode_frame",
    "error_frame",
    "parse_cursor",
    "parse_frame",
    "terminal_frame",
    "validate_run_id",
]

KEY_PREFIX = "sse:run:"
#: The run index: a sorted set of the run ids of unfinished runs (score: when the run was
#: queued or first claimed, server time in ms), for ``control.sweep`` and ``control.list_runs``.
#: One key for every run, so in a cluster it lives in its own slot: it is updated by separate,
#: best-effort commands, never inside a run's scripts.
RUN_INDEX = "sse:runs"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
#: Largest cursor accepted: 2**53 - 1, the largest integer a JSON client reads exactly.
MAX_SEQ = 2**53 - 1
DONE_FRAME = "data: [DONE]\n\n"
#: A run's shard channel is its stream key and this (``RunKeys.notify``).
NOTIFY_SUFFIX = ":notify"
#: A single server's doorbell channel: after each flush a writer publishes there the stream
#: keys it wrote to, space-separated, and ``END`` the key of a run it ended
#: (``streaming.doorbell``).
DOORBELL = "sse:doorbell"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
#: Decimal digits, zero padding allowed (the value is bounded by ``MAX_SEQ`` afterwards).
_CURSOR_PATTERN = re.compile(r"[0-9]{1,32}")


class Terminal(StrEnum):
    """How a run ended, as a reader sees it."""

    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    #: The producer died (worker lost, lease lapsed) without writing an ending.
    LOST = "lost"
    #: No such run: never started, or expired.
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a run as readers see it.

    ``seq`` is the chunk's sequence number (``None`` for events the reader makes up: gaps and
    endings it detects itself); ``event`` the SSE event name (``message`` when the frame has
    none); ``data`` the frame's data lines joined by ``\\n``; ``frame`` the SSE frame as stored
    (no ``id:`` line); ``terminal`` is set on a run's last event; ``stored_ms`` the entry's
    ``timestamp`` (0 for made-up events), for the delivery-lag metric.
    """

    seq: int | None
    event: str
    data: str
    frame: str
    terminal: Terminal | None = None
    stored_ms: int = field(default=0, compare=False)

    def sse(self) -> str:
        """The event as an SSE frame, with ``id: <seq>`` when it has one."""
        return self.frame if self.seq is None else f"id: {self.seq}\n{self.frame}"


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The Redis keys of one run."""

    run_id: str
    stream: str
    meta: str
    lease: str

    @property
    def notify(self) -> str:
        """The run's shard channel (cluster mode): each stored batch's last seq id."""
        return self.stream + NOTIFY_SUFFIX

    @classmethod
    def for_run(cls, run_id: str, *, hash_tag: bool = False) -> RunKeys:
        validate_run_id(run_id)
        base = KEY_PREFIX + (f"{{{run_id}}}" if hash_tag else run_id)
        return cls(run_id, base, base + ":meta", base + ":lease")


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is 1-128 characters of ``A-Z a-z 0-9 _ . -``, else raise.

    ``.`` and ``..`` are refused: in a URL path they are not names but steps.
    """
    if not isinstance(run_id, str):
        raise InvalidRunId(f"run id must be a string, got {type(run_id).__name__}")
    if not RUN_ID_PATTERN.fullmatch(run_id) or run_id in (".", ".."):
        shown = run_id if len(run_id) <= 40 else run_id[:40] + "..."
        raise InvalidRunId(
            f"run id {shown!r} must be 1-128 characters of letters, digits, '_', '.' or '-'"
        )
    return run_id


def parse_cursor(value: object) -> int:
    """A resume cursor (``starting_after``, ``Last-Event-ID``) as a sequence number.

    ``None`` means "from the start" (0). Accepted: an integer or decimal digits (zero padding
    allowed, at most 32 of them), 0..2**53-1.
    """
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidCursor(f"cursor must be a non-negative integer, got {type(value).__name__}")
    if isinstance(value, str):
        if not _CURSOR_PATTERN.fullmatch(value):
            shown = value if len(value) <= 20 else value[:20] + "..."
            raise InvalidCursor(f"cursor {shown!r} is not a non-negative integer")
        value = int(value)
    if not 0 <= value <= MAX_SEQ:
        raise InvalidCursor(f"cursor {value} is outside 0..{MAX_SEQ}")
    return value


def encode_frame(data: str, event: str | None = None, *, limit: int | None = None) -> str:
    """One SSE frame: an optional ``event:`` line, one ``data:`` line per line of ``data``."""
    if not isinstance(data, str):
        raise InvalidChunk(f"chunk data must be str, got {type(data).__name__}")
    head = ""
    if event is not None:
        if not event or _LINE_BREAK.search(event) or ":" in event:
            raise InvalidChunk(f"event name {event!r} must be one line without ':'")
        head = f"event: {event}\n"
    if "\n" in data or "\r" in data:
        frame = head + "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data)) + "\n"
    else:
        frame = f"{head}data: {data}\n\n"
    if limit is not None:
        check_frame_size(frame, limit)
    return frame


def check_frame_size(frame: str, limit: int) -> None:
    """Raise ``InvalidChunk`` if ``frame`` is not valid UTF-8 text of at most ``limit`` bytes."""
    if frame.isascii():
        size = len(frame)
    else:
        try:
            size = len(frame.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidChunk(f"chunk is not valid UTF-8 text: {exc.reason}") from exc
    if size > limit:
        raise InvalidChunk(f"chunk of {size} bytes exceeds the {limit}-byte limit")


def parse_frame(frame: str) -> tuple[str, str]:
    """``(event name, data)`` of a stored SSE frame; the event name defaults to ``message``."""
    event = "message"
    data: list[str] = []
    for line in _LINE_BREAK.split(frame):
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    return event, "\n".join(data)


MAX_MESSAGE = 4000  # characters of an ending's message; the rest is cut


def error_frame(message: str, *, kind: str = "error", type: str | None = None) -> str:
    """The terminal frame of a failed run (``kind``: error, timeout or lost)."""
    body: dict[str, Any] = {"kind": kind, "message": message[:MAX_MESSAGE]}
    if type is not None:
        body["type"] = type
    return encode_frame(json.dumps({"error": body}), "error")


def terminal_frame(kind: Terminal, message: str = "", *, type: str | None = None) -> str:
    """The stored frame that ends a run in ``kind``."""
    if kind is Terminal.DONE:
        return DONE_FRAME
    if kind is Terminal.CANCELLED:
        reason = message[:MAX_MESSAGE]
        return encode_frame(json.dumps({"cancelled": {"reason": reason}}), "cancelled")
    return error_frame(message, kind=kind.value, type=type)


def terminal_of(event: str, data: str) -> Terminal:
    """The terminal kind of a run's last frame (the seed's included)."""
    if event == "cancelled":
        return Terminal.CANCELLED
    if event != "error":
        return Terminal.DONE
    try:
        kind = json.loads(data)["error"]["kind"]
        return Terminal(kind)
    except (ValueError, KeyError, TypeError):
        return Terminal.ERROR


def made_event(kind: Terminal | str, payload: dict[str, Any], *, terminal: bool = True) -> Event:
    """An event the reader makes up (not stored): a gap, or an ending it detected itself."""
    name = "error" if kind in (Terminal.LOST, Terminal.NOT_FOUND, Terminal.TIMEOUT) else str(kind)
    data = json.dumps(payload)
    return Event(None, name, data, encode_frame(data, name),
                 Terminal(kind) if terminal else None)


def entry_event(fields: dict[str, str]) -> Event:
    """The event of one stream entry.

    Parsed once for all the readers a batch is handed to (they share the reply's strings, so
    the cache finds them by identity): ``Event`` is immutable. Only small frames are cached, so
    the cache stays under ``_PARSED * _PARSED_FRAME`` characters.
    """
    frame = fields.get("data", "")
    complete = fields.get("complete") == "true"
    timestamp = fields.get("timestamp")
    if len(frame) > _PARSED_FRAME:
        return _parse_entry(fields["seq_id"], frame, complete, timestamp)
    return _parsed_entry(fields["seq_id"], frame, complete, timestamp)


def _parse_entry(seq_id: str, frame: str, complete: bool, timestamp: str | None) -> Event:
    event, data = parse_frame(frame)
    terminal = terminal_of(event, data) if complete else None
    return Event(int(seq_id), event, data, frame, terminal, _millis(timestamp))


def _millis(raw: str | None) -> int:
    try:
        return int(raw or 0)
    except ValueError:  # the seed's or someone's odd timestamp: no lag to tell
        return 0


_PARSED, _PARSED_FRAME = 1024, 4096
_parsed_entry = functools.lru_cache(maxsize=_PARSED)(_parse_entry)
