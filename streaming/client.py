"""Redis clients built from settings. Nothing here connects until a command is sent."""

from __future__ import annotations

import redis
import redis.asyncio as aredis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .errors import ConfigurationError
from .settings import Settings

__all__ = ["async_client", "sync_client"]


def _options(settings: Settings, reader: bool) -> dict[str, object]:
    if not settings.redis_url:
        raise ConfigurationError(
            "no Redis URL: set REDIS_URL, or start an embedded server (streaming.embedded)"
        )
    return {
        "decode_responses": True,
        # A reader's socket must outlast its longest blocking read.
        "socket_timeout": settings.socket_timeout + (settings.block_timeout if reader else 0),
        "socket_connect_timeout": settings.socket_timeout,
        "health_check_interval": 30,
    }


def async_client(settings: Settings, *, reader: bool = False, max_connections: int | None = None,
                 **overrides: object) -> aredis.Redis:
    """An asyncio client for ``settings.redis_url``; use it on one event loop only.

    ``reader=True`` sizes the socket timeout for blocking reads. ``max_connections`` bounds
    the connections it opens: a command beyond them waits for one (at most the socket
    timeout) instead of failing, as redis-py's default pool does past its 100.
    """
    options = _options(settings, reader) | overrides
    options.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
    if max_connections is None:
        return aredis.Redis.from_url(settings.redis_url, **options)  # type: ignore[arg-type]
    pool = aredis.BlockingConnectionPool.from_url(
        settings.redis_url,  # type: ignore[arg-type]
        max_connections=max_connections, timeout=options["socket_timeout"], **options)
    return aredis.Redis.from_pool(pool)


def sync_client(settings: Settings, *, reader: bool = False, **overrides: object) -> redis.Redis:
    """A thread-safe blocking client for ``settings.redis_url`` (``reader``: as above)."""
    options = _options(settings, reader) | overrides
    options.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
    return redis.Redis.from_url(settings.redis_url, **options)  # type: ignore[arg-type]
