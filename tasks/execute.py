"""One attempt of a run, from claiming it to its one ending. The Celery task only calls this.

How an attempt ends:

- the generator ends: ``done``; a cancel was requested: ``cancelled``; the task then ends
  ``REVOKED`` in the result backend (Celery's state of a cancelled task: ``AsyncResult.get()``
  raises ``TaskRevokedError``) and ``CANCELLED`` in Flower, never SUCCESS;
- ``SoftTimeLimitExceeded``: ``timeout``; a refused run (unknown generator, bad params) or a
  generator error: ``error`` with its type and message (the task then fails, so Flower shows
  it); an error its generator lists as transient: the task is retried and the run continues;
- another live attempt holds the run (a duplicate delivery): nothing is written and the task
  returns quietly; this attempt was fenced off by a newer one: the same;
- the run was ended by another while this attempt ran (a sweep or a reader stored ``lost``
  after the worker was cut off from the store past the requeue grace): the attempt stops, its
  Celery state follows the stored ending and the task ends with ``Ignore``;
- the run has ended (an earlier attempt finished it, or its queue deadline passed before this
  delivery: a message stranded by a broker or store restart): nothing is written, the task's
  Celery state is made to follow the stored ending (``worker.states``), and the task ends
  without a result of its own (``Ignore``);
- too many attempts (a run that kills its worker each time): ``lost``.

A later attempt of a run opens it with ``resume`` set for a generator registered
``resumable``: the generator continues after the chunks earlier attempts stored. Others start
over, and the ``restarted`` event tells clients to drop the earlier output.

An outage of the store holds the task at most about ``unavailable_timeout``: chunk writes
raise past it, and progress reports and cancel-flag reads that fail are not tried again for
``STORE_BACKOFF`` s (each try is bounded by the socket timeouts of ``worker.config``).
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

import redis
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from streaming.control import cancel_reason
from streaming.errors import (
    BufferFullError,
    FencedError,
    RunBusyError,
    RunClosedError,
    StoreUnavailableError,
)
from streaming.wire import Terminal
from streaming.writer import RunWriter
from worker.states import follow_ending

from .errors import RunRefused
from .registry import GeneratorSpec, RunContext, registry
from .runner import CancelWatch, Summary, pump

if TYPE_CHECKING:
    from celery import Task

    from worker.config import WorkerConfig

__all__ = ["STORE_BACKOFF", "STREAMING", "execute"]

logger = logging.getLogger(__name__)
#: The Celery state of a run whose chunks are flowing (Flower shows it, with progress).
STREAMING = "STREAMING"
#: After a progress report or cancel-flag read failed, seconds before the next try.
STORE_BACKOFF = 5.0
#: How long the ending of a run whose store stayed away past its deadline is waited for.
UNSTORED_WAIT = 0.5


def execute(task: Task, run_id: str, generator: str, params: object) -> dict[str, Any]:
    """Run ``generator`` with ``params`` into ``run_id``; returns the attempt's summary."""
    config: WorkerConfig = task.app.config
    spec = _lookup(generator)
    try:
        run = task.app.stream_writer().open(run_id, wait=config.streaming.lease_ttl * 1.5,
                                            resume=spec is not None and spec.resumable)
    except RunBusyError:
        logger.warning("run %s is served by another live attempt; this delivery ends", run_id)
        return {"run_id": run_id, "ending": "busy"}
    except RunClosedError:
        logger.info("run %s has already ended; this delivery writes nothing", run_id)
        _follow_ending(task, config, run_id)
        raise Ignore() from None
    return Attempt(task, config, run).run(generator, params)


def _follow_ending(task: Task, config: WorkerConfig, run_id: str) -> None:
    """Give the task the Celery state of the run's stored ending (unless it has a final one)."""
    try:
        follow_ending(task.app, task.app.redis, config.streaming, run_id, task.request.id)
    except (OperationalError, redis.RedisError, OSError) as exc:  # best effort: the task ends
        logger.warning("could not set the Celery state of ended run %s: %s", run_id, exc)


def _lookup(generator: str) -> GeneratorSpec | None:
    """The generator's registration, or None (the attempt then refuses the run)."""
    try:
        return registry.get(generator)
    except RunRefused:
        return None


