"""Many SSE clients in one process, light enough that the server, not the clients, is measured.

Each client is one HTTP/1.1 connection on plain asyncio streams (uvloop when installed): a
``GET`` of the stream endpoint, the response head checked for 200, then the chunked body split
into SSE events, recording per chunk the receipt time minus the send time the producer put in
its data (``common.sent_at``) and the event's ``id:`` (its seq). httpx and httpx-sse cost
about ten times the CPU per event, which at 10,000 clients would measure the clients.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

from .procs import Channel, answer_async, use_uvloop
from .scenarios.common import sent_at

__all__ = ["sse_load"]

JOIN_TIMEOUT = 120.0
STOP_TIMEOUT = 600.0
#: Clients that open their connection at once (a burst past the server's backlog would be
#: refused by the kernel, which is not what is measured).
CONNECTING = 200


class _Load:
    """What the clients of this process received."""

    def __init__(self, streams: list[tuple[str, str]]) -> None:
        self.streams = streams
        self.delays: list[int] = []
        self.seqs: list[list[int]] = [[] for _ in streams]
        self.connected = 0
        self.errors: list[str] = []
        self.span = [0, 0]

    def event(self, i: int, frame: str) -> None:
        sent = sent_at(frame)
        if sent is None:
            return
        now = time.time_ns()
        self.span[0] = self.span[0] or now
        self.span[1] = now
        self.delays.append(now - sent)
        for line in frame.split("\n"):
            if line.startswith("id: "):
                self.seqs[i].append(int(line[4:]))

    def complete(self, expected: dict[str, int]) -> bool:
        return all(len(set(self.seqs[i])) >= expected[run_id]
                   for i, (run_id, _) in enumerate(self.streams))


async def _client(load: _Load, i: int, host: str, port: int, gate: asyncio.Semaphore) -> None:
    run_id, token = load.streams[i]
    try:
        async with gate:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /runs/{run_id}/stream?token={token} HTTP/1.1\r\nHost: {host}\r\n"
                         "Accept: text/event-stream\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        if b"transfer-encoding: chunked" not in head.lower():
            raise ConnectionError("expected a chunked response")
        load.connected += 1
        await _read_events(load, i, reader)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        load.errors.append(repr(exc))


async def _read_events(load: _Load, i: int, reader: asyncio.StreamReader) -> None:
    pending = ""
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            return
        pending += (await reader.readexactly(size + 2))[:-2].decode()
        *frames, pending = pending.split("\n\n")
        for frame in frames:
            load.event(i, frame)


def sse_load(channel: Channel, base_url: str, streams: list[tuple[str, str]],
             grace: float) -> None:
    """Clients of ``streams`` (``(run id, read token)``); protocol of ``benchmarks.procs``:
    ``ready`` once all are connected, then ``stop`` (chunks to expect per run) -> ``result``."""
    use_uvloop()
    answer_async(channel, _run(channel, base_url, streams, grace))


async def _run(channel: Channel, base_url: str, streams: list[tuple[str, str]],
               grace: float) -> dict[str, Any]:
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    load = _Load(streams)
    gate = asyncio.Semaphore(CONNECTING)
    began = time.monotonic()
    tasks = [asyncio.create_task(_client(load, i, host, port, gate)) for i in range(len(streams))]
    while load.connected < len(streams):
        if load.errors or time.monotonic() - began > JOIN_TIMEOUT:
            raise TimeoutError(f"{load.connected} of {len(streams)} clients connected (bound "
                               f"{JOIN_TIMEOUT} s); {len(load.errors)} failed: {load.errors[:3]}")
        await asyncio.sleep(0.05)
    channel.send("ready", {"join_seconds": time.monotonic() - began})
    cpu = time.process_time()
    expected = await asyncio.to_thread(channel.expect, "stop", STOP_TIMEOUT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not load.complete(expected):
        await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=5)
    return {
        "delays_ns": load.delays, "errors": len(load.errors), "failures": load.errors[:5],
        "clients": [(run_id, len(set(load.seqs[i])), len(load.seqs[i]) - len(set(load.seqs[i])))
                    for i, (run_id, _) in enumerate(streams)],
        "first_ns": load.span[0], "last_ns": load.span[1], "cpu_seconds": cpu,
    }
