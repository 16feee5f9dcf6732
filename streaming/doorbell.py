"""Following runs on a single server by their doorbells: read only the runs that changed.

A hub that blocks on one ``XREAD`` over every followed stream sends every followed key again
each time any of them gets an entry: with thousands of quiet runs followed, that is the cost
of every round, on the client and on the server. Instead, after each flush our writer
publishes the stream keys it wrote to on one shard channel (``wire.DOORBELL``, ``SPUBLISH``,
which the project's ACL users may already use: one message per flush, whatever the number of
runs in it), the guarded ``END`` publishes the stream key of the run it ended there too, and
the ``DoorbellFollower``:

- subscribes (``SSUBSCRIBE``) to the doorbell channel alone, once, on one pubsub connection:
  a reader joining or leaving costs no command of its own;
- on a message marks the followed runs it names, and reads the marked runs together in one
  non-blocking ``XREAD`` from their positions, handing the entries to the runs' readers
  (``streaming.fanout``): a round costs the runs that changed. The reads go down a connection
  of the follower's own, without redis-py's command wrapper (``client.round_trip``): every
  chunk of a live run costs one of them;
- reads a run when it is first followed (after the reader's catch-up) and every followed run
  when the doorbell's subscription is confirmed, which closes the race between a catch-up and
  the subscription; after a lost pubsub connection it subscribes again and so reads every
  followed run once;
- checks quiet runs' status once per ``liveness_interval`` like any follower, and reads a run
  whose last seq is ahead of its position: the safety net for a message lost anyway.

Only runs our writer rings follow this way (a run the store knows: pending, live or idle); a
run written by another writer (the seed's, which publishes nothing) is followed by the hub's
blocking ``XREAD`` instead (``streaming.hub``). ``settings.doorbell`` turns this off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError
from redis.retry import Retry

from .client import TRANSIENT, async_client, round_trip
from .cursor import RunStatus, id_key, xread_raw
from .fanout import Follower
from .wire import DOORBELL

if TYPE_CHECKING:
    from .hub import ReaderHub

__all__ = ["DoorbellFollower"]

logger = logging.getLogger(__name__)
_BATCH = 500
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0


class DoorbellFollower(Follower):
    """Follows our writers' runs on one server through the doorbell channel (see module)."""

    def __init__(self, hub: ReaderHub) -> None:
        super().__init__(hub)
        # A single server's (the doorbells are off in a cluster).
        self.client = cast(aredis.Redis, async_client(
            hub.settings, reader=True, single_connection_client=True, retry=Retry(NoBackoff(), 0)))
        self.pubsub = self.client.pubsub()
        #: The connection of the reads, from ``client``'s pool (closed with it).
        self.conn: aredis.Connection | None = None
        self.dirty: dict[str, None] = {}  # stream keys to read
        self.notifications = 0
        self._doorbell = True  # the doorbell channel is to be subscribed to
        self._listener: asyncio.Task[None] | None = None

    # -- events (readers joining and leaving, notifications) --------------------------------

    def _behind(self, key: str) -> None:
        self._mark(key)

    def _unfollowed(self, key: str) -> None:
        self.dirty.pop(key, None)

    def _checked(self, key: str, status: RunStatus) -> None:
        if key in self.pos and id_key(self.pos[key]) < (0, status.last_seq):
            self._mark(key)  # a notification was lost: read what it announced

    def _stored(self, key: str) -> None:
        self._mark(key)

    def _mark(self, key: str) -> None:
        self.dirty[key] = None
        self.changed.set()

    def _rang(self, data: str) -> None:
        """A writer's flush: the stream keys it wrote to."""
        self.notifications += 1
        pos = self.pos
        for key in data.split(" "):
            if key in pos:
                self.dirty[key] = None
        if self.dirty:
            self.changed.set()

    def _listening(self) -> None:
        """The doorbell channel's subscription is confirmed: read what rang before it."""
        for key in self.pos:
            self.dirty[key] = None
        self.changed.set()

    # -- the follower's task ----------------------------------------------------------------

    async def run(self) -> None:
        delay = _BACKOFF_MIN
        while not self.closed:
            if not (self.dirty or self._doorbell):
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), max(self.next_check_in(), 0.0))
            try:
                await self._subscriptions()
                await self._read_dirty()
                delay = _BACKOFF_MIN
            except NoPermissionError as exc:
                # The server's ACL grants no channels: no doorbell rings; runs are still read
                # at their liveness checks. Grant ``&sse:*`` (deploy/redis.acl) or set
                # STREAMING_DOORBELL=false.
                logger.error("reader hub: doorbells refused (%s): readers wait for liveness "
                             "checks; grant the channels &sse:* or set STREAMING_DOORBELL=false",
                             exc)
                self._doorbell = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
            except TRANSIENT as exc:
                logger.warning("reader hub: doorbell read failed (%s), retrying in %.2f s",
                               exc, delay)
                await self._reconnect()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
            if self.next_check_in() <= 0:
                await self._check_quiet_runs()

    async def _subscriptions(self) -> None:
        if self._doorbell:
            self._doorbell = False
            await self.pubsub.ssubscribe(DOORBELL)
            self._listen_soon()

    def _listen_soon(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _read_dirty(self) -> None:
        keys = [key for key in self.dirty if key in self.pos]
        self.dirty.clear()
        if not keys:
            return
        streams = {key: self.pos[key] for key in keys}
        if self.conn is None:
            self.conn = await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        [answer] = await round_trip(self.conn, [("XREAD", "COUNT", _BATCH, "STREAMS", *streams,
                                                 *streams.values())])
        if isinstance(answer, ResponseError):
            await self._drop_bad_keys(keys, answer)
            return
        reply = xread_raw(answer)
        self.reads += 1
        for key, entries in reply:
            if len(entries) >= _BATCH:
                self._mark(key)  # more after this batch
            self.dispatch(key, streams[key], entries)

    async def _drop_bad_keys(self, keys: list[str], exc: ResponseError) -> None:
        """A followed key changed type under the hub: end its readers, read the others."""
        logger.warning("reader hub: doorbell read refused (%s); checking keys", exc)
        for key in keys:
            if await self.hub.client.type(key) not in ("stream", "none"):
                self.end_key(key)
            else:
                self._mark(key)

    async def _listen(self) -> None:
        """Notifications and confirmations. A connection quiet for ``block_timeout`` gets a
        PING, which must be answered within ``socket_timeout`` (a silent network is noticed
        as soon as the blocking read it replaces would notice it, for one command per
        ``block_timeout``, as that read cost); gone: subscribe again."""
        settings = self.hub.settings
        timeout, pinged = settings.block_timeout, False
        try:
            while not self.closed:
                message = await self.pubsub.get_message(timeout=timeout)
                if message is not None:
                    timeout, pinged = settings.block_timeout, False
                    self._handle(message)
                elif pinged:
                    raise RedisConnectionError("the doorbell connection did not answer a PING")
                else:
                    await self.pubsub.ping()
                    timeout, pinged = settings.socket_timeout, True
        except TRANSIENT as exc:
            if not self.closed:
                logger.warning("reader hub: doorbells stopped (%s); subscribing again", exc)
                await self._reconnect()
        except NoPermissionError as exc:  # a confirmation refused by the ACL: see run()
            logger.error("reader hub: doorbells refused: %s", exc)

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "smessage":
            self._rang(message["data"])
        elif message["type"] == "ssubscribe":
            self._listening()

    async def _reconnect(self) -> None:
        """Drop the pubsub connection; subscribe again (the confirmation reads every followed
        run once)."""
        listener, self._listener = self._listener, None
        old, self.pubsub = self.pubsub, self.client.pubsub()
        self._doorbell = True
        self.changed.set()
        if listener is not None and listener is not asyncio.current_task():
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, *TRANSIENT):
                await listener
        with contextlib.suppress(*TRANSIENT):
            await old.aclose()  # type: ignore[no-untyped-call]  # unannotated upstream

    async def _close_connections(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, *TRANSIENT):
                await self._listener
        with contextlib.suppress(*TRANSIENT):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(*TRANSIENT):
            await self.client.aclose()
