"""Settings: one frozen dataclass, read from the environment once, at the edge, and passed down."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

__all__ = ["Settings"]

_ENV_PREFIX = "STREAMING_"
#: A URL scheme that names a Redis Cluster node: ``redis+cluster://``, ``rediss+cluster://``.
#: Fields where 0 means "off" instead of being refused.
_ZERO_ALLOWED = frozenset({"delta_linger"})
CLUSTER_SCHEME = re.compile(r"(rediss?)\+cluster://", re.IGNORECASE)


@dataclass(frozen=True)
class Settings:
    """How streams are written and read. Every field has an environment variable.

    ``redis_url`` is read from ``REDIS_URL``; every other field ``name`` from
    ``STREAMING_NAME`` (for example ``STREAMING_STREAM_TTL=600``). Durations are seconds.
    """

    #: The stream store. ``None`` means "no server given": the demo and tests start an
    #: embedded one (see ``streaming.embedded``).
    redis_url: str | None = None
    #: The stream store is a Redis Cluster: ``redis_url`` names any one of its nodes. A
    #: ``redis+cluster://`` (or ``rediss+cluster://``) URL says the same. Turns on
    #: ``cluster_hash_tags``, and readers follow runs through shard channels (``SSUBSCRIBE``).
    cluster: bool = False
    #: Wrap run ids in a ``{hash tag}`` so all keys of a run share a Redis Cluster slot.
    #: Off by default: the seed's readers and writers expect the plain ``sse:run:<id>`` key.
    cluster_hash_tags: bool = False
    #: Time to live of an active run's keys, refreshed while its writer is alive.
    stream_ttl: int = 3 * 3600
    #: Time to live of a run's keys after its terminal entry.
    retention: int = 3600
    #: Approximate ``MAXLEN`` of every stream, in entries: a safety net. Readers that fall
    #: behind the trimmed history get an explicit gap event. (The seed's value was 10,000: a
    #: token-by-token answer was trimmed while it ran.)
    max_stream_length: int = 1_000_000
    #: What a run's stream may hold, in bytes (its frames plus 32 per entry), before its oldest
    #: entries are trimmed: a run is kept whole from seq 1 up to this. The cap follows the
    #: run's average entry size, so many small deltas get as much room as a few large chunks.
    max_stream_bytes: int = 64 * 1024 * 1024
    #: Store text deltas (``RunWriter.send_text``) that wait in the buffer together as one
    #: entry (``streaming.deltas``). Adds no latency: only deltas that would wait anyway merge.
    merge_deltas: bool = True
    #: Opt-in: hold a text delta that follows its run's previous one within this many seconds
    #: for up to this long, so fast runs merge more (adds up to this much latency to them; a
    #: delta after a quiet spell is sent at once). 0: off.
    delta_linger: float = 0.0
    #: Largest accepted chunk, in UTF-8 bytes of its SSE frame.
    max_chunk_bytes: int = 1024 * 1024
    #: Bound on the bytes a writer holds that Redis has not yet acknowledged: each chunk counts
    #: its frame plus 256 bytes of bookkeeping, so the bound tracks the memory it takes.
    max_buffer_bytes: int = 64 * 1024 * 1024
    #: How long a write waits for room in a full buffer before ``BufferFullError``.
    buffer_timeout: float = 10.0
    #: How long Redis may stay unreachable before writers raise ``StoreUnavailableError``.
    unavailable_timeout: float = 30.0
    #: Lease of a run's writer; refreshed every third of it. A run whose lease lapsed and
    #: that has no terminal entry has lost its producer (or it is stalled, or cut off).
    lease_ttl: float = 10.0
    #: Most entries sent for one run in one flush.
    max_batch: int = 1000
    #: Bytes of one pipeline the writer sends at once (many runs share it).
    max_pipeline_bytes: int = 4 * 1024 * 1024
    #: SSE keepalive comment interval on a quiet stream (never stored in Redis).
    ping_interval: float = 15.0
    #: Longest single blocking read of the shared reader; a waiting reader costs one
    #: command per this interval, shared by every reader of the process.
    block_timeout: float = 20.0
    #: Longest time between two checks of a quiet run's status by its readers: two
    #: server-side calls per quiet run and interval (0.08 per second at the default), one
    #: command for many runs. Readers also check when a run's stored deadline
    #: (``queue_timeout``, ``producer_timeout``) comes due, so an overdue run gets its stored
    #: ending within a moment of its deadline, not up to this much later.
    liveness_interval: float = 25.0
    #: The requeue grace: how long a claimed run may have no live lease (and no terminal
    #: entry) before it is overdue and gets a stored ``lost`` ending. Counted from the lease's
    #: stored expiry, by the server's clock. Shorter ends a dead run sooner, but may declare
    #: lost a run whose retried or redelivered attempt is merely slow to start (a busy pool, a
    #: worker restarting); that late attempt then finds the run ended and writes nothing.
    #: Longest time from a producer's death to the stored ending: ``lease_ttl +
    #: producer_timeout`` plus the check's slack (a reader's next check or the worker's
    #: sweep interval), 40 s and a little at the defaults.
    producer_timeout: float = 30.0
    #: How long a queued run (``mark_pending``) may wait for a worker to claim it before it
    #: is overdue and gets a stored ``timeout`` ending (its message says so); a delivery of
    #: its task after that finds the run ended and writes nothing. 15 minutes by default:
    #: runs last minutes and a busy pool queues runs for a while, so a queue deadline near a
    #: run's own length would end runs that were merely waiting their turn; yet a message
    #: stranded unacked by a broker or store restart (redelivered only after the broker's
    #: visibility timeout, an hour or more) no longer holds its readers that long.
    queue_timeout: float = 900.0
    #: Entries a reader may have waiting before it is detached from the shared read and
    #: catches up on its own (protects the shared read from one slow client). Also the most
    #: it fetches at once while catching up: a client that stops reading holds at most this
    #: many entries (and its socket's write buffer) in the web process.
    reader_queue: int = 1000
    #: Timeout of one Redis command that is not a blocking read.
    socket_timeout: float = 5.0
    #: Secret that signs read tokens (``streaming.tokens``), shared by every web process;
    #: at least 32 characters. ``None``: the web endpoint needs an ``auth`` hook instead.
    token_secret: str | None = dataclasses.field(default=None, repr=False)
    #: Lifetime of the tokens a host app issues (``StreamEndpoints.issue_token``): a page
    #: session. A client refreshes its token before then (``POST /runs/{id}/token``).
    token_ttl: float = 3600
    #: How long a web request may wait for the stream store before it is answered 503 with
    #: ``Retry-After`` (an unreachable, stalled or failing-over store is never a hang).
    request_timeout: float = 3.0
    #: The ``Retry-After`` seconds of those 503 answers.
    retry_after: int = 2
    #: Largest request body the web routes read; a larger one gets 413 before it is read.
    max_body_bytes: int = 1024 * 1024
    #: Deepest nesting of arrays and objects accepted in a JSON request body (else 400).
    max_json_depth: int = 32
    #: Cluster only: a pubsub connection to a primary that stays silent this long is pinged;
    #: one that does not answer the ping within as long again is given up (a hung node), and
    #: its runs are followed wherever the cluster's slot map puts them next.
    node_check_interval: float = 1.0
    #: Writers (``APPEND``, the guarded ``END``) publish each run's new last seq on its shard
    #: channel, and a single server's hubs read only the runs that rang
    #: (``streaming.doorbell``). Off: hubs block on one ``XREAD`` over every followed run
    #: (servers before Redis 7, which have no shard channels). Always on in a cluster.
    doorbell: bool = True
    #: What the web endpoints' lifespan does with the garbage collector of their process
    #: (``streaming.gcpolicy``): ``joins`` (freeze after start-up and after readers join),
    #: ``startup``, ``thresholds`` or ``off``.
    gc_mode: str = "joins"

    def __post_init__(self) -> None:
        if self.redis_url is not None and CLUSTER_SCHEME.match(self.redis_url):
            object.__setattr__(self, "cluster", True)
        if self.cluster:  # a run's keys must share one slot (its scripts touch them all)
            object.__setattr__(self, "cluster_hash_tags", True)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and (
                    value < 0 or (value == 0 and field.name not in _ZERO_ALLOWED)):
                raise ConfigurationError(f"{field.name} must be positive, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("REDIS_URL"):
            values["redis_url"] = env["REDIS_URL"]
        for field in dataclasses.fields(cls):
            name = _ENV_PREFIX + field.name.upper()
            if field.name != "redis_url" and name in env:
                values[field.name] = _parse(name, env[name], field.type)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def _parse(name: str, raw: str, kind: Any) -> Any:
    kind = str(kind)
    try:
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name}={raw!r} is not a valid {kind}") from exc
    return raw
