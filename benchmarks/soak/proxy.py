"""A loopback TCP proxy with faults: cut every connection (and refuse new ones) or stall the
bytes for N seconds. It runs its own event loop in a thread of its own, so the soak's own loop
(readers, faults) never slows the traffic it forwards, and is driven from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

__all__ = ["FaultProxy"]

CHUNK = 65536
#: Bound on connecting to the target and on the thread's start and stop.
CONNECT_TIMEOUT = 5.0
THREAD_TIMEOUT = 10.0


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``.

    - ``cut(seconds)``: every open connection is closed now, and new ones are closed at once
      until ``seconds`` have passed (the way to the server is down);
    - ``stall(seconds)``: bytes stop flowing both ways for ``seconds``; connections stay open
      and new ones are accepted but carry nothing (a silent network).
    """

    def __init__(self, target_port: int, name: str) -> None:
        self.target_port = target_port
        self.name = name
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=f"proxy-{name}", daemon=True)
        self._ready = threading.Event()
        self._refuse_until = 0.0
        self._flowing: asyncio.Event | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._stop: asyncio.Event | None = None
        self._heal: asyncio.TimerHandle | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(THREAD_TIMEOUT) or not self.port:
            raise RuntimeError(f"proxy {self.name} did not start within {THREAD_TIMEOUT} s")
        return self

    def close(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(THREAD_TIMEOUT)

    def cut(self, seconds: float) -> None:
        self._loop.call_soon_threadsafe(self._cut, seconds)

    def stall(self, seconds: float) -> None:
        self._loop.call_soon_threadsafe(self._stall, seconds)

    def heal(self) -> None:
        """End any cut or stall now."""
        self._loop.call_soon_threadsafe(self._do_heal)

    # -- the proxy's own loop --------------------------------------------------------------

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            # A connection task still pending now is abandoned on purpose: no noise about it.
            self._loop.set_exception_handler(lambda loop, context: None)
            self._loop.close()

    async def _serve(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        await self._stop.wait()
        self._server.close()  # no new connection from here on
        self._close_all()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=THREAD_TIMEOUT / 2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def _cut(self, seconds: float) -> None:
        self._refuse_until = time.monotonic() + seconds
        self._close_all()

    def _stall(self, seconds: float) -> None:
        assert self._flowing is not None
        self._flowing.clear()
        if self._heal is not None:
            self._heal.cancel()
        self._heal = self._loop.call_later(seconds, self._do_heal)

    def _do_heal(self) -> None:
        assert self._flowing is not None
        self._refuse_until = 0.0
        self._flowing.set()

    def _close_all(self) -> None:
        for writer in list(self._conns):
            writer.transport.abort()
        self._conns.clear()

    async def _handle(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            client_w.transport.abort()
            return
        self._conns.update((client_w, server_w))
        try:
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        except asyncio.CancelledError:
            pass  # the proxy is closing: nothing to report
        finally:
            for writer in (client_w, server_w):
                self._conns.discard(writer)
                writer.transport.abort()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if dst.transport.is_closing():
                    break
                dst.write(data)
                await dst.drain()
        dst.transport.abort()  # one side ended: end the other (Redis connections are duplex)
