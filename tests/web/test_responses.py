"""``StreamResponse``: sse-starlette's response, its per-send timeout kept when one is set."""

import asyncio

import pytest
from sse_starlette.sse import SendTimeoutError

from streaming.responses import StreamResponse


async def _frames():
    yield b"data: x\n\n"


async def _slow_send(message):
    await asyncio.sleep(1.0)


async def test_a_send_timeout_still_cuts_a_stalled_send():
    response = StreamResponse(_frames(), ping=0, send_timeout=0.05)
    with pytest.raises(SendTimeoutError):
        await response._send_with_timeout(_slow_send, {"type": "http.response.body"})


async def test_without_a_send_timeout_a_send_is_awaited_as_it_is():
    sent = []

    async def send(message):
        sent.append((message, asyncio.current_task()))

    response = StreamResponse(_frames(), ping=0)
    await response._send_with_timeout(send, {"type": "http.response.body", "body": b"x"})
    assert sent == [({"type": "http.response.body", "body": b"x"}, asyncio.current_task())]
