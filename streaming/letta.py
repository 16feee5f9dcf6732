"""Letta's stream protocol: a run served the way Letta's server serves a background run.

The seed's resume route (``POST /runs/{run_id}/stream``, mounted under ``/v1``) answers in this
protocol, so Letta's SDKs (``letta_client``'s ``runs.messages.stream(run_id,
starting_after=N)``) read our runs unmodified. Their decoder turns every SSE frame with data into
a JSON message, skips named events other than ``error`` and raises on ``event: error``. So:

- every frame carries ``data:`` with one JSON object; no ``retry:`` line, no comment pings;
  with ``include_pings`` a quiet stream gets Letta's ping message
  (``{"message_type": "ping", "id", "date", "run_id"}``, not stored, no ``id:``) instead;
- a stored Letta message (a JSON object with ``message_type``) is served as stored, its
  ``"seq_id": null`` / ``"run_id": null`` placeholders filled in as the seed's reader fills them
  (the seq id is the cursor a client resumes from with ``starting_after``);
- any other chunk becomes an ``assistant_message`` whose ``content`` is the chunk's text (the
  ``text`` field of a JSON object, else the data as it is), the object's fields kept beside it;
- a named event (``gap``, ``restarted``, a generator's own) becomes a message whose
  ``message_type`` is the event's name, its JSON fields spread into it. A ``restarted`` message
  with ``"resume": false`` tells the client to drop the run's earlier output (the client rule);
- endings are Letta's: ``done`` is ``stop_reason: end_turn`` then ``[DONE]``; ``cancelled`` is
  ``stop_reason: cancelled`` then ``[DONE]`` (the SDK ends without an error); ``error``,
  ``timeout`` and ``lost`` are ``stop_reason: error`` then ``event: error`` with an
  ``error_message`` (``error_type`` the ending's kind: the SDK raises ``APIStatusError``
  carrying it) then ``[DONE]``. A stop reason the run stored itself is not repeated.

Stored frames keep their ``id: <seq>`` line, which Letta's decoder reads and ignores. A run that
does not exist gets 404, as from Letta's server. ``LettaEncoder`` is the protocol;
``letta_response`` the HTTP response ``streaming.web`` serves it with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError
from starlette.responses import JSONResponse, Response

from .hub import HubReader
from .responses import StreamResponse
from .sse import sse_frames
from .wire import DONE_FRAME, Event, Terminal, encode_frame, parse_frame

__all__ = ["LettaEncoder", "chunk_text", "letta_response", "not_found"]

logger = logging.getLogger(__name__)
NO_STORE = {"Cache-Control": "no-store"}
#: What the web tier passes every response's frames through (it ends them cleanly on outages).
Guard = Callable[[HubReader, AsyncIterator[str]], AsyncIterator[bytes]]

_STOP_REASONS = {Terminal.DONE: "end_turn", Terminal.CANCELLED: "cancelled"}


def chunk_text(data: str) -> str:
    """The text a chunk adds: the ``text`` field of a JSON object chunk, else the data itself."""
    value = _json(data)
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return str(value["text"])
    return data


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _is_stop_reason(value: Any) -> bool:
    return isinstance(value, dict) and value.get("message_type") == "stop_reason"


def _data(message: dict[str, Any]) -> str:
    return encode_frame(json.dumps(message, separators=(",", ":"), ensure_ascii=False))


def _now() -> str:
    return datetime.now(UTC).isoformat()


class LettaEncoder:
    """Turns one run's events into Letta's frames (one encoder per response).

    ``previous`` is the data of the chunk at the client's cursor, if known: a client that
    resumes right after a stored stop reason does not get a second one with the ending.
    """

    def __init__(self, run_id: str, previous: str | None = None) -> None:
        self.run_id = run_id
        # Whether the last message the client got was a stop reason.
        self._stopped = previous is not None and _is_stop_reason(_json(previous))

    def ping(self) -> str:
        """Letta's keepalive message (the SDK yields it as a ``LettaPing``)."""
        return _data({"message_type": "ping", "id": f"ping-{uuid.uuid4()}", "date": _now(),
                      "run_id": self.run_id})

    def __call__(self, event: Event) -> str:
        if event.terminal is not None:
            return self._ending(event)
        if event.event == "error":  # a Letta error event stored mid-run: served as Letta did
            return event.sse()
        message = self._message(event)
        self._stopped = _is_stop_reason(message)
        return self._with_id(event, _data(message))

    def _message(self, event: Event) -> dict[str, Any]:
        value = _json(event.data)
        fields = value if isinstance(value, dict) else {}
        if event.event != "message":
            message = {"message_type": event.event, **fields}
            if not isinstance(value, dict):
                message["data"] = event.data if value is None else value
        elif isinstance(fields.get("message_type"), str):
            message = dict(fields)
        else:
            message = {**fields, "message_type": "assistant_message",
                       "id": f"message-{self.run_id}-{event.seq}", "date": _now(),
                       "content": chunk_text(event.data)}
        for key, filled in (("seq_id", event.seq), ("run_id", self.run_id)):
            if message.get(key) is None:
                message[key] = filled
        return message

    def _with_id(self, event: Event, frame: str) -> str:
        return frame if event.seq is None else f"id: {event.seq}\n{frame}"

    def _ending(self, event: Event) -> str:
        kind = event.terminal
        assert kind is not None
        reason = _STOP_REASONS.get(kind, "error")
        # The stop reason carries the ending's seq id: a client resuming after it gets 204.
        stop = {"message_type": "stop_reason", "stop_reason": reason, "seq_id": event.seq,
                "run_id": self.run_id}
        frames = "" if self._stopped else _data(stop)
        if reason == "error":
            frames += encode_frame(json.dumps(self._error(event, kind)), "error")
        return frames + self._with_id(event, DONE_FRAME)

    def _error(self, event: Event, kind: Terminal) -> dict[str, Any]:
        value = _json(event.data)
        body = value.get("error") if isinstance(value, dict) else None
        body = body if isinstance(body, dict) else {"message": event.data}
        return {"message_type": "error_message", "run_id": self.run_id,
                "error_type": kind.value, "message": str(body.get("message", "")),
                "detail": body.get("type"), "seq_id": event.seq}


