"""Following runs in a Redis Cluster: shard-channel notifications instead of one blocking read.

``XREAD`` over several keys needs them all in one slot, so in a cluster a hub cannot block on
every followed stream at once. Instead the writer's ``APPEND`` publishes the new last seq id of
a run on the run's shard channel (``RunKeys.notify``, in the run's slot), and the hub's
``ClusterFollower``:

- subscribes (``SSUBSCRIBE``) to the channel of each followed run, on one pubsub connection per
  primary that owns one of them (``_NodeListener``);
- on a notification, reads that run without blocking (``XRANGE`` from just after its position;
  the reads of all runs notified meanwhile go out together in one cluster pipeline) and hands the
  entries to
  the run's readers (``streaming.fanout``, as on a single server);
- reads a run once when it is first followed, and once more when its subscription is confirmed:
  that closes the race between a reader's catch-up and the subscription. The same happens
  after every re-subscription: a lost pubsub connection, or a slot that moved to another node
  (the server then ends our subscriptions of that slot with ``SUNSUBSCRIBE``; we refresh the
  slot map and subscribe on the new owner);
- asks for the status of quiet runs once per ``liveness_interval``, or when a run's stored
  deadline comes due (``control.arun_statuses``: ``STATUS`` once per slot, all in one cluster
  pipeline), and reads a run whose last seq id is ahead of its position: the safety net for
  notifications lost while a connection was down. An overdue run's ending, stored by the hub
  (``END`` publishes on the run's channel too), is read at once.

A primary that hangs (stopped, partitioned: connections open, nothing answers) is detected in
bounded time: a pubsub connection quiet for ``node_check_interval`` is pinged and given up when
the ping is not answered within as long again, and every step of the follower (subscribing,
reading, status checks) is bounded by twice that interval. A given-up node's channels are
subscribed again wherever a fresh slot map (asked of the other nodes first) puts them: once the
cluster has promoted a replica, its runs are followed there, so delivery resumes within the
failover time plus about two check intervals, not when the hung node comes back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from .client import TRANSIENT, server_url
from .cursor import Entry, RunStatus, id_key
from .errors import ConfigurationError
from .fanout import Follower
from .wire import NOTIFY_SUFFIX

if TYPE_CHECKING:
    from .hub import ReaderHub

__all__ = ["ClusterFollower"]

logger = logging.getLogger(__name__)
_BATCH = 500
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0
#: redis-py >= 7 can ask a suspect node for the slot map last (a hung node would hold the
#: refresh for its socket timeout).
_DEFERS_SUSPECT = "last_failed_node_name" in inspect.signature(NodesManager.initialize).parameters


def _stream_of(channel: str) -> str:
    return channel.removesuffix(NOTIFY_SUFFIX)


def node_url(url: str, host: str, port: int) -> str:
    """``url`` (credentials, TLS, options) pointed at one node of its cluster."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address))


