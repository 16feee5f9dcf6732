"""Run control for any process (API or worker): queue marker, cancel request, status.

Each function takes a client and has a sync and an async form; none imports Celery.
"""

from __future__ import annotations

from . import scripts
from .client import AsyncClient, SyncClient
from .cursor import RunStatus
from .settings import Settings
from .wire import RunKeys

__all__ = [
    "amark_pending",
    "arequest_cancel",
    "arun_status",
    "cancel_reason",
    "mark_pending",
    "request_cancel",
    "run_status",
]


def _keys(run_id: str, settings: Settings) -> RunKeys:
    return RunKeys.for_run(run_id, hash_tag=settings.cluster_hash_tags)


def mark_pending(client: SyncClient, run_id: str, settings: Settings,
                 queue_timeout: int = 3600) -> None:
    """Record a queued run so readers wait for it instead of ending with ``not_found``.

    The marker expires after ``queue_timeout`` s if no worker claims the run.
    """
    keys = _keys(run_id, settings)
    with client.pipeline(transaction=False) as pipe:
        pipe.hsetnx(keys.meta, "attempt", 0)
        pipe.hsetnx(keys.meta, "seq", 0)
        pipe.expire(keys.meta, queue_timeout, nx=True)
        pipe.execute()


async def amark_pending(client: AsyncClient, run_id: str, settings: Settings,
                        queue_timeout: int = 3600) -> None:
    keys = _keys(run_id, settings)
    async with client.pipeline(transaction=False) as pipe:
        pipe.hsetnx(keys.meta, "attempt", 0)
        pipe.hsetnx(keys.meta, "seq", 0)
        pipe.expire(keys.meta, queue_timeout, nx=True)
        await pipe.execute()


_CANCEL = """#!lua
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'end') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'cancel', ARGV[1])
return 1
"""


def request_cancel(client: SyncClient, run_id: str, settings: Settings,
                   reason: str = "cancelled") -> bool:
    """Ask the run's producer to stop; False if the run is unknown or already ended.

    The producer sees the request on its next flush and ends the run as ``cancelled``.
    """
    return bool(client.eval(_CANCEL, 1, _keys(run_id, settings).meta, reason or "cancelled"))


async def arequest_cancel(client: AsyncClient, run_id: str, settings: Settings,
                          reason: str = "cancelled") -> bool:
    keys = _keys(run_id, settings)
    return bool(await client.eval(_CANCEL, 1, keys.meta, reason or "cancelled"))


def cancel_reason(client: SyncClient, run_id: str, settings: Settings) -> str:
    """The reason given to ``request_cancel()`` for the run; '' if none was."""
    return client.hget(_keys(run_id, settings).meta, "cancel") or ""  # type: ignore[return-value]


def run_status(client: SyncClient, run_id: str, settings: Settings) -> RunStatus:
    """The run's state, last seq id, attempt and ending (see ``RunStatus``)."""
    keys = _keys(run_id, settings)
    reply = client.eval(scripts.STATUS.source, 3, keys.meta, keys.lease, keys.stream)
    return RunStatus.from_reply(reply[0])


async def arun_status(client: AsyncClient, run_id: str, settings: Settings) -> RunStatus:
    keys = _keys(run_id, settings)
    reply = await client.eval(scripts.STATUS.source, 3, keys.meta, keys.lease, keys.stream)
    return RunStatus.from_reply(reply[0])
