"""The reference app: start a generation, follow it live in a browser, cancel it.

    REDIS_URL=redis://localhost:6379/0 STREAMING_TOKEN_SECRET=... \\
        uvicorn --factory examples.app:create_app

Routes:

- ``GET /``: a page that starts runs and renders them live with ``EventSource``, surviving
  reloads (``?run=<id>`` in its URL, its text and cursor in session storage); it also sets the
  page session's cookie (a ``create`` token, ``HttpOnly``, ``SameSite=Strict``);
- ``POST /runs``: queue a ``demo`` run (body ``{"text", "rate", "chunk_size"}``, all optional)
  through the tasks API. The params are checked against the generator's schema first (400
  naming the field), then the ``create`` access (by default the page session's token, from
  the cookie or ``Authorization: Bearer``); 201 with its id, a read token, a cancel token,
  the URLs that take them and their lifetime (``expires_in``), and the read token as a cookie
  scoped to the run's path;
- ``GET /runs``: the runs this app started lately (newest first, at most ``?limit=`` 20), each
  with its state, last seq id, attempt, ending and the chunk total the demo will write, and
  ``flower_url`` (``FLOWER_URL``) for links to each run's task in Flower. It needs the
  ``create`` access (a page session) and lists no tokens: a page reads only the runs it
  started. The list is the app's, not a user's: key it by your user for per-user lists;
- ``POST /runs/{run_id}/cancel``: ask the run to stop (needs a token with the cancel scope);
- the routes of ``streaming.web``: ``GET|POST /runs/{run_id}/stream``,
  ``GET /runs/{run_id}/status``, ``POST /runs/{run_id}/token``;
- the operational routes of ``streaming.ops``: ``GET /metrics`` (Prometheus), ``GET /livez``,
  ``GET /readyz`` (the store and the reader hub).

Who may start runs is the access hook's decision (``auth`` of ``StreamEndpoints``, asked with
scope ``create``): the default lets any client that loaded the page start runs, and refuses
cross-site requests (the cookie is ``SameSite=Strict``). Put your login there. Query tokens
are redacted from uvicorn's access log (``streaming.web.install_log_redaction``).
"""

from __future__ import annotations

import collections
import contextlib
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

from streaming import logs
from streaming.errors import AccessDenied, InvalidInput, Unavailable
from streaming.ops import ops_routes
from streaming.settings import Settings
from streaming.web import (
    SESSION_COOKIE,
    TOKEN_COOKIE,
    AuthHook,
    StreamEndpoints,
    error_response,
    install_log_redaction,
    request_token,
)
from streaming.wire import RunKeys
from tasks.schemas import ParamsSchemas

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
_REFUSED = (InvalidInput, AccessDenied, Unavailable)
#: The runs this app started (a sorted set, score: start time) and their chunk totals (a hash),
#: both capped at RECENT runs; under the project's ``sse:`` prefix, which the web tier's ACL
#: (``deploy/redis.acl``) grants.
RECENT_KEY, TOTALS_KEY, RECENT = "sse:app:runs", "sse:app:totals", 100


class Launcher(Protocol):
    """What the app needs from the tasks API (``tasks.api.Runs`` has this shape)."""

    async def astart(self, generator: str, params: Mapping[str, Any] | None = None) -> str: ...

    async def acancel(self, run_id: str, reason: str = "cancelled") -> bool: ...


