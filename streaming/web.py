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
- ``POST /runs/{run_id}/stream``: the seed's and Letta's resume route, JSON body
  ``{"starting_after": N, "include_pings": bool}`` (``poll_interval`` and ``batch_size`` are
  accepted, unused), answered in Letta's protocol (``streaming.letta``) so Letta's SDKs read
  it; a run that does not exist gets 404 there, as from Letta's server.
- ``GET /runs/{run_id}/ui-stream``: the same events in the Vercel AI SDK's UI message stream
  protocol (``streaming.aisdk``), for ``useChat``'s reconnect; same cursors, 204, and 404 for a
  run that does not exist.
- ``GET /runs/{run_id}/status``: ``{"run_id", "state", "last_seq", "attempt", "terminal"}``.
- ``POST /runs/{run_id}/token`` (with the default token auth): a fresh token with the scopes
  of the one presented, for clients whose session outlives ``settings.token_ttl``.

Every request's input (run id, cursor, body) is checked first, then its access, and only then
is Redis touched, so a refused request costs no command and never tells whether a run exists.
Access is the ``auth(request, run_id, scope)`` hook: by default a token (``streaming.tokens``)
whose scope fits (``read`` here; host apps guard their own routes with ``cancel`` and
``create``), sent as ``Authorization: Bearer``, ``?token=`` or the run's token cookie. Bad
input gets 400 (413 for a body past ``settings.max_body_bytes``) with a JSON error naming what
was wrong. Every wait on the store is bounded by ``settings.request_timeout``: an unreachable,
stalled or failing-over store gets 503 with ``Retry-After``, never a 500 or a hang.

The response is sse-starlette's ``EventSourceResponse`` (``streaming.responses``, with no
cancel scope per send) fed with ``timed_frames`` bytes (the hub reader marks its own silences,
so a ping costs no task per event): bytes pass through as they are (stored frames, ``id:``
lines, our silence-based pings; its own fixed-timer ping is off), and it races the stream
against the client's disconnect and the server's shutdown on every ASGI server. Starlette's
``StreamingResponse`` stops listening for disconnects on ASGI 2.4 servers and would notice a
gone client only at its next write, holding a hub reader until the next ping.

One ``ReaderHub`` per process serves every stream: ``lifespan`` starts and closes it; without
the lifespan (a sub-app whose lifespan is not run) the first request starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from redis.exceptions import AskError, RedisError

try:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import BaseRoute, Route

    from .responses import StreamResponse
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "streaming.web needs the web extra: pip install 'celery-streaming[web]'"
    ) from exc

from . import metrics as _metrics
from .aisdk import ui_message_response
from .client import TRANSIENT
from .control import arun_status
from .errors import (
    AccessDenied,
    ConfigurationError,
    InvalidCursor,
    InvalidInput,
    InvalidRunId,
    ReaderError,
    RequestTooLarge,
    Unauthenticated,
    Unavailable,
)
from .gcpolicy import GcPacer
from .hub import HubReader, ReaderHub
from .letta import letta_response
from .logs import run_extra
from .settings import Settings
from .sse import timed_frames
from .tokens import Claims, TokenSigner, atoken_generation
from .wire import Event, parse_cursor, validate_run_id

