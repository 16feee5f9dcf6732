"""The Celery app of the stream workers: ``celery -A worker worker`` starts one.

``worker.app`` is built on first access from the environment (see ``worker.config``): importing
this package reads no variable and connects to nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

# Imported now, not on first access: `celery -A` puts the working directory on sys.path only
# while it imports this package. None of these modules has side effects at import.
from .config import WorkerConfig
from .factory import StreamingCelery, create_app

__all__ = ["StreamingCelery", "WorkerConfig", "app", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _app() -> StreamingCelery:
    return create_app(WorkerConfig.from_env())
