"""Log lines about a run carry ``run=<id> attempt=<n>``, so one ``grep`` follows it everywhere.

Code that works on a run either binds it for the lines logged meanwhile (``with bind(run_id,
attempt):``, a context variable: per thread and per asyncio task) or passes
``extra=run_extra(run_id, attempt)`` to one call. ``RunFilter`` on a handler turns either into
the record's ``run_id``, ``attempt`` and ``run`` attributes and, by default, writes
``run=<id> attempt=<n> `` at the start of its message (``attempt=-`` while it is unknown), so
any log format shows it. ``install()`` puts the filter on a logger's handlers.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["RunFilter", "bind", "install", "run_extra", "run_label"]

_bound: contextvars.ContextVar[tuple[str, int | None] | None] = contextvars.ContextVar(
    "streaming_run", default=None)


@contextlib.contextmanager
def bind(run_id: str, attempt: int | None = None) -> Iterator[None]:
    """Lines logged in this context (thread or task) are about ``run_id``'s ``attempt``."""
    token = _bound.set((run_id, attempt))
    try:
        yield
    finally:
        _bound.reset(token)


def run_extra(run_id: str, attempt: int | None = None) -> dict[str, Any]:
    """``extra=`` for one log call about ``run_id``."""
    return {"run_id": run_id, "attempt": attempt}


def run_label(run_id: str, attempt: int | None) -> str:
    """``run=<id> attempt=<n>``: what every line about a run carries."""
    return f"run={run_id} attempt={'-' if attempt is None else attempt}"


class RunFilter(logging.Filter):
    """Adds the run a record is about (``run_id``, ``attempt``, ``run``); lets every record
    through. ``prefix``: also start its message with ``run=<id> attempt=<n>``."""

    def __init__(self, *, prefix: bool = True) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        run = self.run_of(record)
        label = run_label(*run) if run else ""
        record.run = label
        if run is None or getattr(record, "_run_prefixed", False):
            return True
        record.run_id, record.attempt = run
        if self.prefix:
            # The record is shared by every handler: prefix it once.
            record.msg = f"{label} {record.msg}"
            record._run_prefixed = True
        return True

    def run_of(self, record: logging.LogRecord) -> tuple[str, int | None] | None:
        """The run ``record`` is about: its ``extra``, else the bound one, else None."""
        run_id = getattr(record, "run_id", None)
        if isinstance(run_id, str):
            attempt = getattr(record, "attempt", None)
            return run_id, attempt if isinstance(attempt, int) else None
        return _bound.get()


def install(logger: logging.Logger | None = None, run_filter: RunFilter | None = None) -> None:
    """Put ``run_filter`` (default: a prefixing ``RunFilter``) on ``logger``'s handlers (default:
    the root logger's), once each."""
    logger = logger or logging.getLogger()
    run_filter = run_filter or RunFilter()
    for handler in logger.handlers:
        if not any(isinstance(f, RunFilter) for f in handler.filters):
            handler.addFilter(run_filter)