def create_app(settings: Settings | None = None, *, launcher: Launcher | None = None,
               retry_ms: int = 1000, auth: AuthHook | None = None,
               schemas: ParamsSchemas | None = None, runs_per_minute: int = 20,
               flower_url: str | None = None) -> Starlette:
    """The app; ``launcher`` defaults to the Celery tasks API built from the environment,
    ``auth`` to tokens (see the module), ``schemas`` to the built-in generators' params.
    ``runs_per_minute`` bounds the runs one client (its page session, else its address) may
    start, per web process (429 past it). ``flower_url`` (default ``FLOWER_URL``; unset: no
    links) is where the page links each run's task."""
    _log_runs()
    settings = _with_secret(settings or Settings.from_env())
    streams = StreamEndpoints(settings, retry_ms=retry_ms, auth=auth)
    if flower_url is None:
        flower_url = os.environ.get("FLOWER_URL", "")
    runs = _Runs(streams, launcher or _celery_launcher(), schemas or ParamsSchemas.load(),
                 RateLimit(runs_per_minute, 60.0), flower_url.rstrip("/"))
    install_log_redaction()
    app = Starlette(
        routes=[
            Route("/", runs.index),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/runs", runs.create, methods=["POST"], name="create_run"),
            Route("/runs", runs.recent, methods=["GET"], name="recent_runs"),
            Route("/runs/{run_id}/cancel", runs.cancel, methods=["POST"], name="cancel_run"),
            *streams.routes,
            *ops_routes(streams),
        ],
        lifespan=streams.lifespan,
    )
    app.state.streams = streams
    return app


class RateLimit:
    """At most ``count`` events per ``per`` seconds for each key (a sliding window), for at
    most ``keys`` keys at once (the oldest are forgotten first): bounded memory."""

    def __init__(self, count: int, per: float, keys: int = 10_000) -> None:
        self.count, self.per, self.keys = count, per, keys
        self._seen: dict[str, collections.deque[float]] = {}

    def wait(self, key: str) -> float:
        """0 if one more event of ``key`` is allowed now (and count it), else seconds to wait."""
        now = time.monotonic()
        seen = self._seen.pop(key, None) or collections.deque()
        while seen and seen[0] <= now - self.per:
            seen.popleft()
        self._seen[key] = seen  # most recent last: the first keys are the oldest
        if len(self._seen) > self.keys:
            del self._seen[next(iter(self._seen))]
        if len(seen) >= self.count:
            return seen[0] + self.per - now
        seen.append(now)
        return 0.0


