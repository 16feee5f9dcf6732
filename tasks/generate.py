"""The ``tasks.generate`` Celery task: thin; the work is in ``tasks.execute``."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from streaming import logs
from streaming.errors import InvalidRunId

from . import GENERATE
from .errors import RunRefused
from .execute import execute

__all__ = ["generate"]


# A refused run (unknown generator, bad params, a bad run id) is the caller's error: logged
# without a traceback.
@shared_task(bind=True, name=GENERATE, throws=(RunRefused, InvalidRunId))
def generate(self: Task, run_id: str, generator: str, params: object = None) -> dict[str, Any]:
    """Stream the registered ``generator``'s output with ``params`` (a JSON object) into the
    run ``run_id``; returns a summary: chunks, bytes, seconds, ending, last_seq."""
    with logs.bind(run_id):  # every line about the run says which (streaming.logs)
        return execute(self, run_id, generator, params)
