"""``StreamingTask``: a Celery task whose output is its run's stream (run id = task id).

    @app.task(base=StreamingTask, queue="llm", autoretry_for=(ConnectionError,))
    def answer(question: str):            # a sync or async generator: its yields are events
        yield {"text": ...}

    @app.task(base=StreamingTask, bind=True)
    def summarize(self, text: str):       # or a bound task sending through its run handle
        for piece in pieces(text):
            self.stream.send({"text": piece})
        return {"pieces": n}

Everything Celery does with a task still applies (name, queue, routing, retries, time and rate
limits); what this base adds is one attempt of the run around the task's body:

- the run is claimed before the body runs: a duplicate delivery of a live run, an attempt of an
  ended run, or an attempt fenced off by a newer one writes nothing and returns quietly;
- the body ends: ``done``; a cancel was requested: ``cancelled`` (the task succeeds);
- ``SoftTimeLimitExceeded``: ``timeout``; an error: ``error`` with its type and message (the
  task fails, so Flower shows it); an error Celery will retry (``autoretry_for``, or
  ``self.retry()``): the run is released and the next attempt continues it (``restarted``);
- too many attempts (a run that kills its worker each time): ``lost``.

The base sets ``acks_late``, ``reject_on_worker_lost`` and ``track_started`` on these tasks
only: a task whose process died is delivered again and its next attempt continues the run.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from ..control import cancel_reason
from ..errors import FencedError, RunBusyError, RunCancelled, RunClosedError
from ..wire import Terminal, validate_run_id
from ..writer import RunWriter
from .app import Streaming, streaming_of
from .handle import RunHandle, Summary
from .runner import CancelWatch, pump, run_coroutine

__all__ = ["STREAMING", "StreamingTask"]

logger = logging.getLogger(__name__)
#: The Celery state of a run whose chunks are flowing (Flower shows it, with progress).
STREAMING = "STREAMING"


class StreamingTask(Task):  # type: ignore[misc]
    """Base of streaming tasks: ``@app.task(base=StreamingTask)`` or ``@shared_task(base=...)``.

    Options a task may set besides Celery's own (default: the app's ``StreamingOptions``):
    ``max_attempts``, ``progress_interval``, ``cancel_check_interval``, ``send_tracebacks``.
    """

    acks_late = True
    reject_on_worker_lost = True
    track_started = True
    max_attempts: int | None = None
    progress_interval: float | None = None
    cancel_check_interval: float | None = None
    send_tracebacks: bool | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "_streams", False):
            cls.run = _streamed(run)

    @property
    def stream(self) -> RunHandle:
        """The run this attempt writes (in the task's body, while it runs)."""
        handle = getattr(self.request, "streaming_run", None)
        if handle is None:
            raise RuntimeError("self.stream exists only while a streaming task runs on a worker")
        return handle  # type: ignore[no-any-return]

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None,
                    **options: Any) -> Any:
        """Queue the task (a run) as Celery does; the run is marked queued first, so readers
        may attach at once. The result's id is the run id."""
        if not (task_id and task_id == self.request.id):  # a retry re-sends a queued run
            task_id = validate_run_id(task_id) if task_id else _new_id()
            run_id = self.run_id_for(task_id, args or (), kwargs or {})
            streaming_of(self.app).mark_pending(validate_run_id(run_id))
        return super().apply_async(args, kwargs, task_id=task_id, **options)

    def run_id_for(self, task_id: str, args: Any, kwargs: Any) -> str:
        """The run a call of this task writes: its task id. A task whose callers pick the
        run id (an argument) overrides this; the worker's endings use it too."""
        return task_id

    def retry_stream(self, exc: Exception) -> Mapping[str, Any] | None:
        """Options for ``self.retry()`` if the body's error ``exc`` should be retried (the run
        goes on after ``restarted``), else None. Besides this hook, Celery's ``autoretry_for``
        works as usual; override it for decisions that depend on the call's arguments."""
        return None

    def option(self, name: str) -> Any:
        """This task's value of a streaming option, else the app's."""
        value = getattr(self, name)
        return getattr(streaming_of(self.app).options, name) if value is None else value


def _new_id() -> str:
    from celery.utils import uuid

    return str(uuid())


