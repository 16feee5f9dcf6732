"""The shared reader of a web process: many readers, a few blocking reads, no polling.

A ``ReaderHub`` lives on one event loop. Each reader first catches up on its own (plain
``XREAD`` from its cursor, no blocking), then joins the hub, whose connections each run one
``XREAD BLOCK`` over every followed stream and fan the entries out in-process. A waiting reader
costs no command of its own: one blocking read per ``block_timeout`` serves them all, and one
``STATUS`` call per ``liveness_interval`` checks every quiet run's producer at once (a run whose
stored deadline comes due sooner is checked then); an overdue run's ending is stored by the hub
(the guarded ``END`` script) and read like any entry. When a
reader joins, the hub interrupts its blocking read with ``CLIENT UNBLOCK`` so the new stream
is followed at once. Where the server's ACL does not grant ``CLIENT UNBLOCK`` (the hub tries it
once, on a connection that is not blocked), the shared reads block for at most
``NO_UNBLOCK_BLOCK`` s instead: a new reader waits up to that long for its first live event.
A reader that falls ``reader_queue`` entries behind is detached and
catches up on its own again, so one slow client never holds the others back
(``streaming.fanout``). In a Redis Cluster the hub follows runs through shard channels
instead (``streaming.cluster``); readers see no difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry

from . import cluster, control
from . import metrics as _metrics
from .client import TRANSIENT, AsyncClient, async_client
from .cursor import NOT_A_RUN, Entry, Parsed, RunCursor, RunStatus, wrong_type, xread_reply
from .doorbell import DoorbellFollower
from .errors import ReaderError, StreamGoneError
from .fanout import Follower, Sub
from .settings import Settings
from .wire import Event, RunKeys, Terminal, parse_cursor

__all__ = ["HubReader", "ReaderHub"]

logger = logging.getLogger(__name__)
_BATCH = 500
#: Connections of the non-blocking commands (catch-up reads, status checks) of every reader:
#: a burst of new readers waits its turn on these instead of opening one connection each.
_POOL = 16
_TRANSIENT = TRANSIENT
#: States of a run the store knows (meta written by our writer or ``mark_pending``): our
#: writers ring its doorbell. A run without them (the seed's) is followed by blocking reads.
_RINGING = frozenset({"pending", "live", "idle"})
#: Longest shared blocking read when ``CLIENT UNBLOCK`` is refused (the slower fallback).
NO_UNBLOCK_BLOCK = 1.0


class _Shard(Follower):
    """One blocking connection and the streams it follows."""

    def __init__(self, hub: ReaderHub, index: int) -> None:
        super().__init__(hub)
        self.index = index
        self.client: AsyncClient = async_client(
            hub.settings, reader=True, single_connection_client=True, retry=Retry(NoBackoff(), 0)
        )
        self.client_id: int | None = None
        self.reading: dict[str, str] | None = None
        self.unblocking = False
        #: Whether ``CLIENT UNBLOCK`` is allowed: None until tried.
        self.can_unblock: bool | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _behind(self, key: str) -> None:
        reading = self.reading
        if reading is not None and reading.get(key) != self.pos[key]:
            self._unblock()

    def _unblock(self) -> None:
        if self.unblocking or self.client_id is None or self.can_unblock is False:
            return
        self.unblocking = True
        task = asyncio.get_running_loop().create_task(self._send_unblock(self.client_id))
        self._tasks.add(task)  # held until done; it never ends with an exception
        task.add_done_callback(self._tasks.discard)

    async def _send_unblock(self, client_id: int) -> None:
        try:
            await self.hub.client.client_unblock(client_id)
        except ResponseError as exc:  # NOPERM: the server's ACL does not grant it
            self._refused(exc)
        except _TRANSIENT as exc:
            logger.warning("reader hub: CLIENT UNBLOCK failed: %s", exc)
        finally:
            self.unblocking = False

    async def _try_unblock(self) -> None:
        """Find out once whether ``CLIENT UNBLOCK`` is allowed (our connection is not blocked
        now, so it unblocks nothing)."""
        assert self.client_id is not None
        try:
            await self.hub.client.client_unblock(self.client_id)
            self.can_unblock = True
        except ResponseError as exc:
            self._refused(exc)

    def _refused(self, exc: ResponseError) -> None:
        if self.can_unblock is not False:
            logger.warning("reader hub: CLIENT UNBLOCK refused (%s); shared reads block at most "
                           "%g s, so a new reader waits up to that long", exc, NO_UNBLOCK_BLOCK)
        self.can_unblock = False

    def _sooner(self) -> None:
        if self.reading is not None:
            self._unblock()  # its blocking read may last past the new check time

    async def run(self) -> None:
        delay = 0.05
        while not self.closed:
            if not self.subs:
                self.changed.clear()
                await self.changed.wait()
                continue
            try:
                await self._read_once()
                delay = 0.05
            except _TRANSIENT as exc:
                logger.warning("reader hub: read failed (%s), retrying in %.2f s", exc, delay)
                _metrics.store_error("hub")
                self.client_id = None
                with contextlib.suppress(*_TRANSIENT):
                    await self.client.aclose()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            if self.next_check_in() <= 0:
                await self._check_quiet_runs()

    async def _read_once(self) -> None:
        if self.client_id is None:
            self.client_id = int(await self.client.client_id())
            if self.can_unblock is None:
                await self._try_unblock()
            if not self.pos:
                return  # every reader left while the connection was set up
        settings = self.hub.settings
        block = max(min(settings.block_timeout, self.next_check_in()), 0.01)
        if not self.can_unblock:
            block = min(block, NO_UNBLOCK_BLOCK)
        self.reading = dict(self.pos)
        try:
            streams: dict[Any, Any] = self.reading
            reply = xread_reply(
                await self.client.xread(streams, count=_BATCH, block=int(block * 1000)))
        except ResponseError as exc:
            await self._drop_bad_keys(exc)
            return
        finally:
            self.reading = None
        self.reads += 1
        for key, entries in reply:
            self.dispatch(key, streams[key], entries)

    async def _drop_bad_keys(self, exc: ResponseError) -> None:
        """A followed key changed type under the hub: end its readers, keep the others."""
        logger.warning("reader hub: shared read refused (%s); checking keys", exc)
        for key in list(self.subs):
            if await self.hub.client.type(key) not in ("stream", "none"):
                self.end_key(key)

    async def _close_connections(self) -> None:
        await self.client.aclose()


class ReaderHub:
    """Serves any number of readers on one event loop from a few shared connections.

    ``connections`` blocking connections split the followed streams between them (on a single
    server; in a cluster the hub holds one pubsub connection per primary instead).
    ``client`` (default: built from ``settings``) runs the non-blocking commands, and stores
    the ending of a run that is overdue by its stored times. A client that may not write (an
    ACL without write commands, a read-only replica) is refused that write: only then do its
    readers make the ending up (no ``id:``; the same kind and message). Deadlines need the
    server's clock: a client that may not run ``TIME`` leaves overdue runs to the workers'
    sweeps.
    """

    def __init__(self, settings: Settings, *, client: AsyncClient | None = None,
                 connections: int = 1) -> None:
        self.settings = settings
        self._own_client = client is None
        # In a cluster no command of this client blocks (the hub follows runs by pubsub), so it
        # keeps the plain socket timeout: a hung node is given up on sooner.
        self.client = client or async_client(settings, reader=not settings.cluster,
                                             max_connections=_POOL)
        self._connections = connections
        self._shards: list[Follower] = []  # every follower
        self._blocking: list[Follower] = []  # the blocking XREAD ones (single server)
        self._doorbell: Follower | None = None  # runs our writers ring (single server)
        self.readers = 0
        #: Readers that started reading so far (``streaming.gcpolicy`` freezes after joins).
        self.joins = 0
        # At most this many catch-up reads and status checks at once: a single server's pool
        # waits for a free connection, a cluster client fails past its limit instead.
        self._gate = asyncio.Semaphore(_POOL)

    async def start(self) -> ReaderHub:
        if self._shards:
            raise ReaderError("reader hub already started")
        if self.settings.cluster:
            self._shards = [cluster.ClusterFollower(self)]
        else:
            self._blocking = [_Shard(self, i) for i in range(self._connections)]
            self._shards = list(self._blocking)
            if self.settings.doorbell:
                self._doorbell = DoorbellFollower(self)
                self._shards.append(self._doorbell)
        for shard in self._shards:
            shard.task = asyncio.get_running_loop().create_task(shard.run())
        return self

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop the shared reads (readers still iterating end with the hub's error)."""
        for shard in self._shards:
            await shard.close(timeout)
        self._shards, self._blocking, self._doorbell = [], [], None
        if self._own_client:
            await self.client.aclose()

    async def __aenter__(self) -> ReaderHub:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def read(self, run_id: str, starting_after: object = None) -> HubReader:
        """The events of ``run_id`` after ``starting_after``; raises at once on bad input."""
        if not self._shards:
            raise ReaderError("reader hub not started: await hub.start() first")
        keys = RunKeys.for_run(run_id, hash_tag=self.settings.cluster_hash_tags)
        cursor = RunCursor(keys, parse_cursor(starting_after), self.settings)
        return HubReader(self, cursor)

    def stats(self) -> dict[str, int]:
        return {
            "readers": self.readers,
            "followed": sum(len(s.subs) for s in self._shards),
            "following": sum(len(subs) for s in self._shards for subs in s.subs.values()),
            "blocking_reads": sum(s.reads for s in self._shards),
        }

    @property
    def alive(self) -> bool:
        """Started, and every shared read's task still running (the readiness check)."""
        return bool(self._shards) and all(
            s.task is not None and not s.task.done() and not s.closed for s in self._shards)

    def _shard(self, key: str, rings: bool = False) -> Follower:
        """The follower of ``key``: in a cluster the one there is; on one server the doorbell
        one for a run our writers ring (``rings``), else a blocking one."""
        if self.settings.cluster:
            return self._shards[0]
        if rings and self._doorbell is not None:
            return self._doorbell
        return self._blocking[hash(key) % len(self._blocking)]

    async def statuses(self, runs: list[RunKeys]) -> list[RunStatus]:
        """Status of many runs in one command (in a cluster: one per slot, in one pipeline)."""
        async with self._gate:
            return await control.arun_statuses(self.client, [r.run_id for r in runs],
                                               self.settings)

    async def end_overdue(self, run: RunKeys) -> Terminal | None:
        """Store the ending of an overdue run (``control.aend_if_overdue``); its ending after
        the call. The server's refusal (``control.ending_refused()``) if this hub may not write."""
        async with self._gate:
            return await control.aend_if_overdue(self.client, run.run_id, self.settings)

    async def _entries_after(self, key: str, after: str, count: int) -> list[Entry]:
        """Up to ``count`` entries of stream ``key`` after entry id ``after``, without blocking.

        XRANGE from just after the position is XREAD without blocking, and a cluster client
        routes it alone (for XREAD it first asks a node where the keys are).
        """
        async with self._gate:
            reply: Any = await self.client.xrange(key, min="(" + after, count=count)
        return list(reply or [])


