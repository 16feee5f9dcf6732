"""The stream loop: one generator's chunks into one claimed run, watching for a cancel request.

Sync generators run in the task's thread. Async generators run on an event loop of the task's
own (never the writer's), one step at a time; while a step waits, the cancel flag is checked,
so a cancel reaches an async generator even between its chunks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from streaming.writer import RunWriter

from .framing import frame

__all__ = ["CancelWatch", "Summary", "pump"]

logger = logging.getLogger(__name__)
#: How long closing a generator may take (its cleanup closes upstream connections).
CLOSE_TIMEOUT = 5.0


@dataclass
class Summary:
    """What one attempt of a run did; the task returns it as a dict."""

    run_id: str
    attempt: int
    chunks: int = 0
    bytes: int = 0
    ending: str = ""
    last_seq: int = 0
    #: The chunks the generator will yield, when it says (``GeneratorSpec.total``).
    total: int | None = None
    started: float = field(default_factory=time.monotonic)

    def add(self, data: str) -> None:
        self.chunks += 1
        self.bytes += len(data.encode("utf-8", "replace"))

    def progress(self) -> dict[str, Any]:
        shown = {"run_id": self.run_id, "attempt": self.attempt, "chunks": self.chunks,
                 "last_seq": self.last_seq, "worker_pid": os.getpid()}
        return shown if self.total is None else shown | {"total": self.total}

    def as_dict(self) -> dict[str, Any]:
        """The summary; the ending first, so that a truncated view (Flower's list) shows it."""
        seconds = round(time.monotonic() - self.started, 3)
        return {"ending": self.ending, "chunks": self.chunks, "last_seq": self.last_seq,
                "seconds": seconds, "bytes": self.bytes} | self.progress()


class CancelWatch:
    """Whether a cancel was requested for the run, and why.

    The writer brings the flag back with every flush (free); ``read_flag`` (one Redis read)
    is asked at most every ``interval`` seconds, so a generator that yields once a second
    still sees a cancel within about a second.
    """

    def __init__(self, run: RunWriter, read_flag: Callable[[], str], interval: float) -> None:
        self._run = run
        self._read_flag = read_flag
        self._interval = interval
        self._checked = time.monotonic()
        self._reason = run.cancel_requested

    def reason(self) -> str:
        if not self._reason:
            self._reason = self._run.cancel_requested or self._read_if_due()
        return self._reason

    def _read_if_due(self) -> str:
        now = time.monotonic()
        if now - self._checked < self._interval:
            return ""
        self._checked = now
        return self._read_flag()


def pump(run: RunWriter, chunks: Iterator[Any] | AsyncIterator[Any], watch: CancelWatch,
         summary: Summary, report: Callable[[Summary], None], poll: float = 0.2) -> None:
    """Send every chunk to ``run`` until the generator ends or a cancel is requested.

    The generator is closed either way (an upstream HTTP stream closes with it).
    """
    source = _AsyncSteps(chunks, watch, poll) if isinstance(chunks, AsyncIterator) else chunks
    try:
        for item in source:
            data, event = frame(item)
            run.send(data, event)
            summary.add(data)
            summary.last_seq = run.last_seq
            report(summary)
            if watch.reason():
                break
    finally:
        _close(source)


def _close(source: Iterator[Any]) -> None:
    close = getattr(source, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # a generator's cleanup failing must not replace the run's own ending
        logger.exception("closing the generator failed")


class _AsyncSteps(Iterator[Any]):
    """An async generator driven from sync code on a loop of its own, one item per step."""

    def __init__(self, chunks: AsyncIterator[Any], watch: CancelWatch, poll: float) -> None:
        self._chunks = chunks
        self._watch = watch
        self._poll = poll
        self._loop = asyncio.new_event_loop()
        self._step: asyncio.Task[Any] | None = None

    def __next__(self) -> Any:
        step = self._step or self._loop.create_task(_next(self._chunks))
        self._step = step
        while not step.done():
            self._loop.run_until_complete(asyncio.wait({step}, timeout=self._poll))
            if not step.done() and self._watch.reason():
                raise StopIteration  # close() cancels the waiting step
        self._step = None
        try:
            return step.result()
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        try:
            if self._step is not None and not self._step.done():
                self._step.cancel()
                self._loop.run_until_complete(asyncio.wait({self._step}, timeout=CLOSE_TIMEOUT))
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                self._loop.run_until_complete(asyncio.wait_for(aclose(), CLOSE_TIMEOUT))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()


async def _next(chunks: AsyncIterator[Any]) -> Any:
    return await anext(chunks)
