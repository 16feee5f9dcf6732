"""The reference app: start a generation, follow it live in a browser, cancel it.

    REDIS_URL=redis://localhost:6379/0 STREAMING_TOKEN_SECRET=... \\
        uvicorn --factory examples.app:create_app

Routes:

- ``GET /``: a page that starts runs and renders them live with ``EventSource``; it survives
  reloads (``?run=<id>`` in its URL, its text and cursor in session storage);
- ``POST /runs``: queue a ``demo`` run (body ``{"text", "rate", "chunk_size"}``, all optional)
  through the tasks API; 201 with its id, a read token and the URLs that take it;
- ``GET /runs``: the runs this app started lately (newest first, at most ``?limit=`` 20), each
  with its state, last seq id, attempt, ending and the chunk total the demo will write; and
  ``flower_url`` (``FLOWER_URL``) for links to each run's task in Flower. No tokens: a page
  reads only the runs it started (it keeps their tokens);
- ``POST /runs/{run_id}/cancel``: ask the run to stop (the same token is the permission);
- the routes of ``streaming.web``: ``GET|POST /runs/{run_id}/stream``,
  ``GET /runs/{run_id}/status``.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from streaming.errors import AccessDenied, InvalidInput
from streaming.settings import Settings
from streaming.web import StreamEndpoints, error_response, read_json_object
from streaming.wire import RunKeys

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
#: The app's own record of the runs it started: a sorted set (score: start time) and a hash
#: of each run's chunk total, both capped at RECENT runs.
RECENT_KEY, TOTALS_KEY, RECENT = "examples:app:runs", "examples:app:totals", 100


class Launcher(Protocol):
    """What the app needs from the tasks API (``tasks.api.Runs`` has this shape)."""

    async def astart(self, generator: str, params: Mapping[str, Any] | None = None) -> str: ...

    async def acancel(self, run_id: str, reason: str = "cancelled") -> bool: ...


def create_app(settings: Settings | None = None, *, launcher: Launcher | None = None,
               retry_ms: int = 1000, flower_url: str | None = None) -> Starlette:
    """The app; ``launcher`` defaults to the Celery tasks API built from the environment,
    ``flower_url`` to ``FLOWER_URL`` (unset: no Flower links)."""
    settings = _with_secret(settings or Settings.from_env())
    streams = StreamEndpoints(settings, retry_ms=retry_ms)
    if flower_url is None:
        flower_url = os.environ.get("FLOWER_URL", "")
    runs = _Runs(streams, launcher or _celery_launcher(), flower_url.rstrip("/"))
    app = Starlette(
        routes=[
            Route("/", _index),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/runs", runs.create, methods=["POST"], name="create_run"),
            Route("/runs", runs.recent, methods=["GET"], name="recent_runs"),
            Route("/runs/{run_id}/cancel", runs.cancel, methods=["POST"], name="cancel_run"),
            *streams.routes,
        ],
        lifespan=streams.lifespan,
    )
    app.state.streams = streams
    return app


class _Runs:
    """The app's own run routes: create, list and cancel."""

    def __init__(self, streams: StreamEndpoints, launcher: Launcher, flower_url: str) -> None:
        self.streams = streams
        self.launcher = launcher
        self.flower_url = flower_url

    async def create(self, request: Request) -> Response:
        try:
            params = _demo_params(await read_json_object(request))
        except InvalidInput as exc:
            return error_response(exc)
        run_id = await self.launcher.astart("demo", params)
        await self._remember(run_id, math.ceil(len(params["text"]) / params.get("chunk_size", 8)))
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

    async def recent(self, request: Request) -> Response:
        limit = request.query_params.get("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= RECENT:
            return error_response(InvalidInput(f"limit must be 1..{RECENT}, got {limit!r}"))
        hub = await self.streams.start()
        run_ids = [str(r) for r in await hub.client.zrevrange(RECENT_KEY, 0, int(limit) - 1)]
        totals = await hub.client.hmget(TOTALS_KEY, run_ids) if run_ids else []
        cluster = self.streams.settings.cluster_hash_tags
        statuses = await hub.statuses([RunKeys.for_run(r, hash_tag=cluster) for r in run_ids])
        runs = [{"run_id": run_id, "state": status.state, "last_seq": status.last_seq,
                 "attempt": status.attempt, "terminal": status.ending or None,
                 "total": int(total) if total else None}
                for run_id, total, status in zip(run_ids, totals, statuses, strict=True)]
        body = {"runs": runs, "flower_url": self.flower_url or None}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def _remember(self, run_id: str, total: int) -> None:
        """Add the run to the app's recent list, forgetting the oldest past ``RECENT``."""
        client = (await self.streams.start()).client
        async with client.pipeline(transaction=False) as pipe:
            pipe.zadd(RECENT_KEY, {run_id: time.time()})
            pipe.hset(TOTALS_KEY, run_id, total)
            pipe.zrange(RECENT_KEY, 0, -RECENT - 1)
            old = (await pipe.execute())[-1]
        if old:
            await client.zrem(RECENT_KEY, *old)
            await client.hdel(TOTALS_KEY, *old)

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
