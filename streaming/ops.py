"""Operational routes of a web process: ``/metrics``, ``/livez`` and ``/readyz``.

    streams = StreamEndpoints(settings)
    app = Starlette(routes=[*ops_routes(streams), Mount("/v1", routes=streams.routes)],
                    lifespan=streams.lifespan)

- ``GET /metrics``: Prometheus metrics (``streaming.metrics``; 501 without the ``metrics``
  extra). In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) every process's, added up.
- ``GET /livez``: 200 while the process answers (its event loop is not stuck).
- ``GET /readyz``: 200 when the stream store answers a ``PING`` within
  ``settings.request_timeout`` and the process's reader hub runs its shared reads; else 503
  with ``Retry-After``. The body names each check's result.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from . import metrics
from .errors import Unavailable
from .web import NO_STORE, StreamEndpoints

__all__ = ["Probes", "ops_routes"]


class Probes:
    """The handlers of the operational routes of ``streams``' process."""

    def __init__(self, streams: StreamEndpoints) -> None:
        self.streams = streams

    async def metrics(self, request: Request) -> Response:
        if not metrics.available():
            return PlainTextResponse("metrics need prometheus-client: "
                                     "pip install 'celery-streaming[metrics]'\n", 501)
        body = await asyncio.to_thread(metrics.exposition)  # reads files in multiprocess mode
        return Response(body, headers={**NO_STORE, "Content-Type": metrics.CONTENT_TYPE})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True}, headers=NO_STORE)

    async def ready(self, request: Request) -> Response:
        checks = {"store": await self._store(), "hub": await self._hub()}
        ready = all(result == "ok" for result in checks.values())
        headers = NO_STORE if ready else {
            **NO_STORE, "Retry-After": str(self.streams.settings.retry_after)}
        return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503, headers)

    async def _store(self) -> str:
        try:
            hub = await self.streams.start()
            await self.streams.store(hub.client.ping())  # bounded by settings.request_timeout
        except Unavailable as exc:
            return f"unreachable: {exc}"
        return "ok"

    async def _hub(self) -> str:
        hub = self.streams.hub
        if hub is None:
            return "not started"
        return "ok" if hub.alive else "its shared reads stopped"


def ops_routes(streams: StreamEndpoints) -> list[BaseRoute]:
    """``/metrics``, ``/livez`` and ``/readyz`` for ``streams``' process (mount them at /)."""
    probes = Probes(streams)
    return [
        Route("/metrics", probes.metrics, methods=["GET"], name="metrics"),
        Route("/livez", probes.live, methods=["GET"], name="livez"),
        Route("/readyz", probes.ready, methods=["GET"], name="readyz"),
    ]