class _NodeListener:
    """One pubsub connection to one primary, and the shard channels subscribed on it.

    Its task reads the connection: notifications, subscription confirmations, and the
    ``SUNSUBSCRIBE`` a node sends when a slot moves away. It pings a connection quiet for
    ``node_check_interval`` and gives up on one that does not answer within the next (a hung
    node); when it stops, the follower subscribes its channels again (wherever they live by
    then).
    """

    def __init__(self, follower: ClusterFollower, node: ClusterNode) -> None:
        settings = follower.hub.settings
        self.follower = follower
        self.name = node.name
        self.client = aredis.Redis.from_url(
            node_url(server_url(settings), node.host, int(node.port)), decode_responses=True,
            socket_timeout=settings.socket_timeout, socket_connect_timeout=settings.socket_timeout,
            health_check_interval=0, retry=Retry(NoBackoff(), 0),
        )
        self.pubsub = self.client.pubsub()
        self.channels: set[str] = set()
        self.leaving: collections.Counter[str] = collections.Counter()
        self.task: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str) -> None:
        """Send ``SSUBSCRIBE`` (its confirmation arrives on the listener's task)."""
        self.channels.add(channel)
        await self.pubsub.ssubscribe(channel)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        self.leaving[channel] += 1
        await self.pubsub.sunsubscribe(channel)

    async def run(self) -> None:
        interval = self.follower.hub.settings.node_check_interval
        pinged = False
        try:
            while True:
                try:
                    message = await self.pubsub.get_message(timeout=interval)
                except AskError as exc:  # MOVED or ASK: our slot map was out of date
                    self._moved(exc.slot_id)
                    continue
                except ResponseError as exc:
                    logger.warning("reader hub: node %s refused a subscription: %s", self.name, exc)
                    continue
                if message is not None:
                    pinged = False
                    self._handle(message)
                elif pinged:
                    raise RedisConnectionError(f"node {self.name} did not answer a PING "
                                               f"within {interval:g} s")
                elif self.channels:
                    await self.pubsub.ping()
                    pinged = True
        except TRANSIENT as exc:
            logger.warning("reader hub: notifications from %s stopped: %s", self.name, exc)
            self.follower.suspect = self.name
        finally:
            self.follower.listener_gone(self)

    def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            self.follower.notified(channel, message["data"])
        elif kind == "ssubscribe":
            self.follower.confirmed(channel)
        elif kind == "sunsubscribe":
            if self.leaving[channel] > 0:
                self.leaving[channel] -= 1  # the confirmation of our own SUNSUBSCRIBE
                if not self.leaving[channel]:
                    del self.leaving[channel]
            elif channel in self.channels:  # the node gave the channel's slot away
                self.channels.discard(channel)
                self.follower.lost([channel], self)

    def _moved(self, slot: int) -> None:
        lost = [c for c in self.channels if key_slot(c.encode()) == slot]
        self.channels.difference_update(lost)
        self.follower.lost(lost, self)

    async def aclose(self) -> None:
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        with contextlib.suppress(*TRANSIENT):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated upstream
        with contextlib.suppress(*TRANSIENT):
            await self.client.aclose()


