"""The stream loop: a task's chunks into its run, watching for a cancel request.

Sync generators run in the task's thread. Async generators run on an event loop of the task's
own (never the writer's), one step at a time; while a step waits, the cancel flag is checked,
so a cancel reaches an async generator even between its chunks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import RunCancelled
from ..writer import RunWriter

if TYPE_CHECKING:
    from .handle import RunHandle

__all__ = ["CancelWatch", "pump", "run_coroutine"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
#: How long closing a generator may take (its cleanup closes upstream connections).
CLOSE_TIMEOUT = 5.0


class CancelWatch:
    """Whether a cancel was requested for the run, and why.

    The writer brings the flag back with every flush (free); ``read_flag`` (one Redis read)
    is asked at most every ``interval`` seconds, so a task that yields once a second still
    sees a cancel within about a second.
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


def pump(handle: RunHandle, chunks: Iterator[Any] | AsyncIterator[Any], poll: float) -> None:
    """Send every chunk through ``handle`` until the generator ends or a cancel is requested.

    The generator is closed either way (an upstream HTTP stream closes with it).
    """
    source = (_AsyncSteps(chunks, handle.cancel_reason, poll)
              if isinstance(chunks, AsyncIterator) else chunks)
    try:
        for item in source:
            handle.send(item)
    except RunCancelled:
        pass  # the attempt sees the reason and ends the run `cancelled`
    finally:
        _close(source)


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a bound ``async def`` task's body on a loop of its own (never the writer's)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


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

    def __init__(self, chunks: AsyncIterator[Any], cancelled: Callable[[], str],
                 poll: float) -> None:
        self._chunks = chunks
        self._cancelled = cancelled
        self._poll = poll
        self._loop = asyncio.new_event_loop()
        self._step: asyncio.Task[Any] | None = None

    def __next__(self) -> Any:
        step = self._step or self._loop.create_task(_next(self._chunks))
        self._step = step
        while not step.done():
            self._loop.run_until_complete(asyncio.wait({step}, timeout=self._poll))
            if not step.done() and self._cancelled():
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
