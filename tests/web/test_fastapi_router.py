"""``streaming.fastapi.StreamRouter`` in a FastAPI app over real HTTP (uvicorn, httpx-sse):
routes in OpenAPI, access decided by the app's own dependency, resume by Last-Event-ID."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, Header
from httpx_sse import connect_sse

from streaming.fastapi import StreamRouter
from streaming.settings import Settings
from streaming.writer import StreamWriter
from tests.web.http_server import ServerThread


async def current_user(x_user: Annotated[str | None, Header()] = None) -> str | None:
    return x_user


async def may_read(run_id: str, user: Annotated[str | None, Depends(current_user)]) -> bool:
    return user is not None and run_id.startswith(f"{user}-")


@pytest.fixture(scope="module")
def served(redis_url: str) -> Iterator[tuple[str, Settings]]:
    settings = Settings(redis_url=redis_url, lease_ttl=1.0, producer_timeout=5.0,
                        block_timeout=1.0)
    streams = StreamRouter(settings, authorize=may_read)
    app = FastAPI(lifespan=streams.lifespan)
    app.include_router(streams.router, prefix="/v1")
    with ServerThread(app) as server:
        yield server.url, settings


def write_run(settings: Settings, run_id: str, count: int) -> None:
    writer = StreamWriter(settings).start()
    try:
        run = writer.open(run_id)
        for index in range(count):
            run.send(f'{{"i": {index}}}')
        run.finish()
    finally:
        writer.stop()


def test_the_routes_are_in_openapi(served):
    url, _ = served
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    stream = paths["/v1/runs/{run_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert {p["name"] for p in stream["parameters"]} >= {"run_id", "last_event_id",
                                                         "starting_after", "Last-Event-ID"}
    status = paths["/v1/runs/{run_id}/status"]["get"]
    assert status["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "RunStatusBody")


def test_the_apps_dependency_decides_and_readers_resume(served):
    url, settings = served
    run_id = f"alice-{uuid.uuid4().hex}"
    write_run(settings, run_id, 5)
    with httpx.Client(base_url=url, headers={"X-User": "alice"}) as alice:
        with connect_sse(alice, "GET", f"/v1/runs/{run_id}/stream") as sse:
            full = [(e.id, e.data) for e in sse.iter_sse()]
        assert [d for _, d in full] == [f'{{"i": {i}}}' for i in range(5)] + ["[DONE]"]
        with connect_sse(alice, "GET", f"/v1/runs/{run_id}/stream",
                         headers={"Last-Event-ID": "3"}) as sse:
            assert [(e.id, e.data) for e in sse.iter_sse()] == full[3:]
        assert alice.get(f"/v1/runs/{run_id}/status").json()["state"] == "ended"
    with httpx.Client(base_url=url, headers={"X-User": "bob"}) as bob:
        assert bob.get(f"/v1/runs/{run_id}/stream").status_code == 403
        assert bob.get(f"/v1/runs/{run_id}/status").status_code == 403