# -- the HTTP response ----------------------------------------------------------------------


async def letta_response(reader: HubReader, interval: float | None, guard: Guard) -> Response:
    """The opened ``reader``'s run in Letta's protocol; 404 for a run that does not exist."""
    if reader.terminal is Terminal.NOT_FOUND:
        return not_found(reader.cursor.keys.run_id)
    encoder = LettaEncoder(reader.cursor.keys.run_id, await _data_at_cursor(reader))
    frames = sse_frames(reader, interval, encode=encoder, ping=encoder.ping)
    return StreamResponse(guard(reader, frames), ping=0, headers=NO_STORE)


async def _data_at_cursor(reader: HubReader) -> str | None:
    """The data of the chunk at the reader's cursor (None at 0, or when not found by id).

    Bounded by ``request_timeout``; a store that fails here only costs the check (a client
    resuming right after a stored stop reason may then get a second one).
    """
    if reader.last_seq == 0:
        return None
    entry_id = f"0-{reader.last_seq}"  # our id scheme; the seed's time-based ids are not found
    lookup = reader.hub.client.xrange(reader.cursor.keys.stream, min=entry_id, max=entry_id,
                                      count=1)
    try:
        entries: Any = await asyncio.wait_for(lookup, reader.hub.settings.request_timeout)
    except (TimeoutError, RedisError) as exc:
        logger.warning("run %s: could not read the entry at the cursor: %r",
                       reader.cursor.keys.run_id, exc)
        return None
    return parse_frame(entries[0][1].get("data", ""))[1] if entries else None


def not_found(run_id: str) -> JSONResponse:
    """404 with the web tier's JSON error, and the run's state as the status route gives it."""
    body = {"error": {"type": "not_found", "message": f"run {run_id} does not exist"},
            "run_id": run_id, "state": "missing"}
    return JSONResponse(body, 404, NO_STORE)
