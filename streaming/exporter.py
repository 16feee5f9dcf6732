"""An HTTP endpoint for a process without a web app (a Celery worker): metrics and health.

``serve(host, port, health)`` answers, from a daemon thread of its own:

- ``GET /metrics``: ``streaming.metrics.exposition()`` (every process's, in multiprocess mode);
- ``GET /healthz``: ``health()``'s verdict, 200 or 503, with its checks as JSON.

Start it in the process that outlives the others (a prefork worker's main process), after
``PROMETHEUS_MULTIPROC_DIR`` is set; ``close()`` stops it within a bounded time.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import metrics

__all__ = ["Exporter", "HealthCheck", "serve"]

logger = logging.getLogger(__name__)

#: Returns (healthy, {check name: "ok" or what is wrong}).
HealthCheck = Callable[[], tuple[bool, dict[str, str]]]


class Exporter:
    """A running endpoint; ``url`` is where it listens, ``close()`` stops it."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)


def serve(host: str, port: int, health: HealthCheck) -> Exporter:
    """Listen on ``host:port`` (0: any free port) and serve from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._metrics()
            elif path == "/healthz":
                healthy, checks = health()
                body = json.dumps({"healthy": healthy, "checks": checks}).encode()
                self._send(200 if healthy else 503, body, "application/json")
            else:
                self._send(404, b"not found: /metrics or /healthz\n", "text/plain")

        def _metrics(self) -> None:
            if not metrics.available():
                self._send(501, b"metrics need prometheus-client: "
                           b"pip install 'celery-streaming[metrics]'\n", "text/plain")
                return
            self._send(200, metrics.exposition(), metrics.CONTENT_TYPE)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("exporter: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.5,), daemon=True,
                              name="streaming-exporter")
    thread.start()
    return Exporter(server, thread)
