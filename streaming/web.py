"""The SSE endpoint: resumable run streams, mounted in any Starlette or FastAPI app.

    streams = StreamEndpoints(Settings.from_env())     # STREAMING_TOKEN_SECRET signs tokens
    app = Starlette(routes=[Mount("/v1", routes=streams.routes)], lifespan=streams.lifespan)

Routes, relative to where they are mounted:

- ``GET /runs/{run_id}/stream``: the run's events after a cursor, as ``text/event-stream``.
  The cursor is the ``Last-Event-ID`` header (a browser's ``EventSource`` sends it when it
  reconnects), else the ``last_event_id`` query parameter, else ``starting_after``, else 0.
  Every stored event carries ``id: <seq>``; ``: ping`` comments fill every
  ``settings.ping_interval`` s of silence; the response ends after the run's terminal event.
  A cursor that already has the terminal event gets 204 (``EventSource`` stops on it).
- ``POST /runs/{run_id}/stream``: the same, with the seed's JSON body ``{"starting_after": N,
  "include_pings": bool}`` (its ``poll_interval`` and ``batch_size`` are accepted, unused).
- ``GET /runs/{run_id}/status``: ``{"run_id", "state", "last_seq", "attempt", "terminal"}``.

Every route checks access before it touches Redis, so a refusal (401/403) never tells whether
a run exists: by default a read token (``streaming.tokens``) in ``?token=`` or ``Authorization:
Bearer``, or any ``auth(request, run_id)`` hook of the host app. Bad run ids and cursors get
400 with a JSON error saying which input was wrong.

The response is sse-starlette's ``EventSourceResponse`` fed with ``timed_frames`` bytes (the
hub reader marks its own silences, so a ping costs no task per event): bytes
pass through as they are (stored frames, ``id:`` lines, our silence-based pings; its own
fixed-timer ping is off), and it races the stream against the client's disconnect and the
server's shutdown on every ASGI server. Starlette's ``StreamingResponse`` stops listening
for disconnects on ASGI 2.4 servers and would notice a gone client only at its next write,
holding a hub reader until the next ping.

One ``ReaderHub`` per process serves every stream: ``lifespan`` starts and closes it; without
the lifespan (a sub-app whose lifespan is not run) the first request starts it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    from sse_starlette import EventSourceResponse
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import BaseRoute, Route
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "streaming.web needs the web extra: pip install 'celery-streaming[web]'"
    ) from exc

from .control import arun_status
from .errors import (
    AccessDenied,
    ConfigurationError,
    InvalidCursor,
    InvalidInput,
    InvalidRunId,
    ReaderError,
    Unauthenticated,
)
from .gcpolicy import GcPacer
from .hub import HubReader, ReaderHub
from .settings import Settings
from .sse import timed_frames
from .tokens import TokenSigner
from .wire import parse_cursor, validate_run_id

__all__ = ["AuthHook", "StreamEndpoints", "TokenAuth", "read_json_object"]

logger = logging.getLogger(__name__)

#: Decides whether ``request`` may read ``run_id``: return True to allow; False, or raising
#: ``AccessDenied`` (403) / ``Unauthenticated`` (401), refuses. It runs before any Redis I/O.
AuthHook = Callable[[Request, str], bool | Awaitable[bool]]

NO_STORE = {"Cache-Control": "no-store"}
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
_Cursor = tuple[str, object]  # (where the cursor came from, its raw value)


class TokenAuth:
    """The default hook: a read token in ``?token=`` or ``Authorization: Bearer``."""

    def __init__(self, signer: TokenSigner) -> None:
        self.signer = signer

    def __call__(self, request: Request, run_id: str) -> bool:
        token = request_token(request)
        if token is None:
            raise Unauthenticated("a read token is required: ?token=... or Authorization: Bearer")
        self.signer.check(token, run_id)
        return True


def request_token(request: Request) -> str | None:
    """The token of ``request``: the ``Authorization: Bearer`` one, else ``?token=``."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.query_params.get("token")


