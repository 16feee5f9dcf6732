"""Run control for any process (API or worker): queue marker, cancel, status, endings, sweep.

Each function takes a client and has a sync and an async form; none imports Celery.

Endings the project decides are stored, never one process's opinion: ``end_run()`` runs the
guarded ``END`` script (``streaming.scripts``), which appends the run's terminal entry only if
the run is still unended and, with ``when="due"``, overdue by its stored times judged by the
server's clock. Every reader, reconnect and later attempt then sees that same ending. Three
parties call it: the worker's sweep (``sweep()``, over the run index), and the readers
themselves as the last resort (``end_if_overdue()``), so a run ends even with no worker alive.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

from redis.crc import key_slot
from redis.exceptions import NoPermissionError, NoScriptError, ReadOnlyError, ResponseError

from . import metrics as _metrics
from . import scripts
from .client import TRANSIENT, AsyncClient, SyncClient
from .cursor import RunStatus
from .errors import InvalidInput, StreamGoneError
from .settings import Settings
from .wire import DOORBELL, RUN_INDEX, RunKeys, Terminal, terminal_frame

__all__ = [
    "aend_if_overdue",
    "aend_run",
    "alist_runs",
    "amark_pending",
    "arequest_cancel",
    "arun_status",
    "arun_statuses",
    "asweep",
    "cancel_reason",
    "end_if_overdue",
    "end_run",
    "ending_refused",
    "list_runs",
    "mark_pending",
    "request_cancel",
    "run_status",
    "run_statuses",
    "sweep",
]

logger = logging.getLogger(__name__)
When = Literal["due", "not_live", "always"]
_WHEN = ("due", "not_live", "always")
#: How servers word a refused write: redis-py maps the first two to NoPermissionError and
#: ReadOnlyError, but an ACL refusal inside a script arrives as "ACL failure in script".
_REFUSALS = ("NOPERM", "ACL failure", "READONLY", "No permissions")
#: Runs per ``STATUS`` call (keys: three per run).
_STATUS_BATCH = 300


def ending_refused(exc: Exception) -> bool:
    """Whether the server refused the guarded ending because this client may not write (an
    ACL without write commands or keys, a read-only replica). Readers then make it up."""
    if isinstance(exc, NoPermissionError | ReadOnlyError):
        return True
    return isinstance(exc, ResponseError) and any(word in str(exc) for word in _REFUSALS)


def _keys(run_id: str, settings: Settings) -> RunKeys:
    return RunKeys.for_run(run_id, hash_tag=settings.cluster_hash_tags)


# -- queued runs ------------------------------------------------------------------------------


def _marker_ttl(settings: Settings) -> int:
    # Long enough that the queue deadline passes (and someone stores the ending) first.
    return max(settings.stream_ttl, math.ceil(settings.queue_timeout) + settings.retention)


def mark_pending(client: SyncClient, run_id: str, settings: Settings) -> None:
    """Record a queued run so readers wait for it instead of ending with ``not_found``.

    Stores when it was queued (server clock) and adds it to the run index (best effort: a
    failure there is logged, the run is queued all the same). If no worker
    claims it within ``settings.queue_timeout`` it gets a stored ``timeout`` ending (from the
    worker's sweep or its readers). A run already known keeps its state.
    """
    keys = _keys(run_id, settings)
    now = client.eval(scripts.MARK.source, 1, keys.meta, _marker_ttl(settings))
    try:  # another slot in a cluster: best effort, the readers end the run unindexed too
        client.zadd(RUN_INDEX, {run_id: int(now)}, nx=True)
    except TRANSIENT as exc:
        logger.warning("run %s not added to the run index: %s", run_id, exc)


async def amark_pending(client: AsyncClient, run_id: str, settings: Settings) -> None:
    keys = _keys(run_id, settings)
    now = await client.eval(scripts.MARK.source, 1, keys.meta, _marker_ttl(settings))
    try:
        await client.zadd(RUN_INDEX, {run_id: int(now)}, nx=True)
    except TRANSIENT as exc:
        logger.warning("run %s not added to the run index: %s", run_id, exc)


# -- cancel -----------------------------------------------------------------------------------

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


# -- status -----------------------------------------------------------------------------------


def run_status(client: SyncClient, run_id: str, settings: Settings) -> RunStatus:
    """The run's state, last seq id, attempt, ending and stored times (see ``RunStatus``)."""
    keys = _keys(run_id, settings)
    reply = client.eval(scripts.STATUS.source, 3, keys.meta, keys.lease, keys.stream)
    return RunStatus.from_reply(reply[0])


async def arun_status(client: AsyncClient, run_id: str, settings: Settings) -> RunStatus:
    keys = _keys(run_id, settings)
    reply = await client.eval(scripts.STATUS.source, 3, keys.meta, keys.lease, keys.stream)
    return RunStatus.from_reply(reply[0])


def _status_groups(run_ids: Sequence[str], settings: Settings) -> list[list[int]]:
    """Indices of ``run_ids`` grouped for one ``STATUS`` call each: up to ``_STATUS_BATCH``
    runs, of one slot in a cluster (a script's keys must share a slot)."""
    slots: dict[int, list[int]] = {}
    for index, run_id in enumerate(run_ids):
        slot = key_slot(_keys(run_id, settings).stream.encode()) if settings.cluster else 0
        slots.setdefault(slot, []).append(index)
    return [same[i:i + _STATUS_BATCH] for same in slots.values()
            for i in range(0, len(same), _STATUS_BATCH)]


def _queue_statuses(pipe: Any, run_ids: Sequence[str], groups: list[list[int]],
                    settings: Settings, by_sha: bool) -> None:
    command, script = ("EVALSHA", scripts.STATUS.sha) if by_sha else ("EVAL", scripts.STATUS.source)
    for group in groups:
        runs = [_keys(run_ids[i], settings) for i in group]
        keys = [k for run in runs for k in (run.meta, run.lease, run.stream)]
        # execute_command: a cluster pipeline has no evalsha(), yet routes it by its keys
        pipe.execute_command(command, script, len(keys), *keys)


def _in_order(run_ids: Sequence[str], groups: list[list[int]],
              replies: list[Any]) -> list[RunStatus] | None:
    """The statuses in the order of ``run_ids``; None if a node did not know the script."""
    found: list[RunStatus | None] = [None] * len(run_ids)
    for group, reply in zip(groups, replies, strict=True):
        if isinstance(reply, NoScriptError):
            return None
        if isinstance(reply, Exception):
            raise reply
        for index, item in zip(group, reply, strict=True):
            found[index] = RunStatus.from_reply(item)
    return [status for status in found if status is not None]


def run_statuses(client: SyncClient, run_ids: Sequence[str],
                 settings: Settings) -> list[RunStatus]:
    """The status of many runs, in order: one pipeline of ``STATUS`` calls (one per batch of
    runs, per slot in a cluster). A node that does not know the script yet gets its source
    (``EVAL`` caches it there): that needs no ``SCRIPT LOAD`` permission."""
    groups = _status_groups(run_ids, settings)
    for by_sha in (True, False):
        with client.pipeline(transaction=False) as pipe:
            _queue_statuses(pipe, run_ids, groups, settings, by_sha)
            statuses = _in_order(run_ids, groups, pipe.execute(raise_on_error=False))
        if statuses is not None:
            return statuses
    raise NoScriptError("the STATUS script is unknown to the server after EVAL")


async def arun_statuses(client: AsyncClient, run_ids: Sequence[str],
                        settings: Settings) -> list[RunStatus]:
    groups = _status_groups(run_ids, settings)
    for by_sha in (True, False):
        async with client.pipeline(transaction=False) as pipe:
            _queue_statuses(pipe, run_ids, groups, settings, by_sha)
            statuses = _in_order(run_ids, groups, await pipe.execute(raise_on_error=False))
        if statuses is not None:
            return statuses
    raise NoScriptError("the STATUS script is unknown to the server after EVAL")


# -- endings ----------------------------------------------------------------------------------


def _ms(seconds: float) -> int:
    return max(math.ceil(seconds * 1000), 0)


def _end_args(keys: RunKeys, settings: Settings, when: str,
              pending: tuple[Terminal, str], claimed: tuple[Terminal, str]) -> list[Any]:
    if when not in _WHEN:
        raise InvalidInput(f"when must be one of {', '.join(_WHEN)}, got {when!r}")
    notify = keys.notify if settings.cluster else DOORBELL if settings.doorbell else ""
    return [keys.stream, keys.meta, keys.lease, when, _ms(settings.queue_timeout),
            _ms(settings.producer_timeout), settings.retention, settings.max_stream_length,
            notify, pending[0].value, pending[1], claimed[0].value, claimed[1]]


def _ending(kind: Terminal | str, message: str) -> tuple[Terminal, str]:
    try:
        terminal = Terminal(kind)
    except ValueError:
        raise InvalidInput(f"kind must be a run ending (done, error, cancelled, timeout, "
                           f"lost), got {kind!r}") from None
    if terminal is Terminal.NOT_FOUND:
        raise InvalidInput("not_found is not an ending a run can store")
    return terminal, terminal_frame(terminal, message)


def _overdue_endings(run_id: str, settings: Settings) -> tuple[tuple[Terminal, str], ...]:
    queued = (f"no worker started run {run_id} within {settings.queue_timeout:g} s of "
              "its being queued")
    lost = (f"run {run_id}'s producer stopped without an ending (no writer for "
            f"{settings.producer_timeout:g} s after its lease lapsed)")
    return _ending(Terminal.TIMEOUT, queued), _ending(Terminal.LOST, lost)


def _ended(reply: Any, keys: RunKeys) -> Terminal | None:
    if reply[0] == "wrongtype":
        raise StreamGoneError(f"run {keys.run_id}: {reply[1]} holds a {reply[2]}, not this "
                              "run's data; no ending can be stored")
    return Terminal(reply[1]) if reply[0] == "ended" else None


def _run_end(client: SyncClient, keys: RunKeys, args: list[Any]) -> Terminal | None:
    try:
        reply = client.evalsha(scripts.END.sha, 3, *args)
    except NoScriptError:
        reply = client.eval(scripts.END.source, 3, *args)
    return _ended(reply, keys)


async def _arun_end(client: AsyncClient, keys: RunKeys, args: list[Any]) -> Terminal | None:
    try:
        reply = await client.evalsha(scripts.END.sha, 3, *args)
    except NoScriptError:
        reply = await client.eval(scripts.END.source, 3, *args)
    return _ended(reply, keys)


def end_run(client: SyncClient, run_id: str, settings: Settings, kind: Terminal | str,
            message: str = "", *, when: When = "due") -> Terminal | None:
    """The guarded ending: store ``kind`` (with ``message``) as the run's terminal entry.

    ``when="due"`` ends the run only if it is overdue by its stored times: queued longer
    than ``settings.queue_timeout``, or claimed with its lease lapsed longer than
    ``settings.producer_timeout``. ``when="not_live"`` ends it unless a writer holds a live
    lease; ``when="always"`` even then (that writer is fenced off: its next write is refused
    with ``RunClosedError``). The decision and the write are one atomic script judged by the
    server's clock, so it never races a live attempt.

    Returns the run's ending after the call (stored now or before), or ``None`` if it did
    not end (not due, live, or no such run). Raises ``StreamGoneError`` when a key of the
    run holds another kind of value (someone else's: left as it is). A client that may not
    write gets the server's refusal (a ``ResponseError`` for which ``ending_refused()`` is
    true).
    """
    keys = _keys(run_id, settings)
    ending = _ending(kind, message)
    return _run_end(client, keys, _end_args(keys, settings, when, ending, ending))


async def aend_run(client: AsyncClient, run_id: str, settings: Settings, kind: Terminal | str,
                   message: str = "", *, when: When = "due") -> Terminal | None:
    keys = _keys(run_id, settings)
    ending = _ending(kind, message)
    return await _arun_end(client, keys, _end_args(keys, settings, when, ending, ending))


def end_if_overdue(client: SyncClient, run_id: str, settings: Settings) -> Terminal | None:
    """``end_run(when="due")`` with the ending the overdue state calls for: ``timeout`` for a
    run queued too long (no worker started it), ``lost`` for one whose producer stopped.

    Returns the run's ending after the call, or ``None``.
    """
    keys = _keys(run_id, settings)
    args = _end_args(keys, settings, "due", *_overdue_endings(run_id, settings))
    return _run_end(client, keys, args)


async def aend_if_overdue(client: AsyncClient, run_id: str,
                          settings: Settings) -> Terminal | None:
    keys = _keys(run_id, settings)
    args = _end_args(keys, settings, "due", *_overdue_endings(run_id, settings))
    return await _arun_end(client, keys, args)


# -- the run index ----------------------------------------------------------------------------


def list_runs(client: SyncClient, settings: Settings, *,
              limit: int = 1000) -> list[tuple[str, RunStatus]]:
    """Up to ``limit`` runs of the run index, oldest first, each with its status.

    The index holds runs queued (``mark_pending``) or claimed that no sweep has found ended
    yet; it may name a run that expired meanwhile (status ``missing``).
    """
    run_ids = [str(r) for r in client.zrange(RUN_INDEX, 0, limit - 1)]
    return list(zip(run_ids, run_statuses(client, run_ids, settings), strict=True))


async def alist_runs(client: AsyncClient, settings: Settings, *,
                     limit: int = 1000) -> list[tuple[str, RunStatus]]:
    run_ids = [str(r) for r in await client.zrange(RUN_INDEX, 0, limit - 1)]
    return list(zip(run_ids, await arun_statuses(client, run_ids, settings), strict=True))


def _triage(run_ids: list[str], statuses: list[RunStatus], settings: Settings,
            ended: dict[str, Terminal], gone: list[str]) -> list[str]:
    """Sort a page of the index: ended runs into ``ended``, vanished ones into ``gone``;
    returns the overdue ones."""
    overdue = []
    for run_id, status in zip(run_ids, statuses, strict=True):
        if status.terminal is not None:
            ended[run_id] = status.terminal
        elif status.state == "missing":
            gone.append(run_id)
        elif status.overdue(settings.queue_timeout, settings.producer_timeout):
            overdue.append(run_id)
    return overdue


def sweep(client: SyncClient, settings: Settings, *, batch: int = 500) -> dict[str, Terminal]:
    """End every overdue run of the run index; return the runs found ended, with their ending.

    Those are the runs ended by this sweep and the runs found ended (by their writer, a
    reader, or another sweep); they leave the index, as do runs whose keys expired. A run
    ends once whoever sweeps: the ending is the guarded ``END`` script. Costs one ``ZRANGE``
    and one status call per ``batch`` runs, plus one call per overdue run.
    """
    ended: dict[str, Terminal] = {}
    gone: list[str] = []
    for start in range(0, max(client.zcard(RUN_INDEX), 0), batch):
        run_ids = [str(r) for r in client.zrange(RUN_INDEX, start, start + batch - 1)]
        statuses = run_statuses(client, run_ids, settings)
        for run_id in _triage(run_ids, statuses, settings, ended, gone):
            try:
                kind = end_if_overdue(client, run_id, settings)
            except StreamGoneError:
                gone.append(run_id)  # not a run any more
                continue
            if kind is not None:
                ended[run_id] = kind
                _metrics.swept(kind.value)
    if ended or gone:
        client.zrem(RUN_INDEX, *ended, *gone)
    return ended


async def asweep(client: AsyncClient, settings: Settings, *,
                 batch: int = 500) -> dict[str, Terminal]:
    ended: dict[str, Terminal] = {}
    gone: list[str] = []
    for start in range(0, max(await client.zcard(RUN_INDEX), 0), batch):
        run_ids = [str(r) for r in await client.zrange(RUN_INDEX, start, start + batch - 1)]
        statuses = await arun_statuses(client, run_ids, settings)
        for run_id in _triage(run_ids, statuses, settings, ended, gone):
            try:
                kind = await aend_if_overdue(client, run_id, settings)
            except StreamGoneError:
                gone.append(run_id)  # not a run any more
                continue
            if kind is not None:
                ended[run_id] = kind
                _metrics.swept(kind.value)
    if ended or gone:
        await client.zrem(RUN_INDEX, *ended, *gone)
    return ended
