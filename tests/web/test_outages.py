"""The store away, for every route of the reference app (issue 15): through a proxy that refuses
connections (Redis down) and one that stalls them (a silent network), every route answers 503
with ``Retry-After`` within ``request_timeout`` and a margin, never a 500 and never a hang. The
routes are read from the app itself, so a route added later is covered (or this test says how
it answered). The launcher is the real tasks API (``tasks.api.Runs``), its store and broker
behind the same proxy.

Answer times are printed (``pytest -s``); the assertion is only the bound: a hang would take the
client's 30 s timeout.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from celery import Celery
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    TryAgainError,
)
from starlette.applications import Starlette
from starlette.routing import Route

from examples.app import create_app
from streaming.client import sync_client
from streaming.control import mark_pending
from streaming.settings import Settings
from streaming.web import StreamEndpoints
from tasks.api import Runs
from tasks.schemas import ParamsSchemas
from tests.proxy import Proxy, port_of
from tests.web.http_server import ServerThread

pytestmark = pytest.mark.fault
SECRET = "outage-suite-" + "s" * 32
REQUEST_TIMEOUT = 1.0
#: The answer must come within the request timeout and this margin (redis-py's own retries,
#: a loaded machine); a hang would run into the client's 30 s timeout.
MARGIN = 3.0
#: Routes that answer without the stream store (the page; a process's liveness and metrics).
STORELESS = {"/", "/livez", "/metrics"}


@contextmanager
def behind_proxy(settings: Settings, redis_url: str) -> Iterator[tuple[Proxy, str, Any]]:
    proxy = Proxy(port_of(redis_url))
    local = settings.replace(redis_url=proxy.url, token_secret=SECRET,
                             request_timeout=REQUEST_TIMEOUT)
    celery = Celery("outage", broker=proxy.url, set_as_current=False)
    celery.conf.update(task_default_queue=f"outage-{uuid.uuid4().hex}",
                       broker_connection_timeout=2, broker_connection_max_retries=1)
    runs = Runs(celery, sync_client(local), local, ParamsSchemas.load())
    app = create_app(local, launcher=runs)
    try:
        with ServerThread(app) as server:
            yield proxy, server.url, app
    finally:
        proxy.close()
        runs.client.close()


def requests_for(app: Starlette, run_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """One request per method of every route of ``app`` (static files aside), each with a
    token of every run scope in ``?token=`` (the client holds the page session's cookie)."""
    streams: StreamEndpoints = app.state.streams
    token = streams.issue_token(run_id, scopes=("read", "cancel"))
    requests = []
    for route in app.routes:
        if not isinstance(route, Route):
            continue
        path = route.path.replace("{run_id}", run_id)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            options: dict[str, Any] = {"params": {"token": token}}
            if method == "POST":
                options["json"] = {"text": "hello"} if path == "/runs" else {"starting_after": 0}
            requests.append((method, path, options))
    return requests


@pytest.mark.parametrize("mode", ["refuse", "stall"])
def test_every_route_answers_503_in_bounded_time_when_the_store_is_away(
        settings, redis_url, redis_client, run_id, mode):
    mark_pending(redis_client, run_id, settings)
    with behind_proxy(settings, redis_url) as (proxy, url, app), \
            httpx.Client(base_url=url, timeout=30) as client:
        client.get("/")
        requests = requests_for(app, run_id)
        token = requests[0][2]["params"]
        healthy = client.get(f"/runs/{run_id}/status", params=token)
        assert healthy.status_code == 200  # the app's connections are open and in use
        if mode == "refuse":
            proxy.set_refuse(True)
        else:
            proxy.stall.set()
        times = {}
        for method, path, options in requests:
            started = time.monotonic()
            response = client.request(method, path, **options)
            times[f"{method} {path.replace(run_id, '{id}')}"] = time.monotonic() - started
            if path in STORELESS:
                assert response.status_code == 200, (method, path, response.text)
                continue
            assert response.status_code == 503, (method, path, response.text)
            assert response.headers["retry-after"] == "2"
        proxy.stall.clear()
        proxy.set_refuse(False)
        proxy.cut()
        # Back: the same routes answer again (the app reconnects on its own).
        deadline = time.monotonic() + 20
        while client.get(f"/runs/{run_id}/status", params=token).status_code != 200:
            assert time.monotonic() < deadline, "the app did not reconnect"
            time.sleep(0.2)
    print(f"\n{mode}: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in times.items()))
    slowest = max(times.values())
    assert slowest < REQUEST_TIMEOUT + MARGIN, times


@pytest.mark.parametrize("error", [
    ClusterDownError("CLUSTERDOWN The cluster is down"), TryAgainError("TRYAGAIN"),
    MovedError("3999 127.0.0.1:6381"), AskError("3999 127.0.0.1:6381"),
    NoPermissionError("NOPERM this user has no permissions"), ConnectionResetError(),
], ids=lambda e: type(e).__name__)
def test_cluster_and_permission_errors_become_503_not_500(settings, error):
    """What a cluster raises mid-failover, from wherever the store is touched (here an access
    hook that looks the caller up in the store), is a 503 like an outage."""

    async def hook(request: Any, run_id: str | None, scope: str) -> bool:
        raise error

    streams = StreamEndpoints(settings.replace(request_timeout=REQUEST_TIMEOUT), auth=hook)
    app = Starlette(routes=streams.routes, lifespan=streams.lifespan)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path in (("GET", "stream"), ("POST", "stream"), ("GET", "status")):
            response = client.request(method, f"/runs/run-1/{path}")
            assert response.status_code == 503, response.text
            assert "Retry-After" in response.headers
