"""``tasks.generate``: a ``StreamingTask`` that runs a registered generator, picked by name.

The run id is the ``run_id`` argument (the caller names it; ``tasks.api.Runs`` sends it as the
task id too). A refused run (unknown generator, bad params, a bad run id) is the caller's error:
the run ends ``error`` and it is logged without a traceback. A generator's transient errors
(``retry_for`` of its registration) are retried up to ``WORKER_MAX_RETRIES`` times, and a
generator registered ``resumable`` continues a restarted run after its stored chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import shared_task

from streaming.celery import StreamingTask
from streaming.errors import InvalidRunId, UnsupportedChunk

from . import GENERATE
from .errors import RunRefused
from .registry import GeneratorSpec, RunContext, registry

__all__ = ["Generate", "generate"]


class Generate(StreamingTask):  # type: ignore[misc]
    """What ``tasks.generate`` adds to a streaming task: its run id, retries and resumption
    come from the call's arguments and the generator's registration."""

    def run_id_for(self, task_id: str, args: Any, kwargs: Any) -> Any:
        """The ``run_id`` argument as sent (the claim validates it)."""
        if isinstance(kwargs, Mapping) and "run_id" in kwargs:
            return kwargs["run_id"]
        return args[0] if args else task_id

    def resumes(self) -> bool:
        spec = _spec(self.request.kwargs)
        return spec is not None and spec.resumable

    def retry_stream(self, exc: Exception) -> Mapping[str, Any] | None:
        spec = _spec(self.request.kwargs)
        retries, limit = self.request.retries, self.app.config.max_retries
        if spec is None or not isinstance(exc, spec.retry_for) or retries >= limit:
            return None
        return {"countdown": min(2**retries, 30), "max_retries": limit}


def _spec(kwargs: Any) -> GeneratorSpec | None:
    try:
        return registry.get(kwargs.get("generator") if isinstance(kwargs, Mapping) else None)
    except RunRefused:
        return None


@shared_task(base=Generate, bind=True, name=GENERATE,
             throws=(RunRefused, InvalidRunId, UnsupportedChunk))
def generate(self: Generate, run_id: str, generator: str, params: object = None) -> Any:
    """Stream the registered ``generator``'s output with ``params`` (a JSON object) into the
    run ``run_id``; the task returns a summary: chunks, bytes, seconds, ending, last_seq."""
    spec = registry.get(generator)
    parsed = spec.parse(params)
    handle = self.stream
    handle.total = spec.total(parsed) if spec.total else None
    resumed = handle.resumed_chunks if spec.resumable else 0
    context = RunContext(handle.run_id, handle.attempt, self.app.config, resumed_chunks=resumed)
    return spec.function(parsed, context)
