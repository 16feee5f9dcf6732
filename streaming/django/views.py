"""The async views of ``streaming.django.urls``: a run's SSE stream and its status."""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from django.conf import settings as django_settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.module_loading import import_string
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..control import arun_status
from ..errors import AccessDenied, InvalidCursor, InvalidInput, ReaderError, Unauthenticated
from ..hub import HubReader, ReaderHub
from ..settings import Settings
from ..sse import sse_frames
from ..wire import parse_cursor, validate_run_id

__all__ = ["authenticated", "status", "stream", "stream_settings"]

logger = logging.getLogger(__name__)
Authorize = Callable[[HttpRequest, str], bool | Awaitable[bool]]
NO_STORE = {"Cache-Control": "no-store"}
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReaderHub] = (
    weakref.WeakKeyDictionary())


def stream_settings() -> Settings:
    """``settings.STREAMING`` (a ``Settings`` or a dict of its fields), else the environment."""
    configured = getattr(django_settings, "STREAMING", None)
    if isinstance(configured, Settings):
        return configured
    return Settings.from_env(**dict(configured or {}))


async def authenticated(request: HttpRequest, run_id: str) -> bool:
    """The default rule: any logged-in user (Django's own authentication)."""
    user = await request.auser()
    if not user.is_authenticated:
        raise Unauthenticated("log in to read streams")
    return True


async def stream(request: HttpRequest, run_id: str) -> HttpResponse:
    """The run's events after the cursor, as ``text/event-stream``; 204 past its ending."""
    if not isinstance(request, ASGIRequest):
        return _wsgi_refused()
    try:
        await _authorize(request, run_id)
        cursor = _cursor(request)
        reader = (await _hub()).read(run_id, cursor)
        await reader.open()
    except (InvalidInput, AccessDenied) as exc:
        return _error(exc)
    except _TRANSIENT as exc:
        return _unavailable(exc)
    if reader.exhausted:
        return HttpResponse(status=204, headers=NO_STORE)
    return StreamingHttpResponse(_frames(reader), content_type="text/event-stream",
                                 headers={**NO_STORE, "X-Accel-Buffering": "no"})


async def status(request: HttpRequest, run_id: str) -> HttpResponse:
    """``{"run_id", "state", "last_seq", "attempt", "terminal"}``; 404 for an unknown run."""
    try:
        await _authorize(request, run_id)
        hub = await _hub()
        found = await arun_status(hub.client, run_id, hub.settings)
    except (InvalidInput, AccessDenied) as exc:
        return _error(exc)
    except _TRANSIENT as exc:
        return _unavailable(exc)
    body = {"run_id": run_id, "state": found.state, "last_seq": found.last_seq,
            "attempt": found.attempt, "terminal": found.ending or None}
    known = found.state != "missing" or found.stream
    return JsonResponse(body, status=200 if known else 404, headers=NO_STORE)


async def _authorize(request: HttpRequest, run_id: str) -> None:
    validate_run_id(run_id)
    rule: Any = getattr(django_settings, "STREAMING_AUTHORIZE", None) or authenticated
    decide: Authorize = import_string(rule) if isinstance(rule, str) else rule
    verdict = decide(request, run_id)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    if verdict is not True:
        raise AccessDenied("not allowed to read this run")


def _cursor(request: HttpRequest) -> int:
    for source, raw in (("Last-Event-ID header", request.headers.get("Last-Event-ID")),
                        ("last_event_id", request.GET.get("last_event_id")),
                        ("starting_after", request.GET.get("starting_after"))):
        if raw is not None:
            try:
                return parse_cursor(raw)
            except InvalidCursor as exc:
                raise InvalidCursor(f"{source}: {exc}") from exc
    return 0


async def _hub() -> ReaderHub:
    """The reader hub of the running event loop, started on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = ReaderHub(stream_settings())
        await hub.start()
    return hub


async def _frames(reader: HubReader) -> AsyncIterator[bytes]:
    try:
        async for frame in sse_frames(reader, reader.hub.settings.ping_interval):
            yield frame.encode()
    except (*_TRANSIENT, ReaderError) as exc:
        # Ended without a terminal event: the client reconnects and resumes from its last id.
        logger.warning("stream of run %s cut: %s", reader.cursor.keys.run_id, exc)


def _error(exc: InvalidInput | AccessDenied) -> JsonResponse:
    if isinstance(exc, InvalidInput):
        code, kind = 400, "invalid_request"
    else:
        code, kind = (401, "unauthenticated") if isinstance(exc, Unauthenticated) else (
            403, "forbidden")
    return JsonResponse({"error": {"type": kind, "message": str(exc)}}, status=code,
                        headers=NO_STORE)


def _wsgi_refused() -> JsonResponse:
    # Under WSGI each async view runs on an event loop of its own that is gone before the
    # response is sent: a stream cannot be followed there. Say so instead of hanging.
    body = {"error": {"type": "asgi_required", "message":
                      "streams need an ASGI server (uvicorn, daphne, hypercorn); this "
                      "request came through WSGI"}}
    return JsonResponse(body, status=500, headers=NO_STORE)


def _unavailable(exc: BaseException) -> JsonResponse:
    logger.warning("stream store unreachable: %s", exc)
    body = {"error": {"type": "unavailable", "message": "the stream store is unreachable"}}
    return JsonResponse(body, status=503, headers={**NO_STORE, "Retry-After": "2"})
