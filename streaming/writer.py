"""The per-process stream writer: callers append in microseconds, a background loop flushes.

One ``StreamWriter`` per process (``shared_writer()``). Its flushes run on an asyncio loop
(uvloop's where it is installed) in a daemon thread it owns. A write appends to an in-memory
buffer under a lock and, only when the loop is idle, wakes it: an idle writer sends a chunk at
once, and while a flush is in flight the next chunks gather for the next pipeline (adaptive
batching, no fixed linger). Each flush is a pipeline with one ``APPEND`` script call per run
(``streaming.scripts``), so Redis assigns contiguous sequence numbers, fences stale writers
and drops replayed chunks; two flushes are in flight at most (``_flush``).

Redis outages are retried with backoff, holding at most ``max_buffer_bytes``; a write that finds
the buffer full waits up to ``buffer_timeout``; past ``unavailable_timeout`` writers get
``StoreUnavailableError`` while the accepted chunks stay buffered until Redis returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import json
import logging
import operator
import os
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aredis
from redis.exceptions import NoScriptError, OutOfMemoryError, ResponseError

from . import metrics as _metrics
from . import scripts
from .client import TRANSIENT, AsyncClient, async_client, read_replies, send_commands
from .deltas import MERGE_LIMIT, Delta, weights_arg
from .errors import (
    BufferFullError,
    RunBusyError,
    RunClosedError,
    StaleWriterError,
    StoreUnavailableError,
    StreamGoneError,
    WriterError,
    WriterStateError,
)
from .logs import run_extra
from .settings import Settings
from .wire import (
    DOORBELL,
    RUN_INDEX,
    RunKeys,
    Terminal,
    check_frame_size,
    encode_frame,
    terminal_frame,
)

__all__ = ["RunWriter", "StreamWriter", "WriterStats", "shared_writer"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
_TRANSIENT = TRANSIENT
#: Replies of a server that did not take a flush: full, or gone (a cluster answers per node).
_UNTAKEN: tuple[type[Exception], ...] = (OutOfMemoryError, *TRANSIENT)
#: Replies whose chunks go again as they are: those, and scripts the server does not know.
_AGAIN: tuple[type[Exception], ...] = (NoScriptError, *_UNTAKEN)
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0
#: Failures of the best-effort run index update: logged, never a failed claim.
_INDEX_ERRORS: tuple[type[Exception], ...] = (*TRANSIENT, ResponseError)


#: Computed once: ``Script.sha`` hashes the source on every use.
_APPEND_SHA = scripts.APPEND.sha
#: Forks this process is past (bumped in every child): a writer made before a fork is unusable.
_forks = 0


class _NoRoom(Exception):
    """The buffer is full and the caller asked not to block."""


@dataclass
class WriterStats:
    """Counters of one writer (read them with ``StreamWriter.stats()``)."""

    accepted: int = 0
    written: int = 0
    flushes: int = 0
    retries: int = 0
    buffered_bytes: int = 0
    open_runs: int = 0


@dataclass(eq=False)
class _Run:
    """Writer-side state of one run; guarded by the writer's lock."""

    keys: RunKeys
    token: str
    attempt: int
    seq: int
    pending: deque[tuple[int, str, int]] = field(default_factory=deque)
    accepted: int = 0  # local index of the last chunk accepted
    acked: int = 0  # local index of the last chunk Redis stored
    ending: Terminal | None = None
    error: WriterError | None = None
    cancel_requested: str = ""
    refreshed: float = field(default_factory=time.monotonic)
    resumed_chunks: int = 0  # output chunks of earlier attempts this attempt continues after
    output_from: int = 1  # local index of the first output chunk (after ``restarted``)
    delta: Delta | None = None  # the open text delta, not in ``pending`` yet (streaming.deltas)
    last_delta: float = 0.0  # when the run's previous text delta was accepted (monotonic)
    weights: dict[int, int] = field(default_factory=dict)  # merged entries not acked yet


