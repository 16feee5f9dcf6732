"""A loopback HTTP proxy that cuts Server-Sent-Events connections mid-stream.

It forwards bytes both ways unchanged. On a connection whose response is
``text/event-stream`` it counts the events that pass (``id:`` lines, or another ``marker``
such as ``data:`` lines for protocols without ids) and, after
``cut_after`` of them, closes both sides at once: what a dropped network or a proxy's read
timeout does to a browser. At most ``max_cuts`` connections are cut.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

_ID = b"\nid: "


class CuttingProxy:
    def __init__(self, target_port: int, *, cut_after: int, max_cuts: int = 1000,
                 marker: bytes = _ID) -> None:
        self.target_port = target_port
        self.marker = marker
        self.cut_after = cut_after
        self.max_cuts = max_cuts
        self.cuts = 0
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="sse-proxy").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        with suppress(OSError):
            self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the server stopped first (a page still polls): as a cut
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_events, args=(upstream, client),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        _close(source, sink)

    def _pump_events(self, source: socket.socket, sink: socket.socket) -> None:
        """Server to client: count events on an event stream, cut after ``cut_after``."""
        seen, streaming, tail = 0, False, b""
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
                # The tail is too short to hold a whole marker: each one is counted once.
                window, tail = tail + data, (tail + data)[-len(self.marker) + 1:]
                streaming = streaming or b"text/event-stream" in data
                if streaming:
                    seen += window.count(self.marker)
                    if seen >= self.cut_after and self._take_cut():
                        break
        _close(source, sink)

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cuts >= self.max_cuts:
                return False
            self.cuts += 1
            return True


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            sock.close()
