"""Garbage collection in a process that holds thousands of long-lived streams.

CPython's cyclic collector walks every tracked object of the generation it collects. A web
process serving N SSE clients keeps tens of objects per connection alive for as long as the
client stays (its request, response, reader, tasks); they all end in the oldest generation,
and every full collection walks all of them: pauses that grow with N (about 180 ms at 1,000
clients on our 2-core test machine) and stall every stream of the process at once. Each
chunk delivered adds short-lived objects (tasks and futures that live until the next chunk),
and their promotions are what makes CPython start those full collections, over and over.

``GcPacer`` keeps the long-lived objects out of the collector's way with ``gc.freeze()``
(which moves every tracked object to the permanent generation, in constant time: no later
collection walks them; reference counting still frees them as usual):

- ``"joins"`` (the default): young collections 70 times rarer (threshold 50,000, so the
  short-lived objects of a delivery die by reference counting before a collection promotes
  them), and a freeze after start-up, then again at most every ``interval`` seconds when
  readers joined since the last freeze: the objects of connections that are established stay
  out of every collection, and the collector only walks what was made since. Frozen objects
  that later become unreachable cycles (a closed connection's task and coroutine) are not
  collected while frozen: once ``growth`` (1.0: all) of the readers there were at the last
  sweep have left since (at least 1,000), the pacer unfreezes, collects once and freezes
  again. That bounds the memory held by frozen garbage to about the size of the live set, at
  the price of one full pause per turnover of the clients; readers joining alone (a process
  filling up) never cause one.
- ``"startup"``: freeze once, after start-up (the imports and the app), nothing after.
- ``"thresholds"``: no freezing; young collections 70 times rarer (threshold 50,000).
- ``"off"``: CPython's defaults.

``benchmarks/scenarios/web_clients.py`` measures them (``STREAMING_GC_MODE``); the README
gives the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable

from .errors import ConfigurationError

__all__ = ["MODES", "GcPacer"]

logger = logging.getLogger(__name__)

MODES = ("joins", "startup", "thresholds", "off")
#: The young generation's threshold in ``"thresholds"`` mode (CPython's default is 700).
YOUNG_THRESHOLD = 50_000
#: Fewer readers than this leaving leave too little frozen garbage to be worth a sweep.
_SWEEP_FLOOR = 1000


class GcPacer:
    """Applies one of ``MODES`` to this process's collector while it runs (see the module).

    ``joins()`` counts the readers that joined so far and ``readers()`` those reading now
    (``ReaderHub.joins``, ``ReaderHub.readers``): their difference tells how many left.
    """

    def __init__(self, mode: str, joins: Callable[[], int], readers: Callable[[], int], *,
                 interval: float = 1.0, growth: float = 1.0) -> None:
        if mode not in MODES:
            raise ConfigurationError(f"gc mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.joins = joins
        self.readers = readers
        self.interval = interval
        self.growth = growth
        self.sweeps = 0
        self.freezes = 0
        self._seen = 0
        self._swept = (0, 0)  # (joins, readers) at the last sweep
        self._thresholds: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Apply the mode (on the running loop for ``"joins"``)."""
        if self.mode in ("thresholds", "joins"):
            self._thresholds = gc.get_threshold()
            gc.set_threshold(YOUNG_THRESHOLD, *self._thresholds[1:])
        if self.mode in ("startup", "joins"):
            gc.collect()
            self._freeze()
            if self.mode == "joins":
                self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Stop pacing and give the collector its objects back."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        if self.mode in ("startup", "joins"):
            gc.unfreeze()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.tick()

    def tick(self) -> None:
        """Freeze if readers joined since the last tick; sweep once enough readers left."""
        joined = self.joins()
        if joined == self._seen:
            return
        self._seen = joined
        self._freeze()
        joins, readers = self._swept
        now = self.readers()
        left = (joined - joins) - (now - readers)
        if left >= max(self.growth * readers, _SWEEP_FLOOR):
            gc.unfreeze()
            gc.collect()
            self._freeze()
            self._swept = (joined, now)
            self.sweeps += 1
            logger.debug("gc pacer: swept after %d readers left", left)

    def _freeze(self) -> None:
        gc.freeze()
        self.freezes += 1
