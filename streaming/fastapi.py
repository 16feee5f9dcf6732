"""Run streams as a FastAPI router, with their OpenAPI entries. No Celery import.

    from fastapi import Depends, FastAPI
    from streaming.fastapi import StreamRouter

    async def may_read(run_id: str, user: User = Depends(current_user)) -> bool:
        return await owns(user, run_id)                 # any FastAPI dependency

    streams = StreamRouter(Settings.from_env(), authorize=may_read)
    app = FastAPI(lifespan=streams.lifespan)
    app.include_router(streams.router, prefix="/v1")

Routes: ``GET /runs/{run_id}/stream`` (SSE; cursor from ``Last-Event-ID``, else
``last_event_id``, else ``starting_after``) and ``GET /runs/{run_id}/status``. They are
``streaming.web``'s, so responses, errors and limits are the same. Without ``authorize``,
reading needs a read token (``STREAMING_TOKEN_SECRET``; ``streams.issue_token(run_id)``).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at run time,
# and they name a type made inside a method.
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

try:
    from fastapi import APIRouter, Depends, Header, Query, Request
    from fastapi.responses import Response
    from pydantic import BaseModel
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "streaming.fastapi needs the fastapi extra: pip install 'celery-streaming[fastapi]'"
    ) from exc

from .errors import AccessDenied
from .settings import Settings
from .web import StreamEndpoints, error_response

__all__ = ["RunStatusBody", "StreamRouter"]

_SSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}},
              "description": "The run's events after the cursor, each with `id: <seq>`."},
        204: {"description": "The cursor already has the run's ending."},
        400: {"description": "A bad run id or cursor."},
        401: {"description": "No or bad credentials."},
        403: {"description": "Not allowed to read this run."}}


class RunStatusBody(BaseModel):
    """A run's state in the stream store."""

    run_id: str
    state: str
    last_seq: int
    attempt: int
    terminal: str | None


def _allow(request: Any, run_id: str | None, scope: str) -> bool:
    return True  # the router's `authorize` dependency has decided already


class StreamRouter:
    """The stream routes as an ``APIRouter`` (``.router``), and the hub they share."""

    def __init__(self, settings: Settings, *, authorize: Callable[..., Any] | None = None,
                 retry_ms: int | None = None, tags: list[str] | None = None) -> None:
        self.endpoints = StreamEndpoints(settings, retry_ms=retry_ms,
                                         auth=_allow if authorize else None)
        self.router = APIRouter(tags=list(tags or ["streams"]))
        self._add_routes(authorize or _always)

    def _add_routes(self, authorize: Callable[..., Any]) -> None:
        endpoints = self.endpoints
        Allowed = Annotated[bool, Depends(authorize)]

        @self.router.get("/runs/{run_id}/stream", responses=_SSE, response_class=Response,
                         summary="Stream a run's events (SSE, resumable)")
        async def run_stream(
            request: Request, run_id: str, allowed: Allowed,
            last_event_id: Annotated[int | None, Query(ge=0)] = None,
            starting_after: Annotated[int | None, Query(ge=0)] = None,
            last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        ) -> Response:
            if allowed is not True:
                return error_response(AccessDenied("not allowed to read this run"))
            return await endpoints.stream(request)

        @self.router.get("/runs/{run_id}/status", response_model=RunStatusBody,
                         responses={404: {"description": "Unknown run."}},
                         summary="A run's state")
        async def run_status(request: Request, run_id: str, allowed: Allowed) -> Response:
            if allowed is not True:
                return error_response(AccessDenied("not allowed to read this run"))
            return await endpoints.status(request)

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Start the reader hub with the app and close it at shutdown."""
        async with self.endpoints.lifespan(app):
            yield

    def issue_token(self, run_id: str, ttl: float | None = None) -> str:
        """A read token for ``run_id`` (when reading is guarded by tokens)."""
        return self.endpoints.issue_token(run_id, ttl)


def _always() -> bool:
    return True  # token checks happen in the endpoint itself
