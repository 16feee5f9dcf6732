"""The sweep: every worker's main process writes the endings of overdue runs, and makes Celery's
state follow every ending, even for runs whose own worker is gone.

Every ``StreamingOptions.sweep_interval`` seconds a thread of the main process calls
``streaming.control.sweep``, which ends each run of the run index that is overdue by stored
deadlines (queued longer than ``STREAMING_QUEUE_TIMEOUT``; claimed with its lease lapsed longer
than ``STREAMING_PRODUCER_TIMEOUT``) through the guarded ending script, and returns the runs
found ended. One interval later (so that a task that ended its own run has stored its final
state by then), ``states.follow_ending`` stores the matching Celery state for each of
them unless the task stored a final one. Every worker sweeps; the script makes that safe (one
ending per run), so the sweep goes on as long as any worker is alive.

It is a bootstep of the app's own worker blueprint, started after the pool (no thread exists
when prefork forks its children) and stopped, within ``STOP_TIMEOUT``, when the worker stops.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from ..client import SyncClient, sync_client
from ..control import sweep
from ..wire import RUN_INDEX
from .app import Streaming, streaming_of
from .states import follow_ending

__all__ = ["STOP_TIMEOUT", "SweepStep", "Sweeper"]

logger = logging.getLogger(__name__)
#: Longest wait for the sweep thread when the worker stops (a round in progress finishes).
STOP_TIMEOUT = 10.0
#: Most ended runs one round hands to the next for their Celery state (a bound on memory; a
#: flood of endings beyond it leaves the rest to their tasks' own states).
MAX_HELD = 10_000


class Sweeper:
    """Sweeps the run index every ``sweep_interval`` s on a daemon thread."""

    def __init__(self, streaming: Streaming) -> None:
        self.app = streaming.app
        self.settings = streaming.settings
        self.interval = streaming.options.sweep_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: SyncClient | None = None
        self._held: list[str] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="run-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
        if self._client is not None:
            self._client.close()

    def sweep_once(self) -> list[str]:
        """One round: end the overdue runs; make Celery state follow the ended runs the
        previous round found (a task that ended its run itself stores its own final state
        within moments: it gets a whole interval to do so before the sweep steps in).

        A run whose Celery state could not be stored (the result backend or the store away)
        goes back into the run index, so any worker's next round tries again, even if this
        worker is gone by then; and it is held here too, in case the index cannot be written.

        Returns the run ids the store reported ended this round.
        """
        if self._client is None:
            self._client = sync_client(self.settings)
        ended = list(sweep(self._client, self.settings))  # the store away: held runs wait
        failed = [run_id for run_id in self._held if not self._follow(run_id)]
        self._reindex(failed)
        self._held = list(dict.fromkeys([*failed, *ended]))[:MAX_HELD]
        return ended

    def _follow(self, run_id: str) -> bool:
        assert self._client is not None
        try:
            follow_ending(self.app, self._client, self.settings, run_id)
            return True
        except (RedisError, OperationalError, OSError) as exc:
            logger.warning("could not set the Celery state of ended run %s (tried again next "
                           "round): %s", run_id, exc)
            return False

    def _reindex(self, run_ids: list[str]) -> None:
        assert self._client is not None
        if not run_ids:
            return
        try:  # score 0: first in line; a sweep returns an ended run and takes it out again
            self._client.zadd(RUN_INDEX, dict.fromkeys(run_ids, 0), nx=True)
        except RedisError as exc:
            logger.warning("could not put %d ended runs back in the run index: %s",
                           len(run_ids), exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep_once()
            except (RedisError, OperationalError, OSError) as exc:
                logger.warning("run sweep failed (retried in %s s): %s",
                               self.interval, exc)
            except Exception:  # boundary: one bad round must not end the sweeps for good
                logger.exception("run sweep failed")


class SweepStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs a ``Sweeper`` in the worker's main process while the worker runs."""

    requires = ("celery.worker.components:Pool",)

    def create(self, parent: Any) -> Sweeper:
        return Sweeper(streaming_of(parent.app))
