"""SSE framing for serving a run: ``id:`` on every event, keepalive comments on quiet streams.

Pings are comments (``: ping``), never stored in Redis and ignored by ``EventSource``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable

from .wire import Event

__all__ = ["PING", "comment", "sse_frames", "timed_frames"]

#: What turns one event into the text sent for it ('' sends nothing).
Encoder = Callable[[Event], str]

PING = ": ping\n\n"


def comment(text: str) -> str:
    """An SSE comment frame (one line per line of ``text``)."""
    return "".join(f": {line}\n" for line in text.splitlines() or [""]) + "\n"


async def sse_frames(
    events: AsyncIterable[Event], ping_interval: float | None = 15.0, *,
    retry_ms: int | None = None, encode: Encoder = Event.sse,
    ping: Callable[[], str] = lambda: PING,
) -> AsyncIterator[str]:
    """The SSE text of ``events``, with a ping after every ``ping_interval`` s of silence.

    ``retry_ms`` sends a ``retry:`` field first (the browser's reconnect delay). ``encode``
    and ``ping`` make the text of an event and of a ping (other protocols: ``streaming.letta``,
    ``streaming.aisdk``).
    """
    if retry_ms is not None:
        yield f"retry: {retry_ms}\n\n"
    iterator = aiter(events)
    pending: asyncio.Task[Event] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=ping_interval)
            if not done:
                yield ping()
                continue
            task, pending = pending, None
            try:
                event = task.result()
            except StopAsyncIteration:
                return
            text = encode(event)
            if text:
                yield text
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            await closer()


async def timed_frames(events: AsyncIterable[Event | None], *,
                       retry_ms: int | None = None) -> AsyncIterator[str]:
    """``sse_frames`` for a source that marks its own silences (``HubReader.timed``): a ping
    for each ``None``. No task and no ``wait()`` per event: the cost of ``sse_frames``' timer
    at thousands of streams."""
    if retry_ms is not None:
        yield f"retry: {retry_ms}\n\n"
    iterator = aiter(events)
    try:
        async for event in iterator:
            yield PING if event is None else event.sse()
    finally:
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            await closer()
