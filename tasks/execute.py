"""One attempt of a run, from claiming it to its one ending. The Celery task only calls this.

How an attempt ends:

- the generator ends: ``done``; a cancel was requested: ``cancelled`` (the task succeeds);
- ``SoftTimeLimitExceeded``: ``timeout``; a refused run (unknown generator, bad params) or a
  generator error: ``error`` with its type and message (the task then fails, so Flower shows
  it); an error its generator lists as transient: the task is retried and the run continues;
- another live attempt holds the run (a duplicate delivery) or the run has ended: nothing is
  written and the task returns quietly; this attempt was fenced off by a newer one: the same;
- too many attempts (a run that kills its worker each time): ``lost``.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from streaming import logs
from streaming.control import cancel_reason
from streaming.errors import FencedError, RunBusyError, RunClosedError
from streaming.wire import Terminal
from streaming.writer import RunWriter

from .errors import RunRefused
from .registry import GeneratorSpec, RunContext, registry
from .runner import CancelWatch, Summary, pump

if TYPE_CHECKING:
    from celery import Task

    from worker.config import WorkerConfig

__all__ = ["STREAMING", "execute"]

logger = logging.getLogger(__name__)
#: The Celery state of a run whose chunks are flowing (Flower shows it, with progress).
STREAMING = "STREAMING"


def execute(task: Task, run_id: str, generator: str, params: object) -> dict[str, Any]:
    """Run ``generator`` with ``params`` into ``run_id``; returns the attempt's summary."""
    config: WorkerConfig = task.app.config
    try:
        run = task.app.stream_writer().open(run_id, wait=config.streaming.lease_ttl * 1.5)
    except RunBusyError:
        logger.warning("run %s is served by another live attempt; this delivery ends", run_id)
        return {"run_id": run_id, "ending": "busy"}
    except RunClosedError:
        logger.info("run %s has already ended; nothing to do", run_id)
        return {"run_id": run_id, "ending": "ended"}
    with logs.bind(run_id, run.attempt):
        return Attempt(task, config, run).run(generator, params)


class Attempt:
    """One claimed run and the task running it."""

    def __init__(self, task: Task, config: WorkerConfig, run: RunWriter) -> None:
        self.task = task
        self.config = config
        self.run_writer = run
        self.summary = Summary(run.run_id, run.attempt)
        self.watch = CancelWatch(run, self._read_cancel_flag, config.cancel_check_interval)
        self._next_report = 0.0

    def run(self, generator: str, params: object) -> dict[str, Any]:
        try:
            return self._run(generator, params)
        except FencedError:  # from any write, the ending's included: a newer attempt has it
            logger.warning("run %s was taken over by a newer attempt; this one stops quietly",
                           self.run_writer.run_id)
            self.summary.ending = "fenced"
            return self.summary.as_dict()

    def _run(self, generator: str, params: object) -> dict[str, Any]:
        if self.run_writer.attempt > self.config.max_attempts:
            return self._end(Terminal.LOST, f"the run was started {self.run_writer.attempt} "
                             "times without ending (its worker was lost each time); giving up")
        try:
            spec = registry.get(generator)
            parsed = spec.parse(params)
        except RunRefused as exc:
            self._end(Terminal.ERROR, str(exc), type(exc).__name__)
            raise
        try:
            self._stream(spec, parsed)
        except FencedError:
            raise
        except SoftTimeLimitExceeded:
            self._end(Terminal.TIMEOUT, f"the run exceeded its time limit ({self._limit()} s)")
            raise
        except Exception as exc:  # boundary: a generator's failure becomes the run's error ending
            self._fail(exc, spec)
            raise
        reason = self.watch.reason()
        return self._end(Terminal.CANCELLED, reason) if reason else self._end(Terminal.DONE)

    def _limit(self) -> float:
        limits = self.task.request.timelimit or (None, None)
        return limits[1] or self.task.soft_time_limit or self.config.soft_time_limit

    def _stream(self, spec: GeneratorSpec, params: Any) -> None:
        if self.watch.reason():
            return
        context = RunContext(self.run_writer.run_id, self.run_writer.attempt, self.config)
        logger.info("run %s started: generator %s, after seq %d", self.run_writer.run_id,
                    spec.name, self.run_writer.last_seq)
        chunks = spec.function(params, context)
        self._report(force=True)
        pump(self.run_writer, chunks, self.watch, self.summary, lambda _: self._report(),
             self.config.cancel_check_interval)

    def _fail(self, exc: Exception, spec: GeneratorSpec) -> None:
        if isinstance(exc, spec.retry_for) and self.task.request.retries < self.config.max_retries:
            self.run_writer.release()
            retries = self.task.request.retries
            logger.warning("run %s: %r, retrying", self.run_writer.run_id, exc)
            raise self.task.retry(exc=exc, countdown=min(2**retries, 30),
                                  max_retries=self.config.max_retries)
        message = str(exc) or type(exc).__name__
        if self.config.send_tracebacks and not isinstance(exc, RunRefused):
            message += "\n" + "".join(traceback.format_exception(exc))
        self._end(Terminal.ERROR, message, type(exc).__name__)

    def _end(self, kind: Terminal, message: str = "", type: str | None = None) -> dict[str, Any]:
        """Write the run's ending and wait until every chunk is stored."""
        self.summary.last_seq = self.run_writer.finish(kind, message, type=type)
        self.summary.ending = kind.value
        logger.info("run %s ended %s: %d chunks, last seq %d", self.run_writer.run_id,
                    kind.value, self.summary.chunks, self.summary.last_seq)
        return self.summary.as_dict()

    def _read_cancel_flag(self) -> str:
        try:
            return cancel_reason(self.task.app.redis, self.run_writer.run_id,
                                 self.config.streaming)
        except redis.RedisError as exc:  # the writer's next flush brings the flag back too
            logger.warning("could not read the cancel flag of %s: %s", self.run_writer.run_id, exc)
            return ""

    def _report(self, force: bool = False) -> None:
        """Publish progress (Celery state STREAMING, and a Flower event) at most every interval."""
        now = time.monotonic()
        if (now < self._next_report and not force) or self.task.request.id is None:
            return
        self._next_report = now + self.config.progress_interval
        progress = self.summary.progress()
        try:
            self.task.update_state(state=STREAMING, meta=progress)
            # Flower's task view shows an event's fields only through known names: `result`
            # carries the progress until the task's own result replaces it.
            self.task.send_event("task-streaming", retry=False, result=repr(progress),
                                 **progress)
        except (OperationalError, redis.RedisError, OSError) as exc:
            logger.warning("progress report of %s failed: %s", self.run_writer.run_id, exc)