class _Runs:
    """The app's own run routes: the page, create, list and cancel."""

    def __init__(self, streams: StreamEndpoints, launcher: Launcher,
                 schemas: ParamsSchemas, limit: RateLimit, flower_url: str = "") -> None:
        self.streams = streams
        self.launcher = launcher
        self.schemas = schemas
        self.limit = limit
        self.flower_url = flower_url

    async def index(self, request: Request) -> Response:
        page = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        if self.streams.signer is not None:
            page.set_cookie(SESSION_COOKIE, self.streams.issue_session(), httponly=True,
                            samesite="strict", path=request.app.url_path_for("create_run"),
                            max_age=int(self.streams.settings.token_ttl))
        return page

    async def create(self, request: Request) -> Response:
        try:
            body = await self.streams.read_json(request)
            params = self.schemas.check("demo", {"text": DEMO_TEXT, **body})
            await self.streams.authorize(request, None, "create")
            wait = self.limit.wait(self._client(request))
            if wait:
                return _too_many(wait)
            run_id = await self.streams.store(self.launcher.astart("demo", params),
                                              errors=_launch_errors())
        except _REFUSED as exc:
            return error_response(exc)
        try:  # the run is started: a list that misses it must not lose its tokens
            await self.streams.store(self._remember(run_id, params))
        except Unavailable as exc:
            logger.warning("run %s started but not listed: %s", run_id, exc)
        return self._created(request, run_id)

    async def recent(self, request: Request) -> Response:
        limit = request.query_params.get("limit", "20")
        try:
            if not limit.isdigit() or not 1 <= int(limit) <= RECENT:
                raise InvalidInput(f"limit must be 1..{RECENT}, got {limit[:20]!r}")
            await self.streams.authorize(request, None, "create")
            runs = await self.streams.store(self._recent(int(limit)))
        except _REFUSED as exc:
            return error_response(exc)
        body = {"runs": runs, "flower_url": self.flower_url or None}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def _recent(self, limit: int) -> list[dict[str, Any]]:
        hub = await self.streams.start()
        run_ids = [str(r) for r in await hub.client.zrevrange(RECENT_KEY, 0, limit - 1)]
        if not run_ids:
            return []
        totals = await hub.client.hmget(TOTALS_KEY, run_ids)
        cluster = self.streams.settings.cluster_hash_tags
        statuses = await hub.statuses([RunKeys.for_run(r, hash_tag=cluster) for r in run_ids])
        return [{"run_id": run_id, "state": status.state, "last_seq": status.last_seq,
                 "attempt": status.attempt, "terminal": status.ending or None,
                 "total": int(total) if total else None}
                for run_id, total, status in zip(run_ids, totals, statuses, strict=True)]

    async def _remember(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Add the run to the recent list, forgetting the oldest past ``RECENT``."""
        total = math.ceil(len(params.get("text", DEMO_TEXT)) / params.get("chunk_size", 8))
        client = (await self.streams.start()).client
        async with client.pipeline(transaction=False) as pipe:
            pipe.zadd(RECENT_KEY, {run_id: time.time()})
            pipe.hset(TOTALS_KEY, run_id, total)
            pipe.zrange(RECENT_KEY, 0, -RECENT - 1)
            old = (await pipe.execute())[-1]
        if old:
            await client.zrem(RECENT_KEY, *old)
            await client.hdel(TOTALS_KEY, *old)

    def _client(self, request: Request) -> str:
        """Who is starting runs: the page session of the create token, else the address."""
        token = request_token(request, "create")
        if token is not None and self.streams.signer is not None:
            with contextlib.suppress(AccessDenied):
                return self.streams.signer.verify(token).subject
        return request.client.host if request.client else "unknown"

    def _created(self, request: Request, run_id: str) -> Response:
        read = self.streams.issue_token(run_id)
        cancel = self.streams.issue_token(run_id, scopes=("cancel",))
        path = request.app.url_path_for
        body = {
            "run_id": run_id,
            "token": read,
            "cancel_token": cancel,
            "stream_url": f"{path('run_stream', run_id=run_id)}?token={read}",
            "status_url": f"{path('run_status', run_id=run_id)}?token={read}",
            "cancel_url": f"{path('cancel_run', run_id=run_id)}?token={cancel}",
            "token_url": str(path("run_token", run_id=run_id)),
            "expires_in": int(self.streams.settings.token_ttl),  # both tokens' lifetime (s)
        }
        response = JSONResponse(body, status_code=201, headers={"Cache-Control": "no-store"})
        # The same read token for clients that send cookies: no token in any URL or log.
        response.set_cookie(TOKEN_COOKIE, read, httponly=True, samesite="strict",
                            path=body["status_url"].rsplit("/", 1)[0],
                            max_age=int(self.streams.settings.token_ttl))
        return response

    async def cancel(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            await self.streams.authorize(request, run_id, "cancel")
            cancelled = await self.streams.store(
                self.launcher.acancel(run_id, "cancelled from the page"), errors=_launch_errors())
        except _REFUSED as exc:
            return error_response(exc)
        if cancelled:
            return JSONResponse({"run_id": run_id, "cancel_requested": True}, status_code=202)
        body = {"error": {"type": "not_running", "message": "the run has already ended"}}
        return JSONResponse(body, status_code=409)


def _too_many(wait: float) -> Response:
    body = {"error": {"type": "too_many_requests",
                      "message": "too many runs started from this session; try again later"}}
    return JSONResponse(body, status_code=429,
                        headers={"Retry-After": str(math.ceil(wait)), "Cache-Control": "no-store"})


def _launch_errors() -> tuple[type[BaseException], ...]:
    """What the tasks API raises when the broker is away (besides the store's errors)."""
    try:
        from kombu.exceptions import OperationalError
    except ImportError:  # pragma: no cover - a launcher without Celery
        return (OSError,)
    return (OSError, OperationalError)


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
