"""The sweep does not forget an ended run whose Celery state it could not store.

Found by the chaos soak: a sweep's state write failed during a worker-store cut, the run had
already left the run index, and its Celery state stayed STREAMING for good.
"""

from __future__ import annotations

from celery import Celery
from celery.result import AsyncResult

from streaming.celery import install
from streaming.celery.sweep import Sweeper
from streaming.client import sync_client
from streaming.control import end_run, mark_pending
from streaming.embedded import free_port
from streaming.settings import Settings
from streaming.wire import RUN_INDEX, Terminal


def app_with_backend(name: str, backend: str, settings: Settings) -> Celery:
    app = Celery(name, set_as_current=False)
    app.conf.update(broker_url=backend, result_backend=backend, redis_socket_timeout=1,
                    redis_socket_connect_timeout=1, result_backend_always_retry=False,
                    redis_retry_on_timeout=False)
    install(app, settings)
    return app


def test_a_state_that_could_not_be_stored_is_tried_again_by_any_workers_sweep(
        redis_url: str, run_id: str) -> None:
    settings = Settings(redis_url=redis_url)
    client = sync_client(settings)
    mark_pending(client, run_id, settings)
    assert end_run(client, run_id, settings, Terminal.LOST, "gone", when="always")

    down = app_with_backend("backend-down", f"redis://127.0.0.1:{free_port()}/0", settings)
    first = Sweeper(install(down, settings))
    assert run_id in first.sweep_once()  # found ended: its state is set next round
    assert client.zscore(RUN_INDEX, run_id) is None
    first.sweep_once()  # the result backend is away: the run goes back into the index
    assert client.zscore(RUN_INDEX, run_id) == 0
    first.stop()

    up = app_with_backend("backend-up", redis_url, settings)
    other = Sweeper(install(up, settings))  # another worker, say after the first one died
    assert run_id in other.sweep_once()
    other.sweep_once()
    assert AsyncResult(run_id, app=up).state == "FAILURE"
    other.stop()
    client.close()
