"""Redis clients built from settings. Nothing here connects until a command is sent.

With ``settings.cluster`` the clients are redis-py's cluster clients: they route each command
by its key's slot and follow the cluster's redirections (``MOVED``, ``ASK``) themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.cluster
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterError, RedisClusterException, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .errors import ConfigurationError
from .packing import PackedConnection
from .settings import CLUSTER_SCHEME, Settings

__all__ = ["TRANSIENT", "AsyncClient", "SyncClient", "async_client", "read_replies", "round_trip",
           "send_commands", "server_url", "sync_client"]

#: A client of the stream store: one server, or a cluster.
AsyncClient: TypeAlias = "aredis.Redis | acluster.RedisCluster"
SyncClient: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"

#: Errors after which the same command may succeed later: the server or a node is unreachable,
#: or a cluster is failing over or moving slots (redis-py retries those a few times itself).
TRANSIENT: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, OSError, ClusterError, TryAgainError,
    RedisClusterException,
)


def server_url(settings: Settings) -> str:
    """``settings.redis_url`` as redis-py takes it (a ``+cluster`` scheme made plain)."""
    if not settings.redis_url:
        raise ConfigurationError(
            "no Redis URL: set REDIS_URL, or start an embedded server (streaming.embedded)"
        )
    return CLUSTER_SCHEME.sub(r"\1://", settings.redis_url, count=1)


def _options(settings: Settings, reader: bool) -> dict[str, object]:
    return {
        "decode_responses": True,
        # A reader's socket must outlast its longest blocking read.
        "socket_timeout": settings.socket_timeout + (settings.block_timeout if reader else 0),
        "socket_connect_timeout": settings.socket_timeout,
        "health_check_interval": 30,
    }


def async_client(settings: Settings, *, reader: bool = False, max_connections: int | None = None,
                 **overrides: object) -> AsyncClient:
    """An asyncio client for ``settings.redis_url``; use it on one event loop only.

    ``reader=True`` sizes the socket timeout for blocking reads. ``max_connections`` bounds
    the connections it opens: a command beyond them waits for one (at most the socket
    timeout) instead of failing, as redis-py's default pool does past its 100. A cluster
    client cannot wait (it keeps up to 100 connections per node and fails past them): its
    users bound their concurrent commands themselves, and ``max_connections`` is ignored.
    """
    url = server_url(settings)
    options = _options(settings, reader) | overrides
    options.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
    if settings.cluster:
        return acluster.RedisCluster.from_url(url, **options)
    if url.startswith("redis://"):  # commands packed in C (TLS and unix sockets: redis-py's)
        options.setdefault("connection_class", PackedConnection)
    if max_connections is None:
        return aredis.Redis.from_url(url, **options)  # type: ignore[arg-type]
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=options["socket_timeout"], **options)
    return aredis.Redis.from_pool(pool)


def sync_client(settings: Settings, *, reader: bool = False, **overrides: object) -> SyncClient:
    """A thread-safe blocking client for ``settings.redis_url`` (``reader``: as above)."""
    url = server_url(settings)
    options = _options(settings, reader) | overrides
    options.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
    if settings.cluster:
        return redis.cluster.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


#: How many packed bytes ``send_commands`` gathers before it writes them: the server starts on the
#: first commands of a long pipeline while the rest are still being packed.
SEND_SLICE = 64 * 1024


async def round_trip(conn: aredis.Connection, commands: Iterable[tuple[Any, ...]]) -> list[Any]:
    """The raw replies to ``commands``, sent together down ``conn``; an error reply is its
    exception. No redis-py command wrapper around them (a pool checkout, response callbacks,
    retries): for the hot paths that hold a connection of their own. A failure to send or
    read raises, and redis-py has then closed ``conn`` (its next command connects again), so
    no reply is left on it to be read as the next one's."""
    return await read_replies(conn, await send_commands(conn, commands))


async def send_commands(conn: aredis.Connection, commands: Iterable[tuple[Any, ...]], *,
                        check_health: bool = True) -> int:
    """Send ``commands`` down ``conn`` without reading their replies; returns how many.

    ``commands`` may be a generator: each command is packed when it is reached, and the packed
    bytes go out every ``SEND_SLICE`` bytes, so the server executes the first commands while
    the next ones are built. ``check_health``: redis-py's idle check first (a ``PING`` after
    ``health_check_interval``, whose reply it reads), which a caller with replies still to
    read on ``conn`` must not run."""
    count, size, pieces = 0, 0, []
    for command in commands:
        count += 1
        for piece in conn.pack_command(*command):
            pieces.append(piece)
            size += len(piece)
        if size >= SEND_SLICE:
            await conn.send_packed_command(pieces, check_health=check_health)
            check_health, size, pieces = False, 0, []
    if pieces:
        await conn.send_packed_command(pieces, check_health=check_health)
    return count


async def read_replies(conn: aredis.Connection, count: int) -> list[Any]:
    """The next ``count`` replies on ``conn``, in order; an error reply is its exception."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies
