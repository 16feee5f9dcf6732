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
- the body ends: ``done``; a cancel was requested: ``cancelled``; the task then ends
  ``REVOKED`` in the result backend (Celery's state of a cancelled task: ``AsyncResult.get()``
  raises ``TaskRevokedError``) and ``CANCELLED`` in Flower, never SUCCESS;
- ``SoftTimeLimitExceeded``: ``timeout``; an error: ``error`` with its type and message (the
  task fails, so Flower shows it); an error Celery will retry (``autoretry_for``, or
  ``self.retry()``): the run is released and the next attempt continues it (``restarted``);
- the run was ended by another while this attempt ran (a sweep or a reader stored ``lost``
  after the worker was cut off from the store past the requeue grace): the attempt stops, its
  Celery state follows the stored ending and the task ends with ``Ignore``;
- too many attempts (a run that kills its worker each time): ``lost``;
- the run has ended (an earlier attempt finished it, or its queue deadline passed before this
  delivery): nothing is written, the task's Celery state follows the stored ending
  (``states``), and the task ends without a result of its own (``Ignore``).

A later attempt continues the run: a task that is ``resumable`` (``resumes()``) is told through
``self.stream.resumed_chunks`` how many output chunks earlier attempts stored, and continues
after them; any other starts over, and the ``restarted`` event tells clients to drop the
earlier output. An outage of the store holds the task at most about ``unavailable_timeout``:
chunk writes raise past it, and progress reports and cancel-flag reads that fail are not tried
again for ``STORE_BACKOFF`` s.

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
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from .. import logs
from ..control import cancel_reason
from ..errors import (
    BufferFullError,
    FencedError,
    RunBusyError,
    RunCancelled,
    RunClosedError,
    StoreUnavailableError,
)
from ..wire import Terminal, validate_run_id
from ..writer import RunWriter
from .app import Streaming, streaming_of
from .handle import RunHandle, Summary
from .runner import CancelWatch, pump, run_coroutine
from .states import follow_ending

__all__ = ["STORE_BACKOFF", "STREAMING", "StreamingTask", "progress_text"]

logger = logging.getLogger(__name__)
#: The Celery state of a run whose chunks are flowing (Flower shows it, with progress).
STREAMING = "STREAMING"
#: After a progress report or cancel-flag read failed, seconds before the next try.
STORE_BACKOFF = 5.0
#: How long the ending of a run whose store stayed away past its deadline is waited for.
UNSTORED_WAIT = 0.5


class StreamingTask(Task):  # type: ignore[misc]
    """Base of streaming tasks: ``@app.task(base=StreamingTask)`` or ``@shared_task(base=...)``.

    Options a task may set besides Celery's own (default: the app's ``StreamingOptions``):
    ``max_attempts``, ``progress_interval``, ``cancel_check_interval``, ``send_tracebacks``;
    and ``resumable`` (default False): a later attempt continues after the chunks earlier
    attempts stored (``self.stream.resumed_chunks``) instead of starting over.
    """

    acks_late = True
    reject_on_worker_lost = True
    track_started = True
    max_attempts: int | None = None
    progress_interval: float | None = None
    cancel_check_interval: float | None = None
    send_tracebacks: bool | None = None
    merge_text_deltas: bool | None = None
    resumable = False

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

    def resumes(self) -> bool:
        """Whether this call continues a restarted run after its stored chunks (default:
        ``resumable``); asked before the run is claimed."""
        return bool(self.resumable)

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
    with logs.bind(run_id):  # every line about the run says which (streaming.logs)
        return _claim_and_run(task, streaming, run_id, body)


def _claim_and_run(task: StreamingTask, streaming: Streaming, run_id: str,
                   body: Callable[[], Any]) -> Any:
    try:
        run = streaming.writer().open(run_id, wait=streaming.settings.lease_ttl * 1.5,
                                      resume=task.resumes())
    except RunBusyError:
        logger.warning("run %s is served by another live attempt; this delivery ends", run_id)
        return {"run_id": run_id, "ending": "busy"}
    except RunClosedError:
        _follow_ending(task, streaming, run_id)
        logger.info("run %s has already ended; this delivery writes nothing", run_id)
        raise Ignore() from None
    with logs.bind(run_id, run.attempt):
        return Attempt(task, streaming, run).run(body)


def _follow_ending(task: StreamingTask, streaming: Streaming, run_id: str) -> None:
    """Give the task the Celery state of the run's stored ending (unless it has a final one)."""
    try:
        follow_ending(task.app, streaming.redis, streaming.settings, run_id, task.request.id)
    except (OperationalError, redis.RedisError, OSError) as exc:  # best effort: the task ends
        logger.warning("could not set the Celery state of ended run %s: %s", run_id, exc)