class HubReader:
    """One reader's events; iterate with ``async for``. ``terminal`` tells how it ended."""

    def __init__(self, hub: ReaderHub, cursor: RunCursor) -> None:
        self.hub = hub
        self.cursor = cursor
        #: The run's status when the reader opened (its ``last_seq`` ends the stored history).
        self.status: RunStatus | None = None
        self._start: list[Event] | None = None
        self._check_in: float | None = None
        #: The run's attempt when it was opened (for log lines), None before.
        self.attempt: int | None = None
        self._rings = False  # our writers announce its entries (streaming.doorbell)

    @property
    def terminal(self) -> Terminal | None:
        return self.cursor.terminal

    @property
    def last_seq(self) -> int:
        return self.cursor.after

    @property
    def exhausted(self) -> bool:
        """Nothing (more) to yield: the reader has the run's ending. Meaningful after ``open()``."""
        return self.cursor.done and not self._start

    async def open(self) -> HubReader:
        """Check the run before reading (iteration does it if you don't).

        Raises ``InvalidCursor`` when the cursor is past the run's last seq; afterwards
        ``terminal`` is set if the run ended and the cursor already has its ending (nothing
        left to send: an HTTP server answers 204), or if the run does not exist.
        """
        if self._start is None:
            cursor = self.cursor
            self.status = status = (await self.hub.statuses([cursor.keys]))[0]
            self.attempt = status.attempt
            self._start = cursor.check_start(status)
            self._check_in = cursor.next_check(status, self.hub.settings.liveness_interval)
            self._rings = status.state in _RINGING
            if cursor.overdue(status):
                try:  # stored here, then read like any entry
                    await self.hub.end_overdue(cursor.keys)
                except StreamGoneError:  # a key of the run holds someone else's value
                    self._start = cursor.check_alive(status, unwritable=True)
                except ResponseError as exc:
                    if not control.ending_refused(exc):
                        raise
                    self._start = cursor.check_alive(status, unwritable=True)
        return self

    def __aiter__(self) -> AsyncIterator[Event]:
        return cast(AsyncIterator[Event], self.timed(None))

    async def timed(self, idle: float | None) -> AsyncIterator[Event | None]:
        """The events, with ``None`` after every ``idle`` seconds without one while the reader
        waits for the run (``None``: never). A web response sends a keepalive for each
        ``None``: the wait's own timer, not a task and a ``wait()`` per event."""
        cursor = self.cursor
        self.hub.readers += 1
        self.hub.joins += 1
        try:
            async for event in self._catch_up(opening=True):
                yield event
            loop = asyncio.get_running_loop()
            while not cursor.done:
                # Following, written out here rather than in a generator of its own: every
                # event of a live run passes this loop, one generator layer less per event.
                shard = self.hub._shard(cursor.keys.stream, self._rings)
                sub = Sub(cursor, cursor.last_id)
                shard.add(sub, self._check_in)
                try:
                    while cursor.terminal is None and not sub.lagged:
                        if not sub.ready:
                            await sub.waiting(loop, idle)  # a future: no coroutine per wait
                            if not sub.ready:
                                yield None  # idle for ``idle`` seconds
                                continue
                        sub.ready = False
                        for event in cursor.feed_parsed(self._taken(sub, shard)):
                            yield event
                        if sub.status is not None:
                            for event in self._checked(sub):
                                yield event
                finally:
                    shard.remove(sub)
                    sub.unwait()
                async for event in self._catch_up():  # it fell behind: on its own again
                    yield event
        finally:
            self.hub.readers -= 1

    @staticmethod
    def _taken(sub: Sub, shard: Follower) -> list[Parsed]:
        """What the hub handed ``sub`` since it last woke."""
        if shard.closed:
            raise ReaderError("the reader hub was closed")
        entries, sub.entries = sub.entries, []
        return entries

    def _checked(self, sub: Sub) -> list[Event]:
        """The ending a status the hub handed ``sub`` calls for, if any."""
        status, sub.status = sub.status, None
        if status is None or self.cursor.done:
            return []
        return self.cursor.check_alive(status, unwritable=sub.unwritable)

    async def _catch_up(self, opening: bool = False) -> AsyncIterator[Event]:
        """Non-blocking reads from the cursor until the run's end or its newest entry; when
        ``opening``, the run is checked first (``open()``) and what that found comes first."""
        cursor = self.cursor
        if opening:
            await self.open()
            start, self._start = self._start or [], []
            for event in start:
                yield event
        # A reader whose client does not read holds its batch: reader_queue bounds it here too.
        count = min(_BATCH, self.hub.settings.reader_queue)
        while not cursor.done:
            try:
                entries = await self.hub._entries_after(cursor.keys.stream, cursor.last_id, count)
            except ResponseError as exc:
                if not wrong_type(exc):
                    raise
                for event in cursor.check_alive(NOT_A_RUN):  # its stream key was replaced
                    yield event
                return
            for event in cursor.feed(entries):
                yield event
            if len(entries) < count:
                return