class StreamEndpoints:
    """The stream routes of one app, and the reader hub they share in this process.

    ``auth`` replaces the default token check. ``retry_ms`` is sent as SSE ``retry:`` (the
    browser's reconnect delay). ``hub``: serve from a hub you started yourself.
    """

    def __init__(self, settings: Settings, *, auth: AuthHook | None = None,
                 retry_ms: int | None = None, hub: ReaderHub | None = None) -> None:
        self.settings = settings
        self.signer = TokenSigner(settings.token_secret) if settings.token_secret else None
        if auth is None:
            if self.signer is None:
                raise ConfigurationError(
                    "stream endpoints need STREAMING_TOKEN_SECRET (settings.token_secret) "
                    "or an auth hook"
                )
            auth = TokenAuth(self.signer)
        self.auth = auth
        self.retry_ms = retry_ms
        self._hub = hub
        self._own_hub = hub is None
        #: The garbage collector's pacing while the lifespan runs (raises on a bad mode now).
        self.gc = GcPacer(settings.gc_mode, lambda: self._hub.joins if self._hub else 0,
                          lambda: self._hub.readers if self._hub else 0)

    @property
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/runs/{run_id}/stream", self.stream, methods=["GET"], name="run_stream"),
            Route("/runs/{run_id}/stream", self.resume, methods=["POST"],
                  name="run_stream_resume"),
            Route("/runs/{run_id}/status", self.status, methods=["GET"], name="run_status"),
        ]

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Start the hub with the app and close it at shutdown (pass as ``lifespan=``).

        It also paces the process's garbage collector for thousands of long-lived streams
        (``settings.gc_mode``, ``streaming.gcpolicy``)."""
        await self.start()
        self.gc.start()
        try:
            yield
        finally:
            await self.gc.aclose()
            await self.aclose()

    async def start(self) -> ReaderHub:
        """The process's hub, started on the running loop on first use."""
        if self._hub is None:
            self._hub = ReaderHub(self.settings)
            await self._hub.start()
        return self._hub

    async def aclose(self) -> None:
        if self._hub is not None and self._own_hub:
            hub, self._hub = self._hub, None
            await hub.aclose()

    @property
    def hub(self) -> ReaderHub | None:
        """The hub, once started (``stats()`` tells how many readers it serves)."""
        return self._hub

    # -- access ----------------------------------------------------------------------------

    def issue_token(self, run_id: str, ttl: float | None = None) -> str:
        """A read token for ``run_id`` (default lifetime ``settings.token_ttl``)."""
        if self.signer is None:
            raise ConfigurationError("no token secret: set STREAMING_TOKEN_SECRET")
        return self.signer.issue(run_id, ttl or self.settings.token_ttl)

    async def authorize(self, request: Request, run_id: str) -> None:
        """Raise ``AccessDenied`` unless the auth hook allows ``request`` to read ``run_id``.

        Host apps use it to guard their own per-run routes (cancel) with the same rule.
        """
        validate_run_id(run_id)
        verdict = self.auth(request, run_id)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is not True:
            raise AccessDenied("not allowed to read this run")

    # -- handlers --------------------------------------------------------------------------

    async def stream(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            await self.authorize(request, run_id)
            return await self._serve(run_id, _query_cursor(request), pings=True)
        except (InvalidInput, AccessDenied) as exc:
            return error_response(exc)
        except _TRANSIENT as exc:
            return unavailable(exc)

    async def resume(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            await self.authorize(request, run_id)
            cursor, pings = _body_cursor(request, await read_json_object(request))
            return await self._serve(run_id, cursor, pings=pings)
        except (InvalidInput, AccessDenied) as exc:
            return error_response(exc)
        except _TRANSIENT as exc:
            return unavailable(exc)

    async def status(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            await self.authorize(request, run_id)
            hub = await self.start()
            status = await arun_status(hub.client, run_id, self.settings)
        except (InvalidInput, AccessDenied) as exc:
            return error_response(exc)
        except _TRANSIENT as exc:
            return unavailable(exc)
        body = {"run_id": run_id, "state": status.state, "last_seq": status.last_seq,
                "attempt": status.attempt, "terminal": status.ending or None}
        found = status.state != "missing" or status.stream
        return JSONResponse(body, status_code=200 if found else 404, headers=NO_STORE)

    async def _serve(self, run_id: str, cursor: _Cursor, *, pings: bool) -> Response:
        source, raw = cursor
        reader = (await self.start()).read(run_id, _parse_cursor(source, raw))
        try:
            await reader.open()
        except InvalidCursor as exc:
            raise InvalidCursor(f"{source}: {exc}") from exc
        if reader.exhausted:
            return Response(status_code=204, headers=NO_STORE)
        return EventSourceResponse(self._frames(reader, pings), ping=0, headers=NO_STORE)

    async def _frames(self, reader: HubReader, pings: bool) -> AsyncIterator[bytes]:
        interval = self.settings.ping_interval if pings else None
        try:
            async for frame in timed_frames(reader.timed(interval), retry_ms=self.retry_ms):
                yield frame.encode()
        except (*_TRANSIENT, ReaderError) as exc:
            # The store is unreachable or the hub closed (shutdown): ending the response
            # without a terminal event makes the client reconnect, here or to another
            # process, and resume from its last id: nothing is lost or repeated.
            logger.warning("stream of run %s cut: %s", reader.cursor.keys.run_id, exc)


# -- requests and errors --------------------------------------------------------------------


def _query_cursor(request: Request) -> _Cursor:
    """The cursor of a GET: the reconnect header wins over the URL the stream was opened with."""
    candidates = (
        ("Last-Event-ID header", request.headers.get("last-event-id")),
        ("last_event_id", request.query_params.get("last_event_id")),
        ("starting_after", request.query_params.get("starting_after")),
    )
    return next(((name, value) for name, value in candidates if value is not None),
                ("starting_after", None))


def _body_cursor(request: Request, body: dict[str, Any]) -> tuple[_Cursor, bool]:
    pings = body.get("include_pings", True)
    if not isinstance(pings, bool):
        raise InvalidInput(f"include_pings must be true or false, got {pings!r}")
    header = request.headers.get("last-event-id")
    if header is not None:  # fetch-based SSE clients resend the POST with this header
        return ("Last-Event-ID header", header), pings
    return ("starting_after", body.get("starting_after")), pings


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); ``InvalidInput`` (400) otherwise."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidInput(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body


def _parse_cursor(source: str, raw: object) -> int:
    try:
        return parse_cursor(raw)
    except InvalidCursor as exc:
        raise InvalidCursor(f"{source}: {exc}") from exc


_ERROR_TYPES: list[tuple[type[Exception], int, str]] = [
    (InvalidRunId, 400, "invalid_run_id"),
    (InvalidCursor, 400, "invalid_cursor"),
    (InvalidInput, 400, "invalid_request"),
    (Unauthenticated, 401, "unauthenticated"),
    (AccessDenied, 403, "forbidden"),
]


def error_response(exc: InvalidInput | AccessDenied) -> JSONResponse:
    """The JSON error of a refused request: ``{"error": {"type", "message"}}``."""
    status, kind = next((s, k) for t, s, k in _ERROR_TYPES if isinstance(exc, t))
    headers = dict(NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="streams"'
    return JSONResponse({"error": {"type": kind, "message": str(exc)}}, status, headers)


def unavailable(exc: BaseException) -> JSONResponse:
    logger.warning("stream store unreachable: %s", exc)
    body = {"error": {"type": "unavailable", "message": "the stream store is unreachable"}}
    return JSONResponse(body, 503, {**NO_STORE, "Retry-After": "2"})
