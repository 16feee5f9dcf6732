"""The Celery app of the stream workers: ``celery -A worker worker`` starts one.

``worker.app`` is built on first access from the environment (see ``worker.config``), so
importing this package reads nothing and connects to nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _app() -> Any:
    from .config import WorkerConfig
    from .factory import create_app

    return create_app(WorkerConfig.from_env())