__all__ = [
    "SESSION_COOKIE",
    "TOKEN_COOKIE",
    "AuthHook",
    "RedactTokens",
    "StreamEndpoints",
    "TokenAuth",
    "error_response",
    "install_log_redaction",
    "parse_json_object",
    "read_json_object",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Decides whether ``request`` may act on ``run_id`` in ``scope`` (``read``: stream, status,
#: token refresh; ``cancel``; ``create``, with ``run_id`` None): return True to allow; False,
#: or raising ``AccessDenied`` (403) / ``Unauthenticated`` (401), refuses. It runs after the
#: request's input is checked and before the run is touched in Redis.
AuthHook = Callable[[Request, str | None, str], bool | Awaitable[bool]]

NO_STORE = {"Cache-Control": "no-store"}
#: Cookie that may carry a run's token (set with ``Path=/runs/<id>``, so only that run's
#: routes receive it), and the cookie of a page session's ``create`` token.
TOKEN_COOKIE = "streaming_token"
SESSION_COOKIE = "streaming_session"
#: What the store may raise while answering a request: unreachable, stalled, failing over
#: (``ClusterDownError``, ``TryAgainError``), slots moving (``MOVED``/``ASK`` past redis-py's
#: own retries), or refusing a command. Each becomes a 503, never a 500.
_STORE_ERRORS: tuple[type[Exception], ...] = (*TRANSIENT, AskError, RedisError)
_Cursor = tuple[str, object]  # (where the cursor came from, its raw value)
#: The response of an opened reader in another protocol: (reader, ping interval, the guard
#: its frames go through) -> response (``streaming.letta``, ``streaming.aisdk``).
_Guard = Callable[[HubReader, AsyncIterator[str]], AsyncIterator[bytes]]
Framing = Callable[[HubReader, float | None, _Guard], Awaitable[Response]]


class TokenAuth:
    """The default hook: a token (``streaming.tokens``) with the scope the route needs.

    It is read from ``Authorization: Bearer``, else ``?token=``, else the run's token cookie
    (``create`` tokens: the header, else the session cookie). ``generation`` looks up a run's
    current token generation: a genuine token of an older one was revoked.
    """

    def __init__(self, signer: TokenSigner,
                 generation: Callable[[str], Awaitable[int]] | None = None) -> None:
        self.signer = signer
        self.generation = generation

    async def __call__(self, request: Request, run_id: str | None, scope: str) -> bool:
        token = request_token(request, scope)
        if token is None:
            raise Unauthenticated(f"a {scope} token is required: Authorization: Bearer, "
                                  "?token= or its cookie")
        claims = self.signer.check(token, run_id, scope)
        if run_id is not None:
            await self.check_generation(run_id, claims)
        return True

    async def check_generation(self, run_id: str, claims: Claims) -> None:
        """``Unauthenticated`` if the run's tokens were revoked after ``claims`` were issued."""
        if self.generation is not None and claims.generation < await self.generation(run_id):
            raise Unauthenticated("invalid token: revoked")


def request_token(request: Request, scope: str = "read") -> str | None:
    """The token of ``request`` for ``scope`` (see ``TokenAuth``), or None."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if scope == "create":
        return request.cookies.get(SESSION_COOKIE) or None
    return request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or None


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
            auth = TokenAuth(self.signer, self._generation)
        self.auth = auth
        self.retry_ms = retry_ms
        self._hub = hub
        self._own_hub = hub is None
        #: The garbage collector's pacing while the lifespan runs (raises on a bad mode now).
        self.gc = GcPacer(settings.gc_mode, lambda: self._hub.joins if self._hub else 0,
                          lambda: self._hub.readers if self._hub else 0)

    @property
    def routes(self) -> list[BaseRoute]:
        """The routes to mount (a host app adds its own beside them)."""
        routes: list[BaseRoute] = [
            Route("/runs/{run_id}/stream", _metrics.counted("stream", self.stream),
                  methods=["GET"], name="run_stream"),
            Route("/runs/{run_id}/stream", _metrics.counted("stream", self.resume),
                  methods=["POST"], name="run_stream_resume"),
            Route("/runs/{run_id}/ui-stream", _metrics.counted("ui-stream", self.ui_stream),
                  methods=["GET"], name="run_ui_stream"),
            Route("/runs/{run_id}/status", _metrics.counted("status", self.status),
                  methods=["GET"], name="run_status"),
        ]
        if isinstance(self.auth, TokenAuth):
            routes.append(Route("/runs/{run_id}/token",
                                _metrics.counted("token", self.refresh_token),
                                methods=["POST"], name="run_token"))
        return routes

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

    def issue_token(self, run_id: str, ttl: float | None = None, *,
                    scopes: Iterable[str] = ("read",), generation: int = 0) -> str:
        """A token for ``run_id`` (default lifetime ``settings.token_ttl``, scope ``read``).

        After ``streaming.tokens.revoke_tokens`` pass the generation it returned.
        """
        return self._signer().issue(run_id, ttl or self.settings.token_ttl, scopes=scopes,
                                    generation=generation)

    def issue_session(self, ttl: float | None = None) -> str:
        """A ``create`` token for a new page session (the reference app sets it as a cookie)."""
        return self._signer().issue(f"session-{secrets.token_hex(16)}",
                                    ttl or self.settings.token_ttl, scopes=("create",))

    def _signer(self) -> TokenSigner:
        if self.signer is None:
            raise ConfigurationError("no token secret: set STREAMING_TOKEN_SECRET")
        return self.signer

    async def _generation(self, run_id: str) -> int:
        return await atoken_generation((await self.start()).client, run_id, self.settings)

    async def authorize(self, request: Request, run_id: str | None,
                        scope: str = "read") -> None:
        """Raise ``AccessDenied`` unless the auth hook allows ``request`` ``scope`` on ``run_id``.

        Host apps guard their own routes with it: cancel (``scope="cancel"``), create
        (``run_id=None, scope="create"``). A store lookup the hook makes is bounded like any
        (``Unavailable`` past ``settings.request_timeout``).
        """
        if run_id is not None:
            validate_run_id(run_id)
        verdict = self.auth(request, run_id, scope)
        if inspect.isawaitable(verdict):
            verdict = await self.store(verdict)
        if verdict is not True:
            raise AccessDenied(f"not allowed to {scope} this run")

    # -- bounds ----------------------------------------------------------------------------

    async def store(self, awaitable: Awaitable[T], *,
                    errors: tuple[type[BaseException], ...] = ()) -> T:
        """``await awaitable``, bounded by ``settings.request_timeout``.

        A timeout or a store error (and any of ``errors``) raises ``Unavailable``, which every
        route answers with 503 and ``Retry-After``.
        """
        timeout = self.settings.request_timeout
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except TimeoutError as exc:
            raise Unavailable(f"the stream store did not answer within {timeout:g} s",
                              self.settings.retry_after) from exc
        except (*_STORE_ERRORS, *errors) as exc:
            raise Unavailable(f"the stream store failed: {type(exc).__name__}",
                              self.settings.retry_after) from exc

    async def read_json(self, request: Request) -> dict[str, Any]:
        """The request's JSON object body under this app's limits (see ``read_json_object``)."""
        return await read_json_object(request, self.settings)

    # -- handlers --------------------------------------------------------------------------

    async def stream(self, request: Request) -> Response:
        return await self._get_stream(request)

    async def ui_stream(self, request: Request) -> Response:
        return await self._get_stream(request, ui_message_response)

    async def _get_stream(self, request: Request, framing: Framing | None = None) -> Response:
        """A ``GET`` of a run's events (cursor from the headers or the query) in ``framing``."""
        run_id = request.path_params["run_id"]
        try:
            validate_run_id(run_id)
            source, raw = _query_cursor(request)
            cursor = _cursor_of(source, raw)
            await self.authorize(request, run_id)
            return await self._serve(run_id, source, cursor, pings=True, framing=framing)
        except (InvalidInput, AccessDenied, Unavailable) as exc:
            return error_response(exc)

    async def resume(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            validate_run_id(run_id)
            (source, raw), pings = _body_cursor(request, await self.read_json(request))
            cursor = _cursor_of(source, raw)
            await self.authorize(request, run_id)
            return await self._serve(run_id, source, cursor, pings=pings,
                                     framing=letta_response)
        except (InvalidInput, AccessDenied, Unavailable) as exc:
            return error_response(exc)

    async def status(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            await self.authorize(request, run_id)
            hub = await self.start()
            status = await self.store(arun_status(hub.client, run_id, self.settings))
        except (InvalidInput, AccessDenied, Unavailable) as exc:
            return error_response(exc)
        body = {"run_id": run_id, "state": status.state, "last_seq": status.last_seq,
                "attempt": status.attempt, "terminal": status.ending or None}
        found = status.state != "missing" or status.stream
        return JSONResponse(body, status_code=200 if found else 404, headers=NO_STORE)

    async def refresh_token(self, request: Request) -> Response:
        """``POST /runs/{run_id}/token``: a fresh token with the presented one's scopes."""
        run_id = request.path_params["run_id"]
        auth = self.auth
        assert isinstance(auth, TokenAuth)  # the route exists only then
        try:
            validate_run_id(run_id)
            token = request_token(request)
            if token is None:
                raise Unauthenticated("a token is required: Authorization: Bearer or ?token=")
            claims = auth.signer.check(token, run_id, None)
            await self.store(auth.check_generation(run_id, claims))
        except (InvalidInput, AccessDenied, Unavailable) as exc:
            return error_response(exc)
        ttl = self.settings.token_ttl
        fresh = auth.signer.issue(run_id, ttl, scopes=claims.scopes,
                                  generation=claims.generation)
        body = {"run_id": run_id, "token": fresh, "scopes": sorted(claims.scopes),
                "expires_in": int(ttl)}
        return JSONResponse(body, headers=NO_STORE)

    async def _serve(self, run_id: str, source: str, cursor: int, *, pings: bool,
                     framing: Framing | None = None) -> Response:
        reader = (await self.start()).read(run_id, cursor)
        try:
            await self.store(reader.open())
        except InvalidCursor as exc:  # past the run's last seq
            raise InvalidCursor(f"{source}: {exc}") from exc
        if reader.exhausted:
            return Response(status_code=204, headers=NO_STORE)
        interval = self.settings.ping_interval if pings else None
        reader = cast(HubReader, _Observed(reader))  # metrics and log lines follow its events
        if framing is not None:
            return await framing(reader, interval, self._guard)
        # The reader marks its own silences: no task and no wait() per event and client.
        frames = timed_frames(reader.timed(interval), retry_ms=self.retry_ms)
        return StreamResponse(self._guard(reader, frames), ping=0, headers=NO_STORE)

    async def _guard(self, reader: HubReader, frames: AsyncIterator[str]) -> AsyncIterator[bytes]:
        try:
            async for frame in frames:
                yield frame.encode()
        except (*_STORE_ERRORS, ReaderError) as exc:  # type: ignore[misc]  # a tuple of classes
            # The store is unreachable or the hub closed (shutdown): ending the response
            # without a terminal event makes the client reconnect, here or to another
            # process, and resume from its last id: nothing is lost or repeated.
            _metrics.store_error("web")
            logger.warning("stream of run %s cut: %s", reader.cursor.keys.run_id, exc,
                           extra=run_extra(reader.cursor.keys.run_id, reader.attempt))
        finally:
            ending = reader.terminal.value if reader.terminal else "the client left"
            logger.info("stream of run %s closed at seq %d: %s", reader.cursor.keys.run_id,
                        reader.last_seq, ending,
                        extra=run_extra(reader.cursor.keys.run_id, reader.attempt))


class _Observed:
    """A ``HubReader`` as it is, but its events pass through the web tier's metrics
    (``streaming.metrics.observe_events``) and its ``attempt`` follows ``restarted`` events."""

    def __init__(self, reader: HubReader) -> None:
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def __aiter__(self) -> AsyncIterator[Event]:
        return cast(AsyncIterator[Event], self.timed(None))

    def timed(self, idle: float | None) -> AsyncIterator[Event | None]:
        """``HubReader.timed``, observed (the SSE response reads this one)."""
        run_id = self._reader.cursor.keys.run_id
        return _metrics.observe_events(run_id, _follow_attempt(self._reader, idle))


async def _follow_attempt(reader: HubReader,
                          idle: float | None) -> AsyncGenerator[Event | None, None]:
    """``reader.timed(idle)``; a ``restarted`` event updates ``reader.attempt`` (log lines)."""
    events = cast(AsyncGenerator[Event | None, None], reader.timed(idle))  # a generator
    async with contextlib.aclosing(events):  # leaves the hub as soon as the client does
        async for event in events:
            if event is not None and event.event == "restarted":
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    reader.attempt = int(json.loads(event.data)["attempt"])
            yield event


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


def _cursor_of(source: str, raw: object) -> int:
    try:
        return parse_cursor(raw)
    except InvalidCursor as exc:
        raise InvalidCursor(f"{source}: {exc}") from exc


async def read_json_object(request: Request, settings: Settings | None = None) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); 4xx errors otherwise.

    At most ``settings.max_body_bytes`` are read (``RequestTooLarge``, 413: refused from its
    ``Content-Length`` before reading, or as soon as the body grows past the limit); the body
    must be UTF-8 JSON (``InvalidInput``, 400) as ``parse_json_object`` checks it.
    """
    settings = settings or Settings()
    limit = settings.max_body_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise RequestTooLarge(f"the request body of {length} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"the request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return parse_json_object(b"".join(chunks), settings.max_json_depth)


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def parse_json_object(raw: bytes, max_depth: int = 32) -> dict[str, Any]:
    """``raw`` as a JSON object ({} when blank), or ``InvalidInput`` saying what is wrong.

    Refused: text that is not UTF-8, nesting deeper than ``max_depth`` (checked before
    parsing, so no depth reaches the parser's recursion), ``NaN`` and ``Infinity``, strings
    with lone surrogates (``"\\ud800"``: not text, and not storable as UTF-8), and any value
    that is not an object.
    """
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the request body is not UTF-8 text: {exc.reason}") from exc
    _check_depth(text, max_depth)
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    _check_text(body)
    return body


def _check_depth(text: str, max_depth: int) -> None:
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > max_depth:
            raise InvalidInput(f"the request body nests deeper than {max_depth} levels")


def _no_constant(name: str) -> Any:
    raise InvalidInput(f"the request body holds {name}: numbers must be finite")


def _check_text(value: Any) -> None:
    """Every string and key in ``value`` is storable text (no lone surrogate)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInput("the request body holds a lone surrogate "
                                   f"({item[exc.start]!r}): not text") from exc


_ERROR_TYPES: list[tuple[type[Exception], int, str]] = [
    (InvalidRunId, 400, "invalid_run_id"),
    (InvalidCursor, 400, "invalid_cursor"),
    (RequestTooLarge, 413, "body_too_large"),
    (InvalidInput, 400, "invalid_request"),
    (Unauthenticated, 401, "unauthenticated"),
    (AccessDenied, 403, "forbidden"),
    (Unavailable, 503, "unavailable"),
]


class ErrorResponse(JSONResponse):
    """A JSON error ``{"error": {"type", "message", ...}}``; ``error_type`` is its type (the
    responses metric counts by it)."""

    def __init__(self, error: dict[str, Any], status: int, headers: dict[str, str]) -> None:
        super().__init__({"error": error}, status, headers)
        self.error_type = str(error["type"])


def error_response(exc: InvalidInput | AccessDenied | Unavailable) -> JSONResponse:
    """The JSON error of a refused request: ``{"error": {"type", "message"}}``.

    An ``InvalidInput`` with a ``field`` attribute names it (``"field"``); a 503 carries
    ``Retry-After``.
    """
    status, kind = next((s, k) for t, s, k in _ERROR_TYPES if isinstance(exc, t))
    headers = dict(NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="streams"'
    if isinstance(exc, Unavailable):
        logger.warning("answered 503: %s (%r)", exc, exc.__cause__)
        _metrics.store_error("web")
        headers["Retry-After"] = str(exc.retry_after)
    error: dict[str, Any] = {"type": kind, "message": str(exc)}
    field = getattr(exc, "field", None)
    if field is not None:
        error["field"] = field
    return ErrorResponse(error, status, headers)


# -- access logs ----------------------------------------------------------------------------

_QUERY_TOKEN = re.compile(r"([?&](?:token|access_token)=)[^&\s\"']*", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Replaces the value of ``token=`` query parameters in log records with ``[redacted]``.

    Covers the request line of uvicorn's access log (its arguments) and any message text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: _redact_arg(value) for key, value in record.args.items()}
        return True


def _redact_arg(arg: object) -> object:
    return redact_query_tokens(arg) if isinstance(arg, str) else arg


def redact_query_tokens(text: str) -> str:
    """``text`` with every ``token=...`` query value replaced by ``[redacted]``."""
    return _QUERY_TOKEN.sub(r"\1[redacted]", text) if "token=" in text.lower() else text


def install_log_redaction(*names: str) -> RedactTokens:
    """Add ``RedactTokens`` to the named loggers (default: uvicorn's and gunicorn's access
    logs) and to their handlers, once; returns the filter."""
    found = RedactTokens()
    for name in names or ("uvicorn.access", "gunicorn.access"):
        target = logging.getLogger(name)
        existing = next((f for f in target.filters if isinstance(f, RedactTokens)), None)
        if existing is None:
            target.addFilter(found)
        for handler in target.handlers:
            if not any(isinstance(f, RedactTokens) for f in handler.filters):
                handler.addFilter(found)
    return found
