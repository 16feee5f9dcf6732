"""Fan-out: the new entries of a run handed to every reader following it, once each, in order.

A ``Follower`` keeps the readers of many runs (``Sub``: one reader's mailbox), the position up
to which it has read each run, and hands every batch it reads to the run's readers; a reader
that falls ``reader_queue`` entries behind is detached and catches up on its own. It asks for
the status of a followed run that was quiet for ``liveness_interval``, or sooner when the run's
stored deadline comes due (``RunCursor.next_check``); an overdue run gets its stored ending
(``control.aend_if_overdue``), which the follower then reads and hands over like any entry.
How a follower learns of new entries is its subclass's job: one blocking ``XREAD`` over every
followed stream on a single server (``streaming.hub``), shard-channel notifications in a cluster
(``streaming.cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from .client import TRANSIENT
from .control import ending_refused
from .cursor import NOT_A_RUN, Entry, Parsed, RunCursor, RunStatus, id_key, parse_entries
from .errors import StreamGoneError

if TYPE_CHECKING:
    from .hub import ReaderHub

__all__ = ["Follower", "Sub"]

logger = logging.getLogger(__name__)
_STATUS_KEYS = 300  # runs per status request


@dataclass(eq=False, slots=True)
class Sub:
    """One reader following one run: the entries handed to it and not taken yet.

    Woken with ``wake()`` (the follower, once per batch it hands over) and waited on with
    ``waiting()`` (the reader, until ``ready``): a plain future of the loop per wait, made and
    resolved in C, not an ``asyncio.Event`` (whose every wait asks for the running loop, a
    ``getpid()`` system call on Python 3.11, and goes through a waiters deque in Python).
    ``entries`` is parsed once per batch for all the run's readers, and may be that shared
    list: it is replaced, never changed in place.
    """

    cursor: RunCursor
    sent_id: str  # newest entry handed to this reader
    entries: list[Parsed] = field(default_factory=list)
    #: ``sent_id`` as a sortable pair.
    sent: tuple[int, int] = field(init=False)
    lagged: bool = False
    status: RunStatus | None = None
    #: The store refused this process the guarded ending: the reader makes it up.
    unwritable: bool = False
    ready: bool = False
    waiter: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.sent = id_key(self.sent_id)

    def wake(self) -> None:
        """Something changed for this reader (entries, a status, its end)."""
        self.ready = True
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def waiting(self, loop: asyncio.AbstractEventLoop,
                timeout: float | None = None) -> asyncio.Future[None]:
        """A future done at the next ``wake()``, or after ``timeout`` seconds (``ready`` then
        still False). A plain future, not a coroutine: awaiting it adds no frame per wait."""
        waiter = self.waiter = loop.create_future()
        if timeout is not None:
            self.timer = loop.call_later(timeout, _expire, waiter)
        return waiter

    def unwait(self) -> None:
        """The reader left: its timer goes (a cancelled wait's future is cancelled already)."""
        if self.timer is not None:
            self.timer.cancel()
        self.waiter = self.timer = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Follower:
    """The readers of many runs, the position read up to in each run, and the hand-over.

    Subclasses implement ``run()`` (the task that reads) and may react to ``_behind()`` (a
    followed stream must be read again from ``pos``), ``_unfollowed()`` and ``_checked()``.
    """

    def __init__(self, hub: ReaderHub) -> None:
        self.hub = hub
        self.subs: dict[str, set[Sub]] = {}
        #: Per followed stream key, the entry id the next read starts after.
        self.pos: dict[str, str] = {}
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.reads = 0
        #: Per followed stream key, when (``time.monotonic()``) to check the run's status.
        self.check_at: dict[str, float] = {}
        #: No check is due before this (a lower bound of ``check_at``'s values, made exact at
        #: each check): the minimum over thousands of runs is not taken on every read.
        self._earliest = math.inf

    async def run(self) -> None:
        raise NotImplementedError

    def add(self, sub: Sub, check_in: float | None = None) -> None:
        """Follow ``sub``'s run; ``check_in``: seconds until its status is worth checking
        (its stored deadline, from the status the reader opened with)."""
        key = sub.cursor.keys.stream
        new = key not in self.subs
        self.subs.setdefault(key, set()).add(sub)
        longest = self.hub.settings.liveness_interval
        at = time.monotonic() + (longest if check_in is None else min(check_in, longest))
        if new or at < self.check_at[key]:
            self.check_at[key] = at
            self._earliest = min(self._earliest, at)
            if not new:
                self._sooner()
        if new or sub.sent < id_key(self.pos[key]):
            self.pos[key] = sub.sent_id
            self._behind(key)
        self.changed.set()

    def remove(self, sub: Sub) -> None:
        key = sub.cursor.keys.stream
        subs = self.subs.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subs[key]
                self.pos.pop(key, None)
                self.check_at.pop(key, None)
                self._unfollowed(key)

    def _behind(self, key: str) -> None:
        """``pos[key]`` moved back (or the key is new): entries after it must be read."""

    def _unfollowed(self, key: str) -> None:
        """The last reader of ``key`` left."""

    def _checked(self, key: str, status: RunStatus) -> None:
        """The liveness check found ``status`` for the quiet run of ``key``."""

    def _sooner(self) -> None:
        """A followed run's next check moved earlier than the follower may be waiting."""

    def _stored(self, key: str) -> None:
        """This follower stored an entry (an ending) in ``key``: it must be read."""

    def _heard(self, key: str) -> None:
        if key in self.check_at:  # its producer was heard from: check it again later
            self.check_at[key] = time.monotonic() + self.hub.settings.liveness_interval

    def next_check_in(self) -> float:
        """Seconds until the next status check is due (at most ``liveness_interval``)."""
        longest = self.hub.settings.liveness_interval
        if not self.check_at:
            return longest
        return min(self._earliest - time.monotonic(), longest)

    def dispatch(self, key: str, after: str, entries: list[Entry]) -> None:
        """Hand ``entries`` (read from just ``after``) to the readers of ``key``."""
        subs = self.subs.get(key)
        if not subs or not entries:
            return
        limit = self.hub.settings.reader_queue
        behind: Sub | None = None
        self._heard(key)
        items = parse_entries(entries)  # once for all the run's readers
        start, first = id_key(after), items[0][0]
        last_key, last_id = items[-1][0], items[-1][1]
        for sub in list(subs):
            sent = sub.sent
            if sent < start:
                # It joined, further back, while this read was in flight: the batch does not
                # start where it is. It gets the next read, from its own position.
                if behind is None or sent < behind.sent:
                    behind = sub
                continue
            new = items if sent < first else [item for item in items if item[0] > sent]
            if not new:
                continue
            if len(sub.entries) + len(new) > limit:
                sub.lagged = True
                self.remove(sub)
            else:
                sub.entries = sub.entries + new if sub.entries else new
                sub.sent, sub.sent_id = last_key, last_id
            sub.wake()
        if key in self.pos:
            self.pos[key] = last_id if behind is None else behind.sent_id
            if behind is not None:
                self._behind(key)

    def end_key(self, key: str) -> None:
        """The key is not a run (another type): end its readers as if it were missing."""
        for sub in self.subs.pop(key, ()):
            sub.status = NOT_A_RUN
            sub.wake()
        self.pos.pop(key, None)
        self.check_at.pop(key, None)
        self._unfollowed(key)

    async def _check_quiet_runs(self) -> None:
        """Check the runs whose check is due: one status command for many runs; an overdue
        run's ending is stored, then read like any entry."""
        now = time.monotonic()
        longest = self.hub.settings.liveness_interval
        # Runs due within half an interval are checked now too: readers joining over time
        # then share one status command per interval instead of one each.
        due = [key for key, at in self.check_at.items() if at <= now + longest / 2]
        for key in due:  # checked again after this unless the check says sooner
            self.check_at[key] = now + longest
        self._earliest = min(self.check_at.values(), default=math.inf)
        for start in range(0, len(due), _STATUS_KEYS):
            keys = [k for k in due[start:start + _STATUS_KEYS] if k in self.subs]
            runs = [next(iter(self.subs[k])).cursor.keys for k in keys]
            try:
                statuses = await self.hub.statuses(runs)
            except TRANSIENT as exc:
                logger.warning("reader hub: liveness check failed: %s", exc)
                return
            for key, status in zip(keys, statuses, strict=True):
                if key in self.subs:
                    await self._judge(key, status)

    async def _judge(self, key: str, status: RunStatus) -> None:
        """Act on the status of the quiet run of ``key`` and hand it to its readers."""
        self._checked(key, status)
        cursor = next(iter(self.subs[key])).cursor
        unwritable = False
        if cursor.overdue(status):
            try:
                await self.hub.end_overdue(cursor.keys)
                self._stored(key)
            except StreamGoneError:  # a key of the run holds someone else's value
                unwritable = True
            except ResponseError as exc:
                unwritable = ending_refused(exc)
                if not unwritable:
                    logger.warning("reader hub: storing an overdue run's ending failed: %s", exc)
            except TRANSIENT as exc:
                logger.warning("reader hub: storing an overdue run's ending failed: %s", exc)
        elif key in self.check_at:
            longest = self.hub.settings.liveness_interval
            at = time.monotonic() + cursor.next_check(status, longest)
            self.check_at[key] = at
            self._earliest = min(self._earliest, at)
        for sub in self.subs.get(key, ()):
            sub.status, sub.unwritable = status, unwritable
            sub.wake()

    async def close(self, timeout: float) -> None:
        """Stop reading (readers still waiting end with the hub's error)."""
        self.closed = True
        if self.task is not None:
            # redis-py may turn the cancellation of a blocking read into a connection
            # error, which the loop retries: the closed flag ends it either way.
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self.task, timeout)
        await self._close_connections()
        for subs in self.subs.values():
            for sub in subs:
                sub.wake()

    async def _close_connections(self) -> None:
        """Close the connections this follower owns."""
