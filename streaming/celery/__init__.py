"""Streaming for your own Celery app and tasks. Imported by workers and by the processes that
start runs; readers and the web tier (``streaming``, ``streaming.web``, ``streaming.django``,
``streaming.fastapi``) never import it, nor Celery.

In the module that makes your app (``proj/celery.py``)::

    from celery import Celery
    import streaming.celery

    app = Celery("proj")
    streaming.celery.install(app)              # REDIS_URL, STREAMING_* (or pass Settings)

In your tasks (``tasks.py``)::

    from streaming.celery import StreamingTask

    @app.task(base=StreamingTask, queue="llm", autoretry_for=(ConnectionError,))
    async def answer(question: str):           # sync or async generator: yields are events
        yield {"text": "..."}

From a web process, by task name (no task code imported)::

    runs = streaming.celery.Runs(app)
    run_id = runs.delay("proj.tasks.answer", "Why is the sky blue?")   # run id == task id
    runs.cancel(run_id, "user pressed stop")

- ``install(app, settings=None, options=None)``: the worker side (a bootstep of this app).
- ``StreamingTask``: the base of streaming tasks; ``streaming_task(...)`` is the decorator.
- ``RunHandle``: ``self.stream`` in a bound streaming task: ``send()``, ``cancel_reason()``.
- ``Runs``: start (``delay``/``apply_async``), cancel and look up runs by task name.
- ``Event``: a named SSE event to yield; ``StreamingOptions``: per-app task defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .app import Streaming, StreamingOptions, install, streaming_of
from .framing import Event, frame
from .handle import RunHandle, Summary
from .runs import Runs, new_run_id
from .task import STREAMING, StreamingTask

__all__ = [
    "STREAMING",
    "Event",
    "RunHandle",
    "Runs",
    "Streaming",
    "StreamingOptions",
    "StreamingTask",
    "Summary",
    "frame",
    "install",
    "new_run_id",
    "streaming_of",
    "streaming_task",
]


def streaming_task(app: Any = None, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``@app.task(base=StreamingTask, **options)``, or ``@shared_task(...)`` without ``app``."""
    if app is None:
        from celery import shared_task

        return shared_task(base=StreamingTask, **options)  # type: ignore[no-any-return]
    return app.task(base=StreamingTask, **options)  # type: ignore[no-any-return]
