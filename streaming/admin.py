"""What an operator asks the store about runs: list them by state, inspect one, sum them up.

Read-only (ending a run by hand goes through ``streaming.control``'s guarded ending). Runs are
found by scanning the ``sse:run:*`` keys (``SCAN``, never ``KEYS``; every node of a cluster);
times come from the server's clock (``TIME``) and the entries' stored timestamps, so the
answers do not depend on this machine's clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .client import SyncClient
from .control import run_statuses
from .settings import Settings
from .wire import KEY_PREFIX, RunKeys

__all__ = ["RunDetail", "RunRow", "StoreSummary", "find_runs", "inspect_run", "list_runs",
           "summary"]

#: How the tools name the stored states (``pending`` is a run still in the queue).
STATE_NAMES = {"pending": "queued", "live": "live", "idle": "idle", "ended": "ended",
               "missing": "missing"}
_SCAN_COUNT = 1000
_BATCH = 200


@dataclass(frozen=True)
class RunRow:
    """One run in a listing; ages and lag in seconds (``None``: nothing stored to tell)."""

    run_id: str
    state: str
    attempt: int
    last_seq: int
    ending: str
    #: Since the run was queued, else since its first entry.
    age: float | None
    #: Since its last stored entry: how long the stream has been quiet.
    lag: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunDetail:
    """Everything stored about one run."""

    row: RunRow
    meta: dict[str, str]
    lease: str | None
    lease_ttl_ms: int
    ending_entry: dict[str, str] | None
    stream_length: int
    stream_bytes: int
    meta_bytes: int
    ttl: int

    def as_dict(self) -> dict[str, Any]:
        return {**self.row.as_dict(), "meta": self.meta, "lease": self.lease,
                "lease_ttl_ms": self.lease_ttl_ms, "ending_entry": self.ending_entry,
                "stream_length": self.stream_length, "stream_bytes": self.stream_bytes,
                "meta_bytes": self.meta_bytes, "ttl": self.ttl}


@dataclass(frozen=True)
class StoreSummary:
    """The runs in the store and the memory their keys use."""

    runs: dict[str, int]
    streams: int
    entries: int
    stream_bytes: int
    meta_bytes: int
    used_memory: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def find_runs(client: SyncClient) -> list[str]:
    """The ids of every run with a key in the store (meta or stream), sorted."""
    found: set[str] = set()
    for key in client.scan_iter(match=KEY_PREFIX + "*", count=_SCAN_COUNT):
        run_id = _run_of(str(key))
        if run_id:
            found.add(run_id)
    return sorted(found)


def _run_of(key: str) -> str | None:
    rest = key[len(KEY_PREFIX):].removesuffix(":meta")  # a lease's key keeps its ':'
    if rest.startswith("{") and rest.endswith("}"):
        rest = rest[1:-1]
    return rest if rest and ":" not in rest else None


def list_runs(client: SyncClient, settings: Settings, states: Sequence[str] = (),
              run_ids: Sequence[str] | None = None) -> list[RunRow]:
    """The runs in ``states`` (stored names: pending, live, idle, ended; all when empty)."""
    ids = find_runs(client) if run_ids is None else list(run_ids)
    now = _now(client)
    rows: list[RunRow] = []
    for start in range(0, len(ids), _BATCH):
        rows.extend(_rows(client, settings, ids[start:start + _BATCH], now))
    return [row for row in rows if not states or row.state in states]


def _rows(client: SyncClient, settings: Settings, ids: list[str], now: float) -> Iterator[RunRow]:
    keys = [RunKeys.for_run(run_id, hash_tag=settings.cluster_hash_tags) for run_id in ids]
    statuses = run_statuses(client, ids, settings)
    with client.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.execute_command("XRANGE", k.stream, "-", "+", "COUNT", 1)
            pipe.execute_command("XREVRANGE", k.stream, "+", "-", "COUNT", 1)
        replies = pipe.execute(raise_on_error=False)
    for i, (k, status) in enumerate(zip(keys, statuses, strict=True)):
        first, last = (None if isinstance(r, Exception) else r for r in replies[2 * i:2 * i + 2])
        started = _seconds(status.queued, scale=1000) or _stamp(first)
        yield RunRow(k.run_id, status.state, status.attempt, status.last_seq, status.ending,
                     _since(now, started), _since(now, _stamp(last)))


def inspect_run(client: SyncClient, run_id: str, settings: Settings) -> RunDetail:
    """Everything stored about ``run_id``: its row, meta, lease, ending, length and memory."""
    k = RunKeys.for_run(run_id, hash_tag=settings.cluster_hash_tags)
    row = list_runs(client, settings, run_ids=[run_id])
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(k.meta)
        pipe.get(k.lease)
        pipe.pttl(k.lease)
        pipe.execute_command("XREVRANGE", k.stream, "+", "-", "COUNT", 1)
        pipe.xlen(k.stream)
        pipe.execute_command("MEMORY", "USAGE", k.stream, "SAMPLES", 0)
        pipe.execute_command("MEMORY", "USAGE", k.meta, "SAMPLES", 0)
        pipe.ttl(k.stream)
        meta, lease, lease_ttl, last, length, stream_bytes, meta_bytes, ttl = [
            None if isinstance(r, Exception) else r for r in pipe.execute(raise_on_error=False)]
    ending = None
    if last and last[0][1].get("complete") == "true":
        ending = dict(last[0][1])
    missing = RunRow(run_id, "missing", 0, 0, "", None, None)
    return RunDetail(row[0] if row else missing, dict(meta or {}), lease,
                     int(lease_ttl or -2), ending, int(length or 0), int(stream_bytes or 0),
                     int(meta_bytes or 0), int(ttl if ttl is not None else -2))


def summary(client: SyncClient, settings: Settings) -> StoreSummary:
    """How many runs are in each state, their entries, and the memory their keys use."""
    rows = list_runs(client, settings)
    runs = dict.fromkeys(("pending", "live", "idle", "ended", "missing"), 0)
    for row in rows:
        runs[row.state] = runs.get(row.state, 0) + 1
    entries = streams = stream_bytes = meta_bytes = 0
    for start in range(0, len(rows), _BATCH):
        chunk = rows[start:start + _BATCH]
        with client.pipeline(transaction=False) as pipe:
            for row in chunk:
                k = RunKeys.for_run(row.run_id, hash_tag=settings.cluster_hash_tags)
                pipe.xlen(k.stream)
                pipe.execute_command("MEMORY", "USAGE", k.stream, "SAMPLES", 0)
                pipe.execute_command("MEMORY", "USAGE", k.meta, "SAMPLES", 0)
            replies = [0 if isinstance(r, Exception) or r is None else int(r)
                       for r in pipe.execute(raise_on_error=False)]
        for i in range(len(chunk)):
            length, sbytes, mbytes = replies[3 * i:3 * i + 3]
            streams += 1 if sbytes else 0
            entries += length
            stream_bytes += sbytes
            meta_bytes += mbytes
    info = client.info("memory")
    used = _used_memory(info)
    return StoreSummary(runs, streams, entries, stream_bytes, meta_bytes, used)


def _used_memory(info: Any) -> int:
    if "used_memory" in info:
        return int(info["used_memory"])
    return sum(int(node["used_memory"]) for node in info.values())  # a cluster: per node


def _now(client: SyncClient) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


def _stamp(entries: Any) -> float | None:
    if not entries:
        return None
    return _seconds(entries[0][1].get("timestamp"), scale=1000)


def _seconds(raw: Any, scale: float = 1.0) -> float | None:
    try:
        return float(raw) / scale if raw else None
    except (TypeError, ValueError):
        return None


def _since(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(now - then, 0.0), 3)