class Attempt:
    """One claimed run and the task running it."""

    def __init__(self, task: StreamingTask, streaming: Streaming, run: RunWriter) -> None:
        self.task = task
        self.streaming = streaming
        self.run_writer = run
        interval = float(task.option("cancel_check_interval"))
        self.watch = CancelWatch(run, self._read_cancel_flag, interval)
        self.handle = RunHandle(run, self.watch, lambda _: self._report(),
                                merge_text=bool(task.option("merge_text_deltas")))
        self.summary: Summary = self.handle.summary
        self._next_report = 0.0
        self._next_flag_read = 0.0

    def run(self, body: Callable[[], Any]) -> Any:
        self.task.request.streaming_run = self.handle
        try:
            result = self._run(body)
        except FencedError:  # from any write, the ending's included: a newer attempt has it
            logger.warning("run %s was taken over by a newer attempt; this one stops quietly",
                           self.run_writer.run_id)
            self.summary.ending = "fenced"
            return self.summary.as_dict()
        except RunClosedError:  # a sweep, a reader or the main process stored the ending
            logger.warning("run %s was ended by another while this attempt ran; its stored "
                           "ending stands and this attempt stops", self.run_writer.run_id)
            _follow_ending(self.task, self.streaming, self.run_writer.run_id)
            raise Ignore() from None
        except StoreUnavailableError as exc:
            logger.error("run %s stopped: the store stayed unreachable (%s); its ending is "
                         "stored when the store is back", self.run_writer.run_id, exc)
            raise
        finally:
            self.task.request.streaming_run = None
        if self.summary.ending == Terminal.CANCELLED.value:
            self._revoked()
        return result

    def _run(self, body: Callable[[], Any]) -> Any:
        attempts = int(self.task.option("max_attempts"))
        if self.run_writer.attempt > attempts:
            return self._end(Terminal.LOST, f"the run was started {self.run_writer.attempt} "
                             "times without ending (its worker was lost each time); giving up")
        if self.watch.reason():
            return self._end(Terminal.CANCELLED, self.watch.reason())
        try:
            result = self._body(body)
        except (FencedError, RunClosedError, Retry):
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
        logger.info("run %s started: task %s, after seq %d", self.run_writer.run_id,
                    self.task.name, self.run_writer.last_seq)
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
        wait = self.streaming.settings.unavailable_timeout if wait is None else wait
        self.summary.last_seq = self.run_writer.finish(kind, message, type=type, timeout=wait)
        self.summary.ending = kind.value
        logger.info("run %s ended %s: %d chunks, last seq %d", self.run_writer.run_id,
                    kind.value, self.summary.chunks, self.summary.last_seq)
        return self.summary.as_dict()

    def _read_cancel_flag(self) -> str:
        if time.monotonic() < self._next_flag_read:
            return ""
        try:
            return cancel_reason(self.streaming.redis, self.run_writer.run_id,
                                 self.streaming.settings)
        except redis.RedisError as exc:  # the writer's next flush brings the flag back too
            self._next_flag_read = time.monotonic() + STORE_BACKOFF
            logger.warning("could not read the cancel flag of %s: %s", self.run_writer.run_id, exc)
            return ""

    def _report(self, force: bool = False) -> None:
        """Publish progress (Celery state STREAMING, and a Flower event) at most every interval.

        ``chunks`` (the run's output chunks, those of the attempts this one continues included)
        and ``last_seq`` are what Redis has stored, read together, so they agree (on a first
        attempt ``chunks == last_seq``); ``total`` when the task knows it.
        """
        now = time.monotonic()
        if now < self._next_report and not force:
            return
        self._next_report = now + float(self.task.option("progress_interval"))
        stored, last_seq = self.run_writer.stored
        announced = self.run_writer.sent - self.summary.chunks  # its `restarted` event
        chunks = self.run_writer.resumed_chunks + max(stored - announced, 0)  # of the whole run
        progress = self.summary.progress() | {"chunks": chunks, "last_seq": last_seq}
        # Flower's task list and task view show an event's fields only through known names:
        # `result` carries the progress, in words, until the task's own result replaces it.
        self._publish(STREAMING, progress, "task-streaming", progress_text(progress))

    def _revoked(self) -> None:
        """End the cancelled run's task as REVOKED (``Ignore``: no SUCCESS after it).

        Flower gets a ``task-cancelled`` event, shown as the state CANCELLED with the summary:
        Celery's event state ranks the custom STREAMING state above REVOKED, so a
        ``task-revoked`` event would leave the run showing STREAMING for good.
        """
        request = self.task.request
        summary = self.summary.as_dict()
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


def progress_text(progress: dict[str, Any]) -> str:
    """Progress as Flower's Result column shows it: ``12/49 chunks, last_seq 12, attempt 1``."""
    total = progress.get("total")
    chunks = f"{progress['chunks']}/{total}" if total is not None else str(progress["chunks"])
    return f"{chunks} chunks, last_seq {progress['last_seq']}, attempt {progress['attempt']}"
