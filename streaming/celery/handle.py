"""The run a streaming task writes: what it has sent, and the handle it sends through."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import RunCancelled
from ..writer import RunWriter
from .framing import frame
from .runner import CancelWatch

__all__ = ["RunHandle", "Summary"]


@dataclass
class Summary:
    """What one attempt of a run did; a generator task returns it as a dict."""

    run_id: str
    attempt: int
    chunks: int = 0
    bytes: int = 0
    ending: str = ""
    last_seq: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, data: str, last_seq: int) -> None:
        self.chunks += 1
        self.bytes += len(data.encode("utf-8", "replace"))
        self.last_seq = last_seq

    def progress(self) -> dict[str, Any]:
        """What Flower shows while the run streams (the task's ``STREAMING`` state)."""
        return {"run_id": self.run_id, "attempt": self.attempt, "chunks": self.chunks,
                "last_seq": self.last_seq, "worker_pid": os.getpid()}

    def as_dict(self) -> dict[str, Any]:
        seconds = round(time.monotonic() - self.started, 3)
        return self.progress() | {"bytes": self.bytes, "seconds": seconds, "ending": self.ending}


class RunHandle:
    """The claimed run of one task attempt (``self.stream`` in a bound streaming task).

    ``send()`` takes what a generator would yield: ``str`` (text), a ``dict`` or ``list``
    (JSON) or ``Event(name, data)``. Once a cancel was requested it raises ``RunCancelled``
    after buffering the event; let it propagate and the run ends ``cancelled``.
    """

    def __init__(self, run: RunWriter, watch: CancelWatch,
                 report: Callable[[Summary], None]) -> None:
        self._run = run
        self._watch = watch
        self._report = report
        self.summary = Summary(run.run_id, run.attempt)

    @property
    def run_id(self) -> str:
        """The run's id, which is the Celery task id."""
        return self._run.run_id

    @property
    def attempt(self) -> int:
        """Which claim of the run this is: 1 for the first, more after retries and restarts."""
        return self._run.attempt

    @property
    def resumed_chunks(self) -> int:
        """Output chunks earlier attempts stored that this one may continue after (0: start
        over). Only a task that continues exactly may skip them; others start over."""
        return int(getattr(self._run, "resumed_chunks", 0))

    @property
    def last_seq(self) -> int:
        return self._run.last_seq

    def cancel_reason(self) -> str:
        """The reason given for a cancel request; '' while none was made."""
        return self._watch.reason()

    def send(self, item: object) -> None:
        """Buffer one event (microseconds); then raise ``RunCancelled`` if a cancel was asked
        (the task's next step never runs)."""
        data, event = frame(item)
        self._run.send(data, event)
        self.summary.add(data, self._run.last_seq)
        self._report(self.summary)
        reason = self._watch.reason()
        if reason:
            raise RunCancelled(reason)