class Attempt:
    """One claimed run and the task running it."""

    def __init__(self, task: Task, config: WorkerConfig, run: RunWriter) -> None:
        self.task = task
        self.config = config
        self.run_writer = run
        self.summary = Summary(run.run_id, run.attempt)
        self.watch = CancelWatch(run, self._read_cancel_flag, config.cancel_check_interval)
        self._next_report = 0.0
        self._next_flag_read = 0.0

    def run(self, generator: str, params: object) -> dict[str, Any]:
        try:
            summary = self._run(generator, params)
        except FencedError:  # from any write, the ending's included: a newer attempt has it
            logger.warning("run %s was taken over by a newer attempt; this one stops quietly",
                           self.run_writer.run_id)
            self.summary.ending = "fenced"
            return self.summary.as_dict()
        except RunClosedError:  # a sweep, a reader or the main process stored the ending
            logger.warning("run %s was ended by another while this attempt ran; its stored "
                           "ending stands and this attempt stops", self.run_writer.run_id)
            _follow_ending(self.task, self.config, self.run_writer.run_id)
            raise Ignore() from None
        except StoreUnavailableError as exc:
            logger.error("run %s stopped: the store stayed unreachable (%s); its ending is "
                         "stored when the store is back", self.run_writer.run_id, exc)
            raise
        if summary["ending"] == Terminal.CANCELLED:
            self._revoked(summary)
        return summary

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
        except (FencedError, RunClosedError):
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
        resumed = self.run_writer.resumed_chunks if spec.resumable else 0
        context = RunContext(self.run_writer.run_id, self.run_writer.attempt, self.config,
                             resumed_chunks=resumed)
        self.summary.total = spec.total(params) if spec.total else None
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
        # The store has been away past its deadline already: no point waiting for it again.
        wait = UNSTORED_WAIT if isinstance(exc, StoreUnavailableError) else None
        try:
            self._end(Terminal.ERROR, message, type(exc).__name__, wait)
        except (StoreUnavailableError, BufferFullError) as unstored:  # the task fails with exc
            logger.warning("run %s: its ending is not stored yet (%s); the writer stores it "
                           "when the store is back", self.run_writer.run_id, unstored)

    def _end(self, kind: Terminal, message: str = "", type: str | None = None,
             wait: float | None = None) -> dict[str, Any]:
        """Write the run's ending and wait until every chunk is stored: at most ``wait`` s
        (default ``unavailable_timeout``); the ending stays buffered and is stored once the
        store is back."""
        wait = self.config.streaming.unavailable_timeout if wait is None else wait
        self.summary.last_seq = self.run_writer.finish(kind, message, type=type, timeout=wait)
        self.summary.ending = kind.value
        return self.summary.as_dict()

    def _read_cancel_flag(self) -> str:
        if time.monotonic() < self._next_flag_read:
            return ""
        try:
            return cancel_reason(self.task.app.redis, self.run_writer.run_id,
                                 self.config.streaming)
        except redis.RedisError as exc:  # the writer's next flush brings the flag back too
            self._next_flag_read = time.monotonic() + STORE_BACKOFF
            logger.warning("could not read the cancel flag of %s: %s", self.run_writer.run_id, exc)
            return ""

    def _report(self, force: bool = False) -> None:
        """Publish progress (Celery state STREAMING, and a Flower event) at most every interval.

        ``chunks`` (the run's output chunks, those of the attempts this one continues included)
        and ``last_seq`` are what Redis has stored, read together, so they agree (on a first
        attempt ``chunks == last_seq``); ``total`` when the generator knows it.
        """
        now = time.monotonic()
        if (now < self._next_report and not force) or self.task.request.id is None:
            return
        self._next_report = now + self.config.progress_interval
        stored, last_seq = self.run_writer.stored
        announced = self.run_writer.sent - self.summary.chunks  # its `restarted` event
        chunks = self.run_writer.resumed_chunks + max(stored - announced, 0)  # of the whole run
        progress = self.summary.progress() | {"chunks": chunks, "last_seq": last_seq}
        # Flower's task list and task view show an event's fields only through known names:
        # `result` carries the progress, in words, until the task's own result replaces it.
        self._publish(STREAMING, progress, "task-streaming", progress_text(progress))

    def _revoked(self, summary: dict[str, Any]) -> None:
        """End the cancelled run's task as REVOKED (``Ignore``: no SUCCESS after it).

        Flower gets a ``task-cancelled`` event, shown as the state CANCELLED with the summary:
        Celery's event state ranks the custom STREAMING state above REVOKED, so a
        ``task-revoked`` event would leave the run showing STREAMING for good.
        """
        request = self.task.request
        if request.id is None:  # called directly, not as a task
            return
        reason = self.watch.reason() or "cancelled"
        try:
            self.task.backend.mark_as_revoked(request.id, reason, request=request)
        except (OperationalError, redis.RedisError, OSError) as exc:
            logger.warning("could not store %s as revoked: %s", self.run_writer.run_id, exc)
        self._publish(None, summary, "task-cancelled", repr(summary))
        raise Ignore()

    def _publish(self, state: str | None, meta: dict[str, Any], event: str, shown: str) -> None:
        try:
            if state is not None:
                self.task.update_state(state=state, meta=meta)
            self.task.send_event(event, retry=False, result=shown, **meta)
        except (OperationalError, redis.RedisError, OSError) as exc:
            self._next_report = time.monotonic() + STORE_BACKOFF
            logger.warning("progress report of %s failed: %s", self.run_writer.run_id, exc)


def progress_text(progress: dict[str, Any]) -> str:
    """Progress as Flower's Result column shows it: ``12/49 chunks, last_seq 12, attempt 1``."""
    total = progress.get("total")
    chunks = f"{progress['chunks']}/{total}" if total is not None else str(progress["chunks"])
    return f"{chunks} chunks, last_seq {progress['last_seq']}, attempt {progress['attempt']}"
