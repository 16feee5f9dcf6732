"""A loopback TCP proxy that tests use to cut, stall or refuse the way to Redis."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress


def port_of(url: str) -> int:
    """The port of a ``redis://host:port/db`` URL (what a proxy forwards to)."""
    return int(url.rsplit(":", 1)[1].split("/")[0])


class Proxy:
    """Forwards 127.0.0.1:<port> to ``target``; modes are switched while it runs.

    - ``refuse``: new connections are closed at once and existing ones are cut (Redis down);
    - ``stall``: bytes stop flowing both ways, connections stay open (a silent network);
    - ``drop_replies(n)``: the next ``n`` replies from the server are swallowed and their
      connection closed (a write that reached Redis whose reply was lost).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refuse = False
        self.stall = threading.Event()
        self._drop = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._closed = False
        #: Connections forwarded so far (a client that reconnects adds one).
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def drop_replies(self, count: int = 1) -> None:
        with self._lock:
            self._drop = count

    def cut(self) -> None:
        """Close every open connection."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def set_refuse(self, refuse: bool) -> None:
        self.refuse = refuse
        if refuse:
            self.cut()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
                self.accepted += 1
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.stall.is_set() and not self._closed:
                    time.sleep(0.05)
                if replies and self._take_drop():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _take_drop(self) -> bool:
        with self._lock:
            if self._drop > 0:
                self._drop -= 1
                return True
            return False