class ClusterFollower(Follower):
    """Follows runs in a Redis Cluster through their shard channels (see the module)."""

    def __init__(self, hub: ReaderHub) -> None:
        super().__init__(hub)
        if not isinstance(hub.client, RedisCluster):
            raise ConfigurationError("a cluster reader hub needs a cluster client "
                                     "(streaming.client.async_client with settings.cluster)")
        self.client = hub.client
        self.dirty: dict[str, None] = {}  # stream keys to read
        self.unrouted: dict[str, None] = {}  # channels to subscribe to
        self.leaving: dict[str, None] = {}  # channels to unsubscribe from
        self.route: dict[str, _NodeListener] = {}  # channel -> where it is subscribed
        self.listeners: dict[str, _NodeListener] = {}  # node name -> listener
        self.refresh = False  # the slot map must be fetched again before routing
        self.suspect: str | None = None  # a node given up: asked for the slot map last
        self.notifications = 0
        self._closing: set[asyncio.Task[None]] = set()

    # -- events (from readers joining and leaving, and from the listeners) -----------------

    def _behind(self, key: str) -> None:
        channel = key + NOTIFY_SUFFIX
        self.leaving.pop(channel, None)
        if channel not in self.route:
            self.unrouted[channel] = None
        self._mark(key)

    def _unfollowed(self, key: str) -> None:
        channel = key + NOTIFY_SUFFIX
        self.unrouted.pop(channel, None)
        self.dirty.pop(key, None)
        if channel in self.route:
            self.leaving[channel] = None
            self.changed.set()

    def _checked(self, key: str, status: RunStatus) -> None:
        if key in self.pos and id_key(self.pos[key]) < (0, status.last_seq):
            self._mark(key)  # a notification was lost: read what it announced

    def _stored(self, key: str) -> None:
        self._mark(key)  # its notification may come before the read: read it anyway

    def _mark(self, key: str) -> None:
        self.dirty[key] = None
        self.changed.set()

    def notified(self, channel: str, data: str) -> None:
        self.notifications += 1
        key = _stream_of(channel)
        if key in self.pos and (not data.isdigit() or id_key(self.pos[key]) < (0, int(data))):
            self._mark(key)

    def confirmed(self, channel: str) -> None:
        key = _stream_of(channel)
        if key in self.pos:
            self._mark(key)

    def lost(self, channels: list[str], listener: _NodeListener) -> None:
        """``listener`` no longer delivers ``channels``: subscribe where they live now."""
        for channel in channels:
            if self.route.get(channel) is listener:
                del self.route[channel]
            if _stream_of(channel) in self.pos:
                self.unrouted[channel] = None
                self._mark(_stream_of(channel))
        self.refresh = True
        self.changed.set()

    def listener_gone(self, listener: _NodeListener) -> None:
        if self.listeners.get(listener.name) is listener:
            del self.listeners[listener.name]
        if not self.closed:
            self.lost([c for c, where in self.route.items() if where is listener], listener)
            task = asyncio.get_running_loop().create_task(listener.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # -- the follower's task -----------------------------------------------------------------

    async def run(self) -> None:
        # Each step is bounded: a hung node must not hold the others' runs (a timeout is an
        # OSError, so it is retried like any transient failure).
        step = 2 * self.hub.settings.node_check_interval
        delay = _BACKOFF_MIN
        while not self.closed:
            if not (self.dirty or self.unrouted or self.leaving):
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), max(self.next_check_in(), 0.0))
            try:
                await asyncio.wait_for(self._subscriptions(), step)
                await asyncio.wait_for(self._read_dirty(), step)
                delay = _BACKOFF_MIN
            except TRANSIENT as exc:
                logger.warning("reader hub: cluster read failed (%r), retrying in %.2f s",
                               exc, delay)
                self.refresh = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
            if self.next_check_in() <= 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._check_quiet_runs(), step)

    async def _subscriptions(self) -> None:
        for channel in list(self.leaving):
            del self.leaving[channel]
            listener = self.route.pop(channel, None)
            if listener is not None:
                await listener.unsubscribe(channel)
        if not self.unrouted:
            return
        if self.refresh:  # after a slot move: let the nodes agree on the new owner first
            await asyncio.sleep(_BACKOFF_MIN)
            await self._refresh_slots()
            self.refresh = False
        await self.client.initialize()  # a no-op once the slot map is known
        for channel in list(self.unrouted):
            if channel not in self.unrouted:
                continue  # its last reader left while another channel was subscribed
            del self.unrouted[channel]
            try:
                await self._route(channel)
            except BaseException:  # a failure, or the step's bound cancelling it
                self.unrouted[channel] = None
                raise
            if _stream_of(channel) not in self.pos and channel in self.route:
                self.leaving[channel] = None  # its last reader left while it was subscribed

    async def _refresh_slots(self) -> None:
        """Fetch the slot map again, asking the node last given up (if any) last."""
        manager = self.client.nodes_manager
        if _DEFERS_SUSPECT and self.suspect is not None:
            await manager.initialize(last_failed_node_name=self.suspect)
        else:
            await manager.initialize()

    async def _route(self, channel: str) -> None:
        node = self.client.get_node_from_key(channel)
        if node is None:
            raise RedisConnectionError(f"no node serves {channel}")
        listener = self.listeners.get(node.name)
        if listener is None:
            listener = self.listeners[node.name] = _NodeListener(self, node)
        old = self.route.get(channel)
        if old is listener:
            return
        if old is not None:
            del self.route[channel]
            await old.unsubscribe(channel)
        try:
            await listener.subscribe(channel)
        except TRANSIENT:
            self.listeners.pop(node.name, None)
            await listener.aclose()
            raise
        self.route[channel] = listener

    async def _read_dirty(self) -> None:
        keys = [key for key in self.dirty if key in self.pos]
        self.dirty.clear()
        if not keys:
            return
        starts = {key: self.pos[key] for key in keys}
        try:
            await self.client.initialize()  # a no-op once the slot map is known
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    # XRANGE from just after the position, to the node of the key's slot:
                    # redis-py would ask a node where an XREAD's keys are, every time. A stale
                    # slot map costs a MOVED, which the pipeline follows.
                    pipe.execute_command("XRANGE", key, "(" + starts[key], "+", "COUNT", _BATCH,
                                         target_nodes=self.client.get_node_from_key(key))
                replies: list[Any] = await pipe.execute(raise_on_error=False)
        except BaseException:  # a failure, or the step's bound cancelling it: read them again
            self.dirty.update(dict.fromkeys(keys))
            raise
        self.reads += 1
        failed: Exception | None = None
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, TRANSIENT):
                self.dirty[key] = None
                failed = reply
            elif isinstance(reply, ResponseError):  # WRONGTYPE: not a run
                self.end_key(key)
            else:
                entries: list[Entry] = list(reply or [])
                self.dispatch(key, starts[key], entries)
                if len(entries) >= _BATCH:
                    self.dirty[key] = None
        if failed is not None:
            raise failed

    async def _close_connections(self) -> None:
        listeners, self.listeners = list(self.listeners.values()), {}
        for listener in listeners:
            await listener.aclose()
        for task in list(self._closing):
            with contextlib.suppress(asyncio.CancelledError):
                await task