def _streamed(run: Any) -> Callable[..., Any]:
    """The task's ``run``: the body (bound or not) inside one attempt of its run."""
    bound = not isinstance(run, staticmethod)
    body = run if bound else run.__func__

    @functools.wraps(body)
    def streamed(self: StreamingTask, *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            return body(self, *args, **kwargs) if bound else body(*args, **kwargs)

        if self.request.called_directly:  # task(...) outside a worker: the body as it is
            return call()
        return execute(self, call)

    streamed._streams = True  # type: ignore[attr-defined]
    return streamed


def execute(task: StreamingTask, body: Callable[[], Any]) -> Any:
    """One attempt of the run ``task.request.id``: claim it, run ``body``, end it."""
    streaming = streaming_of(task.app)
    request = task.request
    run_id = validate_run_id(task.run_id_for(request.id, request.args, request.kwargs))
    try:
        run = streaming.writer().open(run_id, wait=streaming.settings.lease_ttl * 1.5)
    except RunBusyError:
        logger.warning("run %s is served by another live attempt; this delivery ends", run_id)
        return {"run_id": run_id, "ending": "busy"}
    except RunClosedError:
        logger.info("run %s has already ended; nothing to do", run_id)
        return {"run_id": run_id, "ending": "ended"}
    return Attempt(task, streaming, run).run(body)


class Attempt:
    """One claimed run and the task running it."""

    def __init__(self, task: StreamingTask, streaming: Streaming, run: RunWriter) -> None:
        self.task = task
        self.streaming = streaming
        self.run_writer = run
        interval = float(task.option("cancel_check_interval"))
        self.watch = CancelWatch(run, self._read_cancel_flag, interval)
        self.handle = RunHandle(run, self.watch, lambda _: self._report())
        self.summary: Summary = self.handle.summary
        self._next_report = 0.0

    def run(self, body: Callable[[], Any]) -> Any:
        self.task.request.streaming_run = self.handle
        try:
            return self._run(body)
        except FencedError:  # from any write, the ending's included: a newer attempt has it
            logger.warning("run %s was taken over by a newer attempt; this one stops quietly",
                           self.run_writer.run_id)
            self.summary.ending = "fenced"
            return self.summary.as_dict()
        finally:
            self.task.request.streaming_run = None

    def _run(self, body: Callable[[], Any]) -> Any:
        attempts = int(self.task.option("max_attempts"))
        if self.run_writer.attempt > attempts:
            return self._end(Terminal.LOST, f"the run was started {self.run_writer.attempt} "
                             "times without ending (its worker was lost each time); giving up")
        if self.watch.reason():
            return self._end(Terminal.CANCELLED, self.watch.reason())
        try:
            result = self._body(body)
        except (FencedError, Retry):
            raise
        except RunCancelled:
            result = None
        except SoftTimeLimitExceeded:
            self._end(Terminal.TIMEOUT, f"the run exceeded its time limit ({self._limit()} s)")
            raise
        except Exception as exc:  # boundary: the task's failure becomes the run's error ending
            self._fail(exc)
            raise
        reason = self.watch.reason()
        summary = self._end(Terminal.CANCELLED, reason) if reason else self._end(Terminal.DONE)
        return summary if result is None else result

    def _body(self, body: Callable[[], Any]) -> Any:
        """Run the body; a generator's chunks are pumped into the run (None is returned)."""
        self._report(force=True)
        try:
            result = body()
            if inspect.iscoroutine(result):
                result = run_coroutine(result)
        except Retry:
            self.run_writer.release()  # the retry continues the run at once
            raise
        if isinstance(result, Iterator | AsyncIterator):
            pump(self.handle, result, float(self.task.option("cancel_check_interval")))
            return None
        return result

    def _limit(self) -> float:
        limits = self.task.request.timelimit or (None, None)
        return float(limits[1] or self.task.soft_time_limit
                     or self.task.app.conf.task_soft_time_limit or 0)

    def _fail(self, exc: Exception) -> None:
        retry = self.task.retry_stream(exc)
        if retry is not None or _will_retry(self.task, exc):
            logger.warning("run %s: %r, retrying", self.run_writer.run_id, exc)
            self.run_writer.release()
            if retry is not None:
                raise self.task.retry(exc=exc, **retry)
            return  # Celery's autoretry_for wrapper retries it
        message = str(exc) or type(exc).__name__
        expected = isinstance(exc, tuple(self.task.throws or ()))
        if self.task.option("send_tracebacks") and not expected:
            message += "\n" + "".join(traceback.format_exception(exc))
        self._end(Terminal.ERROR, message, type(exc).__name__)

    def _end(self, kind: Terminal, message: str = "", type: str | None = None) -> dict[str, Any]:
        """Write the run's ending and wait until every chunk is stored."""
        self.summary.last_seq = self.run_writer.finish(kind, message, type=type)
        self.summary.ending = kind.value
        return self.summary.as_dict()

    def _read_cancel_flag(self) -> str:
        try:
            return cancel_reason(self.streaming.redis, self.run_writer.run_id,
                                 self.streaming.settings)
        except redis.RedisError as exc:  # the writer's next flush brings the flag back too
            logger.warning("could not read the cancel flag of %s: %s", self.run_writer.run_id, exc)
            return ""

    def _report(self, force: bool = False) -> None:
        """Publish progress (Celery state STREAMING, and a Flower event) at most every interval."""
        now = time.monotonic()
        if now < self._next_report and not force:
            return
        self._next_report = now + float(self.task.option("progress_interval"))
        progress = self.summary.progress()
        try:
            self.task.update_state(state=STREAMING, meta=progress)
            # Flower's task view shows an event's fields only through known names: `result`
            # carries the progress until the task's own result replaces it.
            self.task.send_event("task-streaming", retry=False, result=repr(progress),
                                 **progress)
        except (OperationalError, redis.RedisError, OSError) as exc:
            logger.warning("progress report of %s failed: %s", self.run_writer.run_id, exc)


def _will_retry(task: StreamingTask, exc: Exception) -> bool:
    """Whether Celery's ``autoretry_for`` will send this attempt's error to another attempt,
    or a ``Reject`` requeues it (the same rules as ``celery.app.autoretry``)."""
    if isinstance(exc, Reject):
        return bool(exc.requeue)
    retry_on = tuple(getattr(task, "autoretry_for", ()))
    never = tuple(getattr(task, "dont_autoretry_for", ()))
    if not retry_on or not isinstance(exc, retry_on) or (never and isinstance(exc, never)):
        return False
    limit = getattr(task, "override_max_retries", None)
    if limit is None:
        limit = dict(getattr(task, "retry_kwargs", {}) or {}).get("max_retries", task.max_retries)
    return limit is None or task.request.retries < limit
