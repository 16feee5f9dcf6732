"""The sweep: every worker's main process writes the endings of overdue runs, and makes Celery's
state follow every ending, even for runs whose own worker is gone.

Every ``WORKER_SWEEP_INTERVAL`` seconds a thread of the main process calls
``streaming.control.sweep``, which ends each run of the run index that is overdue by stored
deadlines (queued longer than ``STREAMING_QUEUE_TIMEOUT``; claimed with its lease lapsed longer
than ``STREAMING_PRODUCER_TIMEOUT``) through the guarded ending script, and returns the runs
found ended. One interval later (so that a task that ended its own run has stored its final
state by then), ``worker.states.follow_ending`` stores the matching Celery state for each of
them unless the task stored a final one. Every worker sweeps; the script makes that safe (one
ending per run), so the sweep goes on as long as any worker is alive.

It is a bootstep of the app's own worker blueprint, started after the pool (no thread exists
when prefork forks its children) and stopped, within ``STOP_TIMEOUT``, when the worker stops.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import bootsteps
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from streaming.client import SyncClient, sync_client
from streaming.control import sweep

from .states import follow_ending

if TYPE_CHECKING:
    from .factory import StreamingCelery

__all__ = ["STOP_TIMEOUT", "SweepStep", "Sweeper", "connect"]

logger = logging.getLogger(__name__)
#: Longest wait for the sweep thread when the worker stops (a round in progress finishes).
STOP_TIMEOUT = 10.0
#: Most ended runs one round hands to the next for their Celery state (a bound on memory; a
#: flood of endings beyond it leaves the rest to their tasks' own states).
MAX_HELD = 10_000


class Sweeper:
    """Sweeps the run index every ``app.config.sweep_interval`` s on a daemon thread."""

    def __init__(self, app: StreamingCelery) -> None:
        self.app = app
        self.settings = app.config.streaming
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

        Returns the run ids the store reported ended this round.
        """
        if self._client is None:
            self._client = sync_client(self.settings)
        held, self._held = self._held, []
        for run_id in held:
            self._follow(run_id)
        ended = list(sweep(self._client, self.settings))
        self._held = ended[:MAX_HELD]
        return ended

    def _follow(self, run_id: str) -> None:
        assert self._client is not None
        try:
            follow_ending(self.app, self._client, self.settings, run_id)
        except (RedisError, OperationalError, OSError) as exc:
            logger.warning("could not set the Celery state of ended run %s: %s", run_id, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.app.config.sweep_interval):
            try:
                self.sweep_once()
            except (RedisError, OperationalError, OSError) as exc:
                logger.warning("run sweep failed (retried in %s s): %s",
                               self.app.config.sweep_interval, exc)
            except Exception:  # boundary: one bad round must not end the sweeps for good
                logger.exception("run sweep failed")


class SweepStep(bootsteps.StartStopStep):
    """Runs a ``Sweeper`` in the worker's main process while the worker runs."""

    requires = ("celery.worker.components:Pool",)

    def create(self, parent: Any) -> Sweeper:
        return Sweeper(parent.app)


def connect(app: StreamingCelery) -> None:
    """Add the sweep to ``app``'s workers (only this app's: another app's workers are untouched)."""
    app.steps["worker"].add(SweepStep)
