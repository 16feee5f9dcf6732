"""What the scenarios share: chunk payloads with send timestamps, run ids, RSS, key cleanup."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import redis
import redis.asyncio as aredis

from streaming import hub as hub_module
from streaming.client import sync_client
from streaming.settings import Settings
from streaming.wire import RUN_INDEX, RunKeys
from streaming.writer import RunWriter, StreamWriter

from .. import seed as seed_loader

__all__ = [
    "SEED_POOL",
    "chunk_data",
    "cleanup",
    "load_seed",
    "open_runs",
    "rss_bytes",
    "run_ids",
    "seed_client",
    "sent_at",
    "sse_frame",
    "stream_audit",
    "stream_lengths",
]

#: Filler that makes a chunk about 100 bytes, the size of an LLM token delta as JSON.
_PAD = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod"


def run_ids(scenario: str, count: int, side: str) -> list[str]:
    """``count`` fresh run ids, unique to this harness run."""
    tag = uuid.uuid4().hex[:8]
    return [f"bench-{scenario}-{side}-{tag}-{i}" for i in range(count)]


def chunk_data() -> str:
    """A chunk's data: JSON with its send time (``time.time_ns()``), about 100 bytes."""
    return f'{{"t":{time.time_ns()},"text":"{_PAD}"}}'


def sse_frame(data: str) -> str:
    """``data`` as the SSE frame the seed's writer takes."""
    return f"data: {data}\n\n"


def sent_at(data: str) -> int | None:
    """The send time embedded by ``chunk_data()`` in a chunk's data or frame, if any.

    Sliced, not parsed as JSON: the readers' own cost should be the design's, not ours."""
    start = data.find('{"t":')
    if start < 0:
        return None
    end = data.find(",", start)
    try:
        return int(data[start + 5:end])
    except ValueError:
        return None


def open_runs(writer: StreamWriter, ids: list[str]) -> list[RunWriter]:
    return [writer.open(run_id) for run_id in ids]


def rss_bytes() -> int:
    """This process's resident set size now."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # no /proc: the peak RSS is the best we have

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_seed(path: str | None) -> Any:
    """The seed module in a child process (the harness passes its path)."""
    module = seed_loader.load(path)
    if module is None:
        raise RuntimeError(f"seed not found at {path}")
    return module


#: The seed's pool: the size of the hub's own (``streaming.hub._POOL``), and the same kind.
SEED_POOL: int = hub_module._POOL


def seed_client(seed: Any, url: str) -> Any:
    """The seed's client shim on a waiting pool of ``SEED_POOL`` connections: the pool kind and
    size the hub has. The shim's own (redis-py's default pool) raises past 100 connections,
    which would charge the seed with failures a deployment would configure away."""
    client = seed.AsyncRedisClient(url)
    pool = aredis.BlockingConnectionPool.from_url(url, max_connections=SEED_POOL, timeout=60,
                                                  decode_responses=True)
    client._client = aredis.Redis(connection_pool=pool)
    return client


def cleanup(url: str, scenario: str) -> None:
    """Delete the keys this harness wrote for ``scenario`` (all runs, both sides), and take
    its runs out of the run index."""
    _unindex(url, scenario)
    if Settings(redis_url=url).cluster:
        _cleanup_cluster(url, scenario)
        return
    client = redis.Redis.from_url(url)
    try:
        batch = []
        for key in client.scan_iter(f"sse:run:bench-{scenario}-*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    except redis.ConnectionError:
        pass
    finally:
        client.close()


def _unindex(url: str, scenario: str) -> None:
    client = sync_client(Settings(redis_url=url))
    try:
        ours = [m for m, _ in client.zscan_iter(RUN_INDEX, match=f"bench-{scenario}-*",
                                                 count=1000)]
        for start in range(0, len(ours), 1000):
            client.zrem(RUN_INDEX, *ours[start:start + 1000])
    except redis.ConnectionError:
        pass
    finally:
        client.close()


def _cleanup_cluster(url: str, scenario: str) -> None:
    """``cleanup()`` on a cluster: hash-tagged keys, scanned on every primary, each deleted
    on its own node."""
    client = sync_client(Settings(redis_url=url))
    try:
        pipe = client.pipeline(transaction=False)
        for key in client.scan_iter(f"sse:run:{{bench-{scenario}-*", count=1000):
            pipe.delete(key)
        pipe.execute()
    except redis.ConnectionError:
        pass
    finally:
        client.close()


def stream_lengths(url: str, ids: list[str]) -> int:
    """Entries stored in all the runs' streams (on a single server or a cluster)."""
    settings = Settings(redis_url=url)
    client = sync_client(settings)
    try:
        pipe = client.pipeline(transaction=False)
        for run_id in ids:
            pipe.xlen(RunKeys.for_run(run_id, hash_tag=settings.cluster_hash_tags).stream)
        return sum(int(n) for n in pipe.execute())
    finally:
        client.close()


def stream_audit(url: str, ids: list[str]) -> dict[str, int]:
    """Entries stored in the runs' streams, and how many distinct ``seq_id`` they carry."""
    client = redis.Redis.from_url(url, decode_responses=True)
    entries = unique = 0
    try:
        for run_id in ids:
            found = client.xrange(f"sse:run:{run_id}") or []
            seqs = [(fields or {}).get("seq_id") for _, fields in found]
            entries += len(seqs)
            unique += len(set(seqs))
    finally:
        client.close()
    return {"entries": entries, "unique": unique}
