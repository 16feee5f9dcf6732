"""The Vercel AI SDK's UI message stream protocol (v1): a run as one assistant message.

``GET /runs/{run_id}/ui-stream`` answers in this protocol, so the AI SDK's chat transport
(``useChat({resume: true})`` with ``DefaultChatTransport``'s ``prepareReconnectToStreamRequest``
pointing at the route) reconnects to a live or finished run. The response is SSE with the
header ``x-vercel-ai-ui-message-stream: v1``; every frame is ``data: <JSON part>``, the last one
``data: [DONE]``:

- ``start`` with ``messageId`` = the run id, first; the transport replays a stream from its
  start when it reconnects (``resumeStreamIsReplay``), and the client resets the message on
  that ``start``, so a reconnect rebuilds the same message, never a longer one;
- text (a plain chunk, or the ``text`` field of a JSON object chunk) as ``text-start`` /
  ``text-delta`` / ``text-end``; a JSON object chunk without text as a ``data-chunk`` part;
  a named event (``gap``, ``restarted``, a generator's own ``Event``) as a ``data-<name>``
  part whose ``id`` is the event's seq id;
- the endings: ``done`` is ``finish`` (``finishReason: "stop"``); ``cancelled`` is ``abort``
  with the reason; ``error``, ``timeout`` and ``lost`` are ``error`` with the message.

Restarts follow the client rule: a ``restarted`` event with ``"resume": false`` abandons the
output before it. In the run's stored history (everything up to its last seq id when the
request came) the encoder holds the parts back and drops the abandoned ones, so a reconnect or
a finished run shows only the last attempt's text. The protocol cannot take back text a client
already has, so a restart that happens while a client is connected raises ``OutputAbandoned``:
the server drops the connection (the response ends unfinished), the client reconnects as after
any cut, and the replay, which holds back the history, rebuilds the message without the
abandoned text.

Pings are SSE comments, which the AI SDK's parser skips. Stop in the AI SDK is a disconnect:
the run goes on until the app's cancel endpoint is called (see the README).
``UIMessageEncoder`` is the protocol; ``ui_message_response`` the HTTP response
``streaming.web`` serves it with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from .hub import HubReader
from .letta import Guard, chunk_text, not_found
from .responses import StreamResponse
from .sse import sse_frames
from .wire import Event, Terminal, encode_frame

__all__ = ["HEADERS", "OutputAbandoned", "UIMessageEncoder", "ui_message_response"]

logger = logging.getLogger(__name__)

#: Response headers of the protocol.
HEADERS = {"x-vercel-ai-ui-message-stream": "v1", "Cache-Control": "no-store"}
#: Parts of the stored history held back at most (past it they are sent as they come).
HISTORY_LIMIT = 100_000


class OutputAbandoned(Exception):
    """The run started over while the client was connected: its view must be rebuilt."""


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _restart_abandons(event: Event) -> bool:
    """Whether a ``restarted`` event starts the run over (``resume`` false or absent)."""
    value = _json(event.data)
    return not (isinstance(value, dict) and value.get("resume") is True)


class UIMessageEncoder:
    """Turns one run's events into UI message stream frames (one encoder per response).

    ``history`` is the run's last seq id when the response started: events up to it are held
    back until it is reached, so a restart stored in that range drops the parts before it.
    """

    def __init__(self, run_id: str, history: int = 0) -> None:
        self.run_id = run_id
        self.history = history
        self._held: list[dict[str, Any]] | None = [] if history > 0 else None
        self._text_id: str | None = None

    def ping(self) -> str:
        return ": ping\n\n"

    def opening(self) -> str:
        """The first frame of the response."""
        return self._frames(self._start(self.run_id))

    def __call__(self, event: Event) -> str:
        parts = self._parts(event)
        if self._held is None:
            return self._frames(parts)
        self._held.extend(parts)
        reached = event.seq is not None and event.seq >= self.history
        if reached or event.terminal is not None or len(self._held) > HISTORY_LIMIT:
            held, self._held = self._held, None
            return self._frames(held)
        return ""

    def _parts(self, event: Event) -> list[dict[str, Any]]:
        if event.terminal is not None:
            return [*self._close_text(), self._ending(event, event.terminal)]
        if event.event == "restarted" and _restart_abandons(event):
            return self._restart(event)
        if event.event != "message":
            return [self._data_part(event.event, event)]
        value = _json(event.data)
        if isinstance(value, dict) and not isinstance(value.get("text"), str):
            return [self._data_part("chunk", event)]
        return self._text(chunk_text(event.data), event.seq)

    def _text(self, text: str, seq: int | None) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if self._text_id is None:
            self._text_id = f"text-{seq}"
            parts.append({"type": "text-start", "id": self._text_id})
        parts.append({"type": "text-delta", "id": self._text_id, "delta": text})
        return parts

    def _close_text(self) -> list[dict[str, Any]]:
        if self._text_id is None:
            return []
        text_id, self._text_id = self._text_id, None
        return [{"type": "text-end", "id": text_id}]

    def _data_part(self, name: str, event: Event) -> dict[str, Any]:
        value = _json(event.data)
        data = event.data if value is None else value
        part: dict[str, Any] = {"type": f"data-{name}", "data": data}
        if event.seq is not None:
            part["id"] = str(event.seq)
        return part

    def _restart(self, event: Event) -> list[dict[str, Any]]:
        notice = self._data_part("restarted", event)
        if self._held is None:
            raise OutputAbandoned(f"run {self.run_id} restarted at seq {event.seq}")
        self._held.clear()  # in the stored history: the earlier parts never go out
        self._text_id = None
        return [notice]

    def _start(self, message_id: str) -> list[dict[str, Any]]:
        return [{"type": "start", "messageId": message_id}]

    def _ending(self, event: Event, kind: Terminal) -> dict[str, Any]:
        if kind is Terminal.DONE:
            return {"type": "finish", "finishReason": "stop"}
        value = _json(event.data)
        body = value.get(kind.value if kind is Terminal.CANCELLED else "error") \
            if isinstance(value, dict) else None
        body = body if isinstance(body, dict) else {}
        if kind is Terminal.CANCELLED:
            return {"type": "abort", "reason": str(body.get("reason") or "cancelled")}
        message = str(body.get("message") or event.data)
        return {"type": "error", "errorText": f"{kind.value}: {message}"}

    def _frames(self, parts: list[dict[str, Any]]) -> str:
        text = "".join(encode_frame(json.dumps(part, ensure_ascii=False)) for part in parts)
        if any(part["type"] in ("finish", "abort", "error") for part in parts):
            text += "data: [DONE]\n\n"
        return text


# -- the HTTP response ----------------------------------------------------------------------


async def ui_message_response(reader: HubReader, interval: float | None, guard: Guard) -> Response:
    """The opened ``reader``'s run in the UI message stream protocol; 404 for a missing run."""
    if reader.terminal is Terminal.NOT_FOUND:
        return not_found(reader.cursor.keys.run_id)
    stored = reader.status.last_seq if reader.status is not None else 0
    encoder = UIMessageEncoder(reader.cursor.keys.run_id,
                               history=stored if stored > reader.last_seq else 0)

    async def frames() -> AsyncIterator[str]:
        yield encoder.opening()
        async for frame in sse_frames(reader, interval, encode=encoder, ping=encoder.ping):
            yield frame

    return _UIStreamResponse(guard(reader, frames()), ping=0, headers=HEADERS)


class _UIStreamResponse(StreamResponse):
    """Drops the connection (the body never finishes) when the run restarts under it."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* OutputAbandoned as group:
            # Returning with the body unfinished makes the server close the connection: the
            # AI SDK's client sees a cut, reconnects, and the replay has no abandoned text.
            logger.info("UI stream dropped so the client rebuilds it: %s", group.exceptions[0])
