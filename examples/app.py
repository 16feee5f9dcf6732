"""The reference app: start a generation, follow it live in a browser, cancel it.

    REDIS_URL=redis://localhost:6379/0 STREAMING_TOKEN_SECRET=... \\
        uvicorn --factory examples.app:create_app

Routes:

- ``GET /``: a page that starts a run and renders it live with ``EventSource``;
- ``POST /runs``: queue a ``demo`` run (body ``{"text", "rate", "chunk_size"}``, all optional)
  through the tasks API; 201 with its id, a read token and the URLs that take it;
- ``POST /runs/{run_id}/cancel``: ask the run to stop (the same token is the permission);
- the routes of ``streaming.web``: ``GET|POST /runs/{run_id}/stream``,
  ``GET /runs/{run_id}/status``;
- the operational routes of ``streaming.ops``: ``GET /metrics`` (Prometheus), ``GET /livez``,
  ``GET /readyz`` (the store and the reader hub).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from streaming import logs
from streaming.errors import AccessDenied, InvalidInput
from streaming.ops import ops_routes
from streaming.settings import Settings
from streaming.web import StreamEndpoints, error_response, read_json_object

__all__ = ["DEMO_TEXT", "Launcher", "create_app"]

logger = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
DEMO_TEXT = (
    "A Celery worker runs this generation in the background. Every chunk it yields goes "
    "through one shared writer per process into a Redis stream, and any web process serves "
    "the stream to you as Server-Sent Events. Close the tab, reload, or lose the network: "
    "the browser reconnects with the id of the last event it saw, and the server resumes "
    "right after it, so nothing is lost and nothing is repeated."
)
_PARAMS = {"text": str, "rate": (int, float), "chunk_size": int}


class Launcher(Protocol):
    """What the app needs from the tasks API (``tasks.api.Runs`` has this shape)."""

    async def astart(self, generator: str, params: Mapping[str, Any] | None = None) -> str: ...

    async def acancel(self, run_id: str, reason: str = "cancelled") -> bool: ...


def create_app(settings: Settings | None = None, *, launcher: Launcher | None = None,
               retry_ms: int = 1000) -> Starlette:
    """The app; ``launcher`` defaults to the Celery tasks API built from the environment."""
    _log_runs()
    settings = _with_secret(settings or Settings.from_env())
    streams = StreamEndpoints(settings, retry_ms=retry_ms)
    runs = _Runs(streams, launcher or _celery_launcher())
    app = Starlette(
        routes=[
            Route("/", _index),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/runs", runs.create, methods=["POST"], name="create_run"),
            Route("/runs/{run_id}/cancel", runs.cancel, methods=["POST"], name="cancel_run"),
            *streams.routes,
            *ops_routes(streams),
        ],
        lifespan=streams.lifespan,
    )
    app.state.streams = streams
    return app


class _Runs:
    """The app's own run routes: create and cancel."""

    def __init__(self, streams: StreamEndpoints, launcher: Launcher) -> None:
        self.streams = streams
        self.launcher = launcher

    async def create(self, request: Request) -> Response:
        try:
            params = _demo_params(await read_json_object(request))
        except InvalidInput as exc:
            return error_response(exc)
        run_id = await self.launcher.astart("demo", params)
        token = self.streams.issue_token(run_id)
        path = request.app.url_path_for
        body = {
            "run_id": run_id,
            "token": token,
            "stream_url": f"{path('run_stream', run_id=run_id)}?token={token}",
            "status_url": f"{path('run_status', run_id=run_id)}?token={token}",
            "cancel_url": f"{path('cancel_run', run_id=run_id)}?token={token}",
        }
        return JSONResponse(body, status_code=201, headers={"Cache-Control": "no-store"})

    async def cancel(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            await self.streams.authorize(request, run_id)
        except (InvalidInput, AccessDenied) as exc:
            return error_response(exc)
        if await self.launcher.acancel(run_id, "cancelled from the page"):
            return JSONResponse({"run_id": run_id, "cancel_requested": True}, status_code=202)
        body = {"error": {"type": "not_running", "message": "the run has already ended"}}
        return JSONResponse(body, status_code=409)


async def _index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


def _demo_params(body: dict[str, Any]) -> dict[str, Any]:
    """The ``demo`` generator's params from the request: only the known keys, type-checked."""
    params: dict[str, Any] = {"text": DEMO_TEXT}
    for name, kind in _PARAMS.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            raise InvalidInput(f"{name} has the wrong type: {value!r}")
        params[name] = value
    return params


def _log_runs() -> None:
    """When nothing configured logging (a bare uvicorn process): INFO lines on stderr, each
    line about a run starting with ``run=<id> attempt=<n>`` (``streaming.logs``)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logs.install(root)


def _with_secret(settings: Settings) -> Settings:
    if settings.token_secret:
        return settings
    logger.warning("STREAMING_TOKEN_SECRET is not set: tokens are signed with a random "
                   "secret and valid in this process only")
    return settings.replace(token_secret=secrets.token_urlsafe(32))


def _celery_launcher() -> Launcher:
    from tasks.api import Runs  # the web tier needs only the sending side of Celery
    from worker.config import WorkerConfig

    runs: Launcher = Runs.from_config(WorkerConfig.from_env())
    return runs