class StreamWriter:
    """Writes runs' chunks to Redis streams through a background flush loop.

    Thread-safe; ``start()`` it once per process (after fork), ``stop()`` it at shutdown.
    ``client_factory`` builds the asyncio client on the writer's own loop (default: from
    ``settings``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_factory: Callable[[], AsyncClient] | None = None,
    ) -> None:
        self.settings = settings
        self._client_factory = client_factory or (lambda: async_client(settings))
        self._pid = os.getpid()
        self._forks = _forks  # forks this process is past: another value means a fork since
        # Hot paths take the lock itself; waits go through the condition on the same lock.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._runs: dict[str, _Run] = {}
        self._dirty: dict[_Run, None] = {}
        self._buffered = 0
        self._waiting_since = 0.0  # wall time the oldest unflushed chunk began waiting
        self._wake_pending = False
        self._stopping = False
        self._closed = True  # writes refused: not started yet, or stopping
        self._outage_since: float | None = None
        self._outage_reason = ""
        #: Flushes failed in a row since the server last took one: what the retries back off by.
        self._failures = 0
        #: The server answered NOSCRIPT: the next flush or lease refresh loads the scripts first
        #: (``_reload_lost_scripts``).
        self._scripts_unknown = False
        self._stats = WriterStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._client: AsyncClient | None = None
        #: The connection of the flushes (single server), held for the client's life.
        self._conn: aredis.Connection | None = None
        #: The flush sent last, its replies not read yet (``_flush``).
        self._flight: _Flight | None = None
        self._done = threading.Event()
        self._failure: WriterError | None = None  # why the flush loop died (_fail)
        # The producers' doorbell to the loop (see _wake): an eventfd, or a pipe elsewhere.
        self._wake_fd = -1
        self._wake_read = -1

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> StreamWriter:
        """Start the flush thread and wait (at most ``timeout`` s) until its loop runs.

        Does no Redis I/O: a writer starts while Redis is down, and connects on first use.
        """
        self._check_process()
        if self._thread is not None:
            raise WriterStateError("writer already started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="streaming-writer", daemon=True
        )
        self._closed = False
        self._thread.start()
        if not ready.wait(timeout):
            raise WriterStateError(f"writer loop did not start within {timeout} s")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Flush everything accepted, then stop the loop; waits at most ``timeout`` s.

        Chunks Redis could not take within the timeout are dropped and logged with their
        count: a stopped process cannot keep them.
        """
        if self._thread is None or os.getpid() != self._pid:
            return
        with self._lock:
            self._stopping = self._closed = True
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            lost = sum(len(run.pending) for run in self._runs.values())
            logger.error("writer stopped after %.1f s with %d chunks unsent", timeout, lost)
            self._loop_call(self._cancel_all)
            self._thread.join(1.0)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set() and self._failure is None

    def stats(self) -> WriterStats:
        with self._lock:
            self._stats.buffered_bytes = self._buffered
            self._stats.open_runs = len(self._runs)
            return WriterStats(**vars(self._stats))

    # -- runs ------------------------------------------------------------------------------

    def open(self, run_id: str, *, token: str | None = None, wait: float = 0.0,
             announce_restart: bool = True, resume: bool = False) -> RunWriter:
        """Claim ``run_id`` for this writer and return its handle (blocks on Redis I/O).

        A run another live writer holds raises ``RunBusyError`` after waiting up to ``wait``
        seconds for its lease to lapse; an ended run raises ``RunClosedError`` (also when
        the run was ended for it: queued too long, or its producer lost), and one whose keys
        hold another kind of value (someone else's) ``WriterError``.

        A run claimed before by another writer (a retried or redelivered task) goes on with
        the next seq id, after a ``restarted`` event with data ``{"attempt": N, "resume":
        true|false, "chunks": K, "last_seq": S}``: S is the last seq id stored before it, K
        (``RunWriter.resumed_chunks``) the output chunks earlier attempts stored that this
        attempt continues after. ``resume=False`` (the default) starts the output over: K is
        0 and clients drop what they showed of the run before the event; ``resume=True``
        continues after chunk K (for a generator that can skip what it already produced).
        ``announce_restart=False`` leaves the event out: for a claim made only to write the
        ending of a run whose producer died (the run does not restart).
        """
        keys = RunKeys.for_run(run_id, hash_tag=self.settings.cluster_hash_tags)
        token = token or uuid.uuid4().hex
        deadline = time.monotonic() + self.settings.unavailable_timeout + wait
        run = self._call(self._claim(keys, token, wait, resume), deadline)
        with self._lock:
            self._runs[run_id] = run
        _metrics.run_started(run.attempt)
        handle = RunWriter(self, run)
        if run.attempt > 1 and announce_restart:
            run.output_from = 2
            payload = {"attempt": run.attempt, "resume": resume, "chunks": run.resumed_chunks,
                       "last_seq": run.seq}
            handle.send(json.dumps(payload), event="restarted")
        return handle

    async def aopen(self, run_id: str, *, token: str | None = None, wait: float = 0.0,
                    announce_restart: bool = True, resume: bool = False) -> RunWriter:
        """``open()`` for async callers (on any loop but the writer's)."""
        return await asyncio.to_thread(self.open, run_id, token=token, wait=wait,
                                       announce_restart=announce_restart, resume=resume)

    async def _claim(self, keys: RunKeys, token: str, wait: float, resume: bool) -> _Run:
        give_up = time.monotonic() + wait
        while True:
            reply = await self._with_retry(
                lambda: self._eval(scripts.CLAIM, keys, token, self._lease_ms(), self._ttl(),
                                   int(resume))
            )
            status = reply[0]
            if status == "ok":
                await self._index(keys.run_id, int(reply[5]))
                return _Run(keys, token, int(reply[1]), int(reply[2]), cancel_requested=reply[3],
                            resumed_chunks=int(reply[4]) if resume else 0)
            if status == "ended":
                raise RunClosedError(f"run {keys.run_id} already ended ({reply[1]})")
            if status == "wrongtype":
                raise WriterError(f"run {keys.run_id}: {reply[1]} holds a {reply[2]}, "
                                  "not this run's data; it was left as it is")
            if time.monotonic() >= give_up:
                _metrics.busy()
                raise RunBusyError(
                    f"run {keys.run_id} is held by another live writer "
                    f"(lease expires in {int(reply[1])} ms)"
                )
            await asyncio.sleep(min(max(int(reply[1]), 10) / 1000, 0.25,
                                    max(give_up - time.monotonic(), 0.01)))

    async def _index(self, run_id: str, now_ms: int) -> None:
        """Add the run to the run index (``control.sweep`` ends it if its producer dies).

        Best effort: the index lives in another slot than the run in a cluster, and the
        readers end an overdue run themselves whether it is indexed or not.
        """
        try:
            await self._get_client().zadd(RUN_INDEX, {run_id: now_ms}, nx=True)
        except _INDEX_ERRORS as exc:
            logger.warning("run %s not added to the run index: %s", run_id, exc)

    async def _unindex(self, run_ids: list[str]) -> None:
        """Drop runs this writer ended from the run index (best effort, as ``_index``): the
        index then holds unfinished runs, and runs ended by someone else until a sweep."""
        try:
            await self._get_client().zrem(RUN_INDEX, *run_ids)
        except _INDEX_ERRORS as exc:
            logger.warning("ended runs not removed from the run index: %s", exc)

    # -- the write path (any thread) -------------------------------------------------------

    def _accept(
        self, run: _Run, frame: str, ending: Terminal | None = None, *, block: bool = True,
        room_timeout: float | None = None,
    ) -> int:
        # The hot path of every send(): few calls and attribute reads, as a producer that
        # sleeps between chunks pays for each in cold caches.
        size = len(frame) + _CHUNK_OVERHEAD
        with self._lock:
            # An ending is accepted during an outage: it is how the run ends once Redis is back.
            if (run.error is not None or run.ending is not None or self._closed
                    or _forks != self._forks
                    or (self._outage_since is not None and ending is None)):
                self._check_writable(run, outage=ending is None)
            if self._buffered + size > self.settings.max_buffer_bytes:
                if not block:
                    raise _NoRoom
                self._wait_for_room(run, size, room_timeout, outage=ending is None)
            if run.delta is not None:
                self._seal(run)
            now = time.time()
            accepted = run.accepted = run.accepted + 1
            run.pending.append((accepted, frame, int(now * 1000)))
            run.ending = ending
            self._buffered += size
            self._stats.accepted += 1
            self._dirty[run] = None
            if not self._waiting_since:  # the health check reads it even if the loop is stuck
                self._waiting_since = now
                _metrics.waiting(now)
            if self._wake_pending:
                return accepted
            self._wake_pending = True
        self._wake()
        return accepted

    def _accept_text(self, run: _Run, text: str) -> int:
        """Buffer a text delta, merged into the run's open one when it is still waiting."""
        size = len(text) + _CHUNK_OVERHEAD
        with self._lock:
            self._check_writable(run)
            if self._buffered + size > self.settings.max_buffer_bytes:
                self._wait_for_room(run, size, None, outage=True)
            now = time.monotonic()
            delta = run.delta
            created = delta is None or not delta.fits(text)
            if delta is None or created:
                self._seal(run)
                run.accepted += 1
                delta = run.delta = Delta(run.accepted, int(time.time() * 1000), began=now,
                                          close=now - run.last_delta < self.settings.delta_linger)
                self._buffered += _CHUNK_OVERHEAD
            delta.add(text)
            run.last_delta = now
            self._buffered += len(text)
            self._stats.accepted += 1
            self._dirty[run] = None
            if not self._waiting_since:
                self._waiting_since = time.time()
                _metrics.waiting(self._waiting_since)
            # An open delta already has a flush coming (a wake, a flush in flight, or its
            # linger's timer): only a new one wakes the loop.
            wake = created and not self._wake_pending
            self._wake_pending = self._wake_pending or created
        if wake:
            self._wake()
        return delta.index

    def _seal(self, run: _Run) -> None:
        """Move the run's open text delta into ``pending`` as one frame (lock held)."""
        delta, run.delta = run.delta, None
        if delta is None:
            return
        frame = delta.frame()
        run.pending.append((delta.index, frame, delta.stamp_ms))
        self._buffered += _cost(frame) - (delta.size + _CHUNK_OVERHEAD)
        if delta.weight > 1:
            run.weights[delta.index] = delta.weight

    def _check_writable(self, run: _Run, *, outage: bool = True) -> None:
        if run.error is not None:
            raise run.error
        if run.ending is not None:
            raise RunClosedError(f"run {run.keys.run_id} already ended ({run.ending})")
        if self._closed:
            raise WriterStateError("writer is not running: start() it first")
        self._check_process()
        if outage and self._outage_since is not None:
            down = time.monotonic() - self._outage_since
            if down > self.settings.unavailable_timeout:
                raise StoreUnavailableError(self._outage())

    def _outage(self) -> str:
        assert self._outage_since is not None
        down = time.monotonic() - self._outage_since
        return (f"Redis unreachable or refusing writes for {down:.1f} s "
                f"(last: {self._outage_reason})")

    def _wait_for_room(self, run: _Run, size: int, timeout: float | None, *,
                       outage: bool) -> None:
        timeout = self.settings.buffer_timeout if timeout is None else timeout
        give_up = time.monotonic() + timeout
        while self._buffered + size > self.settings.max_buffer_bytes:
            left = give_up - time.monotonic()
            if left <= 0:
                # Say why when Redis is the cause (down, or out of memory): the run's
                # ending carries this message to its readers.
                why = f": {self._outage()}" if self._outage_since is not None else ""
                raise BufferFullError(
                    f"writer buffer full ({self._buffered} of "
                    f"{self.settings.max_buffer_bytes} bytes) for {timeout} s{why}"
                )
            self._cond.wait(left)
            self._check_writable(run, outage=outage)

    def _wait_acked(self, run: _Run, upto: int, timeout: float) -> None:
        give_up = time.monotonic() + timeout
        with self._lock:
            if run.delta is not None and run.delta.index <= upto:
                self._seal(run)  # a flush does not wait for a lingering delta
                self._wake_pending = True
                self._loop_call(self._wake_soon)
            while run.acked < upto and run.error is None:
                left = give_up - time.monotonic()
                if left <= 0:
                    raise self._unavailable(f"run {run.keys.run_id} not flushed in {timeout} s")
                self._cond.wait(min(left, 0.5))
            if run.error is not None:
                raise run.error

    def _unavailable(self, message: str) -> WriterError:
        if self._outage_since is not None:
            return StoreUnavailableError(f"{message}: Redis unreachable")
        return WriterError(message)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every chunk accepted so far is stored (at most ``timeout`` s)."""
        with self._lock:
            targets = [(run, run.accepted) for run in self._runs.values()]
        give_up = time.monotonic() + timeout
        for run, upto in targets:
            self._wait_acked(run, upto, max(give_up - time.monotonic(), 0.0))

    def _release(self, run: _Run, timeout: float) -> None:
        keys = run.keys
        with contextlib.suppress(WriterError):
            self._call(self._eval(scripts.RELEASE, keys, run.token), time.monotonic() + timeout)

    def _forget(self, run: _Run) -> None:
        with self._lock:
            if self._runs.get(run.keys.run_id) is run:
                del self._runs[run.keys.run_id]

    # -- the flush loop (writer thread) ----------------------------------------------------

    def _thread_main(self, ready: threading.Event) -> None:
        loop = _new_loop()
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._open_wake_fd(loop)
        ready.set()
        try:
            loop.run_until_complete(self._flush_loop())
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # boundary: a bug in the loop fails the runs, never hangs them
            logger.exception("writer loop failed; its runs fail")
            self._fail(WriterError(f"the writer's flush loop failed: {type(exc).__name__}: {exc}"))
        finally:
            loop.run_until_complete(self._close_client())
            loop.close()
            self._done.set()
            with self._lock:
                self._cond.notify_all()

    def _fail(self, error: WriterError) -> None:
        """Refuse every write from now on: each run's next call raises ``error`` (a caller
        waiting for its chunks to be stored, at once), and so does ``open()``. The writer is
        no longer ``running``: ``shared_writer()`` makes another. These runs' leases lapse,
        and readers see them end as lost."""
        with self._lock:
            self._closed = True
            self._failure = error
            for run in self._runs.values():
                if run.error is None:
                    run.error = error
            self._cond.notify_all()

    async def _flush_loop(self) -> None:
        assert self._wakeup is not None
        refresh_every = self.settings.lease_ttl / 3
        while True:
            if self._flight is None:  # else the flight's replies come (or fail) soon
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), refresh_every)
            self._wakeup.clear()
            batch = self._take_batch()
            if batch or self._flight is not None:
                await self._flush(batch)
                continue
            if self._stopping:
                return
            await self._refresh_quiet_runs(refresh_every)

    async def _flush(self, batch: _Batch) -> None:
        """Send ``batch`` (if any), then settle the flush sent before it.

        Two flushes are in flight at most: the server executes the next one's commands while
        this thread reads and settles the last one's replies and takes the next batch, instead
        of waiting for them. The replies of one connection come in order, and ``APPEND``
        refuses chunks after a gap (``ORDER``), so a later flush never stores a run's chunks
        past ones an earlier flush must send again (``_settle``).
        """
        flight, following = self._flight, None
        try:
            if batch:
                await self._reload_lost_scripts()
                following = await self._dispatch(batch)
            if flight is not None:
                replies = await flight.replies()
        except _TRANSIENT as exc:
            # The connection failed (redis-py closes it): no flush's replies can be read, and
            # none may be left on it for the next flush to take as its own.
            lost = [*(flight.batch if flight is not None else ()), *batch]
            self._flight = None
            if self._conn is not None:
                await self._conn.disconnect()
            await self._requeue(lost, exc)
            return
        self._flight = following
        if flight is not None:
            await self._complete(flight.batch, replies, flight.started)

    async def _dispatch(self, batch: _Batch) -> _Flight:
        """Send one flush: an ``APPEND`` call per run, and the doorbell (single server)."""
        started = time.perf_counter()
        # Built as they are sent (client.send_commands): the server runs the first runs'
        # scripts while the next are packed.
        commands: Iterable[tuple[Any, ...]] = (
            ("EVALSHA", _APPEND_SHA, 3, *self._append_args(run, chunks, ends))
            for run, chunks, ends, _ in batch)
        client = self._get_client()
        if not isinstance(client, aredis.Redis):
            # A cluster client's pipeline routes the commands by slot (their runs ring their
            # shard channels) and reads every node's replies before it returns.
            async with client.pipeline(transaction=False) as pipe:
                for command in commands:
                    # execute_command: redis-py's cluster pipeline has no evalsha() method,
                    # yet routes the command by its keys' slot.
                    pipe.execute_command(*command)
                return _Flight(batch, started, await pipe.execute(raise_on_error=False))
        if self.settings.doorbell:
            # One message per flush for every hub (streaming.doorbell), after the writes it
            # announces.
            commands = itertools.chain(commands, [(
                "SPUBLISH", DOORBELL, " ".join(run.keys.stream for run, *_ in batch))])
        # Straight down the writer's own connection, replies read off it later: redis-py's
        # pipeline around that (a pool checkout, a shield, response callbacks, retries the
        # writer does itself) cost the flush of one chunk more than the sending.
        conn = self._conn
        if conn is None:
            conn = self._conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        # redis-py's idle check (a PING and its reply) only when no flight's replies come first.
        sent = await send_commands(conn, commands, check_health=self._flight is None)
        return _Flight(batch, started, conn=conn, sent=sent)

    async def _complete(self, batch: _Batch, replies: list[Any], started: float) -> None:
        """Settle a flush from its replies (one per run, in the batch's order)."""
        self._stats.flushes += 1
        if any(isinstance(reply, NoScriptError) for reply in replies):
            self._scripts_unknown = True
        if not any(isinstance(reply, _UNTAKEN) for reply in replies):
            self._failures = 0  # the server is back and takes writes (a cluster: every node)
        retry = [(item, reply) for item, reply in zip(batch, replies, strict=True)
                 if not self._settle(item[0], item[1], reply, item[3])]
        self._observe_flush(time.perf_counter() - started, batch, retry)
        if retry:
            await self._requeue([item for item, _ in retry], retry[0][1])
        else:
            self._outage_since = None
        ended = [run.keys.run_id for (run, _, ends, _), reply in zip(batch, replies, strict=True)
                 if ends and not isinstance(reply, Exception)]
        if ended:
            await self._unindex(ended)

    def _take_batch(self) -> _Batch:
        """Move pending chunks of dirty runs into one batch, within the pipeline bound; each
        run's chunks with what they count against the buffer bound."""
        batch: _Batch = []
        room = self.settings.max_pipeline_bytes
        now, held = time.monotonic(), None
        with self._lock:
            self._wake_pending = False
            full = False
            for run in list(self._dirty):
                if room <= 0:
                    full = True  # the runs left (open deltas too) go in the next pipeline
                    break
                held = _earliest(held, self._seal_due(run, now))
                chunks, taken = self._take_chunks(run, room)
                room -= taken
                last = not run.pending
                if last and run.delta is None:
                    del self._dirty[run]
                if chunks:
                    cost = taken + _CHUNK_OVERHEAD * len(chunks)
                    # The ending is the last chunk accepted: it may be in a later flush's batch
                    # when these were sent again, with nothing pending behind them.
                    ends = run.ending is not None and chunks[-1][0] == run.accepted
                    batch.append((run, chunks, ends, cost))
            if full or any(run.pending for run in self._dirty):
                self._wake_pending = True
                self._wake_soon()
        if held is not None and self._loop is not None:
            self._loop.call_later(max(held - now, 0.0), self._wake_soon)
        return batch

    def _take_chunks(self, run: _Run, room: int) -> tuple[list[tuple[int, str, int]], int]:
        """The run's next pending chunks, at most ``max_batch``, up to the first past ``room``
        characters, and before any gap in their indices (lock held); with their characters.

        ``APPEND`` numbers a call's chunks on from its first: a gap is a flush's chunks that
        must go again (``_requeue``) while a later flush still carries the ones after them,
        which come back too (``ORDER``) and fill it.
        """
        pending = run.pending
        if not pending:  # an open text delta only
            return [], 0
        if (len(pending) <= self.settings.max_batch
                and pending[-1][0] - pending[0][0] == len(pending) - 1):
            # All of them, the usual case, moved at once.
            taken = sum(map(len, map(_FRAME, pending)))
            if taken <= room:
                chunks = list(pending)
                pending.clear()
                return chunks, taken
        chunks = [pending.popleft()]
        taken = len(chunks[0][1])
        while (pending and len(chunks) < self.settings.max_batch and room > taken
               and pending[0][0] == chunks[-1][0] + 1):
            chunk = pending.popleft()
            taken += len(chunk[1])
            chunks.append(chunk)
        return chunks, taken

    def _seal_due(self, run: _Run, now: float) -> float | None:
        """Seal the run's open delta unless it lingers (``delta_linger``): then its due time."""
        if run.delta is None:
            return None
        due = run.delta.due(self.settings.delta_linger)
        if due > now and not self._stopping:
            return due
        self._seal(run)
        return None

    def _observe_flush(self, seconds: float, batch: _Batch, retry: list[Any]) -> None:
        again = {id(item) for item, _ in retry}
        stored = [item[1] for item in batch if id(item) not in again and item[0].error is None]
        _metrics.flushed(seconds, sum(map(len, stored)),
                         map(_FRAME, itertools.chain.from_iterable(stored)))
        with self._lock:
            # Progress was made: what still waits has waited only since now.
            self._waiting_since = time.time() if self._buffered else 0.0
            _metrics.buffered(self._buffered, self._waiting_since)

    def _append_args(self, run: _Run, chunks: list[tuple[int, str, int]], ends: bool) -> list[Any]:
        keys = run.keys
        ending = run.ending.value if ends and run.ending else ""
        notify = keys.notify if self.settings.cluster else ""
        weights = ""
        if run.weights:  # merged text deltas wait for their ack (streaming.deltas)
            with self._lock:
                weights = weights_arg((index for index, _, _ in chunks), run.weights)
        return [keys.stream, keys.meta, keys.lease, run.token, self._lease_ms(), self._ttl(),
                self.settings.retention, self.settings.max_stream_length, chunks[0][0], ending,
                chunks[-1][2], notify, run.output_from, weights, self.settings.max_stream_bytes,
                *map(_FRAME, chunks)]

    def _settle(self, run: _Run, chunks: list[tuple[int, str, int]], reply: Any,
                cost: int = 0) -> bool:
        """Record one run's reply (``cost``: what ``chunks`` count against the buffer bound);
        False when the chunks must be sent again."""
        # A cluster pipeline answers per node: one node's outage shows as these replies.
        if isinstance(reply, _AGAIN):
            return False
        with self._lock:
            if (isinstance(reply, ResponseError) and str(reply).startswith("ORDER")
                    and run.acked < chunks[0][0] - 1):
                # The chunks before these are not stored yet, as this writer knows: a flush
                # sent before this one is sending them again. These follow them.
                return False
            if isinstance(reply, Exception):
                if run.error is None:  # the first refusal says why (a later flush's follows)
                    run.error = _refusal(run, reply)
                    logger.error("%s", run.error, extra=run_extra(run.keys.run_id, run.attempt))
                dropped = _size(run.pending) + cost
                if run.delta is not None:
                    dropped += run.delta.size + _CHUNK_OVERHEAD
                    run.delta = None
                run.pending.clear()
                self._dirty.pop(run, None)
                self._buffered -= dropped
            else:
                run.seq, run.acked, run.cancel_requested = int(reply[0]), int(reply[1]), reply[2]
                for index in [i for i in run.weights if i <= run.acked]:
                    del run.weights[index]
                run.refreshed = time.monotonic()
                self._buffered -= cost
                self._stats.written += len(chunks)
            self._cond.notify_all()
        return True

    async def _requeue(self, batch: _Batch, exc: BaseException) -> None:
        """Put a failed batch back among the pending chunks, in index order, and back off.

        The wait doubles with each failure since the server last answered and took writes, up
        to ``_BACKOFF_MAX``: a server back from an outage without its scripts (``NOSCRIPT``)
        costs one short wait, not the longest one of the outage, which in the soak ran into
        the next outage and let a live writer's lease lapse."""
        with self._lock:
            for run, chunks, _, cost in batch:
                if run.error is None:
                    # In index order among the chunks waiting: with two flushes in flight,
                    # a run's later chunks may be back before its earlier ones.
                    run.pending = deque(heapq.merge(chunks, run.pending, key=_INDEX))
                    self._dirty[run] = None
                else:
                    self._buffered -= cost
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                _metrics.outage()
            self._outage_reason = f"{type(exc).__name__}: {exc}"
            self._stats.retries += 1
            self._failures += 1
            self._cond.notify_all()
            down = time.monotonic() - self._outage_since
        if isinstance(exc, _TRANSIENT):
            logger.warning("flush failed (%s), retrying; Redis down for %.1f s", exc, down)
            await self._reset_client()
        await asyncio.sleep(min(_BACKOFF_MIN * 2 ** min(self._failures, 6), _BACKOFF_MAX))
        self._wake_soon()

    async def _refresh_quiet_runs(self, every: float) -> None:
        """Keep the lease and TTLs of runs that wrote nothing for ``every`` seconds."""
        now = time.monotonic()
        with self._lock:
            quiet = [run for run in self._runs.values()
                     if run.error is None and run.ending is None and now - run.refreshed >= every]
        if not quiet:
            return
        try:
            await self._reload_lost_scripts()
            async with self._get_client().pipeline(transaction=False) as pipe:
                for run in quiet:
                    pipe.execute_command("EVALSHA", scripts.REFRESH.sha, 3, run.keys.stream,
                                         run.keys.meta, run.keys.lease, run.token,
                                         self._lease_ms(), self._ttl())
                replies = await pipe.execute(raise_on_error=False)
        except _TRANSIENT as exc:
            logger.warning("lease refresh failed: %s", exc)
            await self._reset_client()
            return
        if any(isinstance(reply, NoScriptError) for reply in replies):
            self._scripts_unknown = True  # the next round loads them, then refreshes
            return
        for run, reply in zip(quiet, replies, strict=True):
            self._settle(run, [], reply if isinstance(reply, Exception) else
                         [reply[0], run.acked, reply[2]])

    # -- Redis plumbing (writer thread) ----------------------------------------------------

    def _get_client(self) -> AsyncClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    async def _reset_client(self) -> None:
        if self.settings.cluster:
            return  # a cluster client reconnects per node and keeps the nodes it discovered
        await self._close_client()

    async def _close_client(self) -> None:
        """Close the client, the flushes' connection given back to its pool first (a pool the
        client does not own, from ``client_factory``, outlives it). No reply is left on that
        connection: redis-py closes one whose command failed (``client.send_commands``), and
        a flight cancelled at stop has its connection closed here."""
        client, self._client = self._client, None
        conn, self._conn = self._conn, None
        if client is None:
            return
        if conn is not None and isinstance(client, aredis.Redis):
            if self._flight is not None:  # its replies are still on it (cancelled at stop)
                self._flight = None
                await conn.disconnect()
            await client.connection_pool.release(conn)
        with contextlib.suppress(*_TRANSIENT):
            await client.aclose()

    async def _reload_lost_scripts(self) -> None:
        """Load the scripts if the server answered ``NOSCRIPT`` (a restart loses them). Called
        by a flush and a lease refresh inside their own error handling, so a failure here is
        retried like theirs."""
        if self._scripts_unknown:
            await self._load_scripts()
            self._scripts_unknown = False

    async def _load_scripts(self) -> None:
        client = self._get_client()
        for script in (scripts.CLAIM, scripts.APPEND, scripts.REFRESH, scripts.RELEASE):
            await client.script_load(script.source)

    async def _eval(self, script: scripts.Script, keys: RunKeys, *args: Any) -> Any:
        client = self._get_client()
        try:
            return await client.evalsha(script.sha, 3, keys.stream, keys.meta, keys.lease, *args)
        except NoScriptError:
            await self._load_scripts()
            return await client.evalsha(script.sha, 3, keys.stream, keys.meta, keys.lease, *args)

    async def _with_retry(self, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        delay = _BACKOFF_MIN
        while True:
            try:
                return await call()
            except _TRANSIENT as exc:
                logger.warning("Redis unreachable (%s), retrying in %.2f s", exc, delay)
                await self._reset_client()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)

    def _lease_ms(self) -> int:
        return int(self.settings.lease_ttl * 1000)

    def _ttl(self) -> int:
        return self.settings.stream_ttl

    # -- thread plumbing -------------------------------------------------------------------

    def _check_process(self) -> None:
        # Compared with a counter the fork hook bumps, not os.getpid(): that system call was
        # the largest cost of a send().
        if _forks != self._forks:
            raise WriterStateError(
                f"this writer was created in process {self._pid} and cannot be used after "
                "fork(); call shared_writer() in the child to get its own"
            )

    def _open_wake_fd(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let producers wake the loop with one write to a file descriptor it watches.

        ``call_soon_threadsafe`` makes a handle, copies the context and sends on a socket,
        which a producer that sleeps between chunks pays for in cold caches on every
        ``send()``; one ``eventfd`` write is a single call. The descriptors live as long as
        this writer object, so a late wake never writes to a descriptor number reused since.
        Where there are none to be had, or the loop cannot watch them (Windows' proactor),
        producers keep ``call_soon_threadsafe``.
        """
        try:
            if hasattr(os, "eventfd"):
                read = write = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            else:
                read, write = os.pipe()
                os.set_blocking(read, False)
                os.set_blocking(write, False)
        except OSError as exc:  # out of file descriptors
            logger.warning("writer wakes its loop with call_soon_threadsafe: %s", exc)
            return
        weakref.finalize(self, _close_fds, {read, write})
        try:
            loop.add_reader(read, self._on_wake_fd)
        except NotImplementedError:
            return
        self._wake_read, self._wake_fd = read, write

    def _on_wake_fd(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 4096)  # eventfd: its counter, pipe: what is written
        self._wake_soon()

    def _wake(self) -> None:
        if self._wake_fd >= 0:
            # An eventfd takes a count of 8 bytes; a pipe any byte. A full pipe (or counter)
            # already has a wake coming. (No suppress(): this runs on every idle send.)
            try:  # noqa: SIM105
                os.write(self._wake_fd, _ONE)
            except BlockingIOError:
                pass
            return
        if self._loop is not None and not self._loop.is_closed():
            # The loop may close between the check and the call.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake_soon)

    def _wake_soon(self) -> None:
        assert self._wakeup is not None
        self._wakeup.set()

    def _loop_call(self, fn: Callable[[], None]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn)

    def _cancel_all(self) -> None:
        for task in asyncio.all_tasks():
            task.cancel()

    def _call(self, coro: Coroutine[Any, Any, T], deadline: float) -> T:
        """Run ``coro`` on the writer loop and wait for it until ``deadline``."""
        self._check_process()
        if self._failure is not None:
            coro.close()
            raise self._failure
        if self._loop is None or self._done.is_set():
            coro.close()
            raise WriterStateError("writer is not running: start() it first")
        if threading.current_thread() is self._thread:
            coro.close()
            raise WriterStateError("blocking writer call made from the writer's own loop")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(max(deadline - time.monotonic(), 0.0))
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise StoreUnavailableError(
                f"Redis did not answer within {self.settings.unavailable_timeout} s"
            ) from exc


class RunWriter:
    """The handle of one claimed run: send chunks, then end it exactly once."""

    def __init__(self, writer: StreamWriter, run: _Run) -> None:
        self._writer = writer
        self._run = run

    @property
    def run_id(self) -> str:
        return self._run.keys.run_id

    @property
    def attempt(self) -> int:
        """Which claim of the run this is: 1 for the first, more after retries."""
        return self._run.attempt

    @property
    def last_seq(self) -> int:
        """The last seq id Redis has stored for this run."""
        return self._run.seq

    @property
    def resumed_chunks(self) -> int:
        """K: the output chunks earlier attempts stored that this attempt continues after.

        0 for a first attempt and for one opened with ``resume=False`` (it starts over).
        A resumable generator skips its first K chunks and goes on from there.
        """
        return self._run.resumed_chunks

    @property
    def sent(self) -> int:
        """Entries this handle accepted (its ``restarted`` event included; text deltas merged
        into one entry count once)."""
        return self._run.accepted

    @property
    def stored(self) -> tuple[int, int]:
        """``(chunks, last_seq)`` as Redis has stored them, read together: how many of this
        handle's chunks (its ``restarted`` event included) and the run's last seq id."""
        with self._writer._lock:
            return self._run.acked, self._run.seq

    @property
    def cancel_requested(self) -> str:
        """The reason given to ``request_cancel()``, as last seen by a flush; '' if none."""
        return self._run.cancel_requested

    @property
    def ended(self) -> Terminal | None:
        return self._run.ending

    def send(self, data: str, event: str | None = None) -> int:
        """Frame ``data`` as one SSE event and buffer it; returns its local index (from 1)."""
        frame = encode_frame(data, event, limit=self._writer.settings.max_chunk_bytes)
        return self._writer._accept(self._run, frame)

    def send_text(self, text: str) -> int:
        """Buffer a text delta, the event ``data: {"text": text}``; returns its local index.

        Deltas that wait together in the buffer are stored as one event with their texts
        joined (``streaming.deltas``), which is how readers then get them; ``merge_deltas=False``
        stores each on its own.
        """
        if not isinstance(text, str):
            raise WriterError(f"a text delta is a str, not {type(text).__name__}")
        if not self._writer.settings.merge_deltas or len(text) > MERGE_LIMIT:
            return self.send(json.dumps({"text": text}, ensure_ascii=False))
        return self._writer._accept_text(self._run, text)

    def send_frame(self, frame: str) -> int:
        """Buffer an already framed SSE event (``data: ...\\n\\n``) as it is."""
        if not isinstance(frame, str) or not frame.endswith("\n\n"):
            raise WriterError("an SSE frame is text that ends with a blank line")
        check_frame_size(frame, self._writer.settings.max_chunk_bytes)
        return self._writer._accept(self._run, frame)

    async def asend(self, data: str, event: str | None = None) -> int:
        """``send()`` for async code: waits for buffer room without blocking the loop."""
        frame = encode_frame(data, event, limit=self._writer.settings.max_chunk_bytes)
        try:
            return self._writer._accept(self._run, frame, block=False)
        except _NoRoom:
            return await asyncio.to_thread(self._writer._accept, self._run, frame)

    def finish(
        self, kind: Terminal = Terminal.DONE, message: str = "", *, type: str | None = None,
        timeout: float = 30.0,
    ) -> int:
        """Write the run's one terminal entry and wait until all its chunks are stored.

        Returns the last seq id. ``kind`` is done, error, cancelled, timeout or lost.
        """
        give_up = time.monotonic() + timeout
        ending = self._run.ending is None
        if ending:
            frame = terminal_frame(kind, message, type=type)
            self._writer._accept(self._run, frame, kind, room_timeout=timeout)
        self.flush(max(give_up - time.monotonic(), 0.0))
        if ending:
            _metrics.run_ended(kind.value)
        self._writer._forget(self._run)
        return self._run.seq

    async def afinish(self, kind: Terminal = Terminal.DONE, message: str = "", *,
                      type: str | None = None, timeout: float = 30.0) -> int:
        return await asyncio.to_thread(self.finish, kind, message, type=type, timeout=timeout)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until every chunk this handle accepted is stored; returns the last seq id."""
        self._writer._wait_acked(self._run, self._run.accepted, timeout)
        return self._run.seq

    async def aflush(self, timeout: float = 10.0) -> int:
        return await asyncio.to_thread(self.flush, timeout)

    def release(self, timeout: float = 5.0) -> None:
        """Give the run up without ending it, so that another writer can take it at once.

        Flushes what this handle accepted (up to ``timeout`` s), then drops the lease. A retry
        claims the run with no wait; if nobody does within ``producer_timeout`` (counted from
        the release), the run gets a stored ``lost`` ending (a sweep's or a reader's).
        """
        with contextlib.suppress(WriterError):
            self.flush(timeout)
        self._writer._forget(self._run)
        self._writer._release(self._run, timeout)

#: Bytes a buffered chunk takes besides its frame's characters (its tuple, the str header,
#: two ints, a deque slot, allocator slack), so that ``max_buffer_bytes`` bounds memory, not
#: just text. Measured: the benchmarks' memory scenario grew RSS by ~380 bytes per buffered
#: chunk of ~130 characters.
_CHUNK_OVERHEAD = 256


#: What ``_wake`` writes: a count of 1 for an eventfd, 8 bytes for a pipe.
_ONE = (1).to_bytes(8, sys.byteorder)
#: A pending chunk's local index, and its frame.
_INDEX, _FRAME = operator.itemgetter(0), operator.itemgetter(1)


def _close_fds(fds: set[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _new_loop() -> asyncio.AbstractEventLoop:
    """The writer thread's event loop: uvloop's where it is installed (a flush costs the
    thread less of its time in the loop's own code), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


#: One flush: per run, its chunks, whether they end it, and what they count against the bound.
_Batch = list[tuple["_Run", list[tuple[int, str, int]], bool, int]]


@dataclass
class _Flight:
    """A flush sent: its batch, when it was sent, and where its replies are (one per run)."""

    batch: _Batch
    started: float
    answers: list[Any] | None = None  # read already (a cluster's pipeline)
    conn: aredis.Connection | None = None  # or still to be read off this connection
    sent: int = 0  # commands sent on it (the runs', and the doorbell's)

    async def replies(self) -> list[Any]:
        if self.answers is None:
            assert self.conn is not None
            self.answers = await read_replies(self.conn, self.sent)
        return self.answers[:len(self.batch)]


def _cost(frame: str) -> int:
    return len(frame) + _CHUNK_OVERHEAD


def _size(chunks: Iterable[tuple[int, str, int]]) -> int:
    return sum(_cost(frame) for _, frame, _ in chunks)


def _refusal(run: _Run, reply: Exception) -> WriterError:
    text = str(reply)
    name = run.keys.run_id
    if text.startswith("STALE"):
        _metrics.fenced()
        return StaleWriterError(f"run {name}: {text[6:]}")
    if text.startswith("CLOSED"):
        return RunClosedError(f"run {name}: {text[7:]}")
    if text.startswith("GONE"):
        return StreamGoneError(f"run {name}: {text[5:]}")
    return WriterError(f"run {name}: Redis refused the write: {text}")


_shared: tuple[int, StreamWriter] | None = None
_shared_lock = threading.Lock()


def shared_writer(settings: Settings | None = None, *, start_timeout: float = 5.0) -> StreamWriter:
    """This process's writer, created and started on first use (again in a forked child, and
    again after it was stopped: a worker stops it at shutdown, and in-process test workers
    start and stop one after another)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid() or not _shared[1].running:
            writer = StreamWriter(settings or Settings.from_env()).start(start_timeout)
            _shared = (os.getpid(), writer)
        return _shared[1]


def _forget_shared_after_fork() -> None:
    global _shared, _shared_lock, _forks
    _shared = None
    _shared_lock = threading.Lock()
    _forks += 1


os.register_at_fork(after_in_child=_forget_shared_after_fork)
