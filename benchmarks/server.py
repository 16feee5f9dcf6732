"""The server under test: counting its commands, and measuring its own ceiling.

The ceiling is what the server itself does with the same work and no library in the way:
``redis-benchmark`` when it is on ``PATH``, else a raw pipelined redis-py client.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import redis

from streaming import scripts

from .stats import percentile

__all__ = ["CommandMeter", "append_ceiling", "round_trip", "xadd_ceiling"]

CEILING_PREFIX = "bench:ceiling:"
#: A frame of the size the scenarios write (an LLM token delta as JSON, about 100 bytes).
PAYLOAD = "x" * 100


#: Commands the project's server-side scripts call: the server counts each such call as a
#: processed command, though no client sent it.
SCRIPT_CALLS = frozenset(
    name.lower() for script in (scripts.APPEND, scripts.CLAIM, scripts.REFRESH, scripts.STATUS)
    for name in re.findall(r"redis\.call\('([A-Za-z]+)'", script.source))


@dataclass
class CommandMeter:
    """Commands the server processed between ``start()`` and ``stop()``, from the per-command
    counts of ``INFO commandstats`` (``INFO`` itself left out, so polling it is free)."""

    client: redis.Redis
    _before: dict[str, int] | None = None
    _cpu_before: float = 0.0
    _started: float = 0.0

    def start(self) -> None:
        self._before = command_calls(self.client)
        self._cpu_before = _server_cpu(self.client)
        self._started = time.monotonic()

    def stop(self) -> dict[str, Any]:
        """Over the window: ``commands`` (all the server processed, calls made by scripts
        included, as ``total_commands_processed`` counts them), ``sent`` (commands clients
        sent: the scripts' own calls left out), both also per second, ``by_command`` and the
        server's CPU use (``server_cpu_percent``)."""
        seconds = time.monotonic() - self._started
        cpu = _server_cpu(self.client) - self._cpu_before
        by_command = calls_since(self.client, self._before or {})
        total = sum(by_command.values())
        scripted = any(name.startswith(("eval", "fcall")) for name in by_command)
        inside = sum(n for name, n in by_command.items() if scripted and name in SCRIPT_CALLS)
        return {"commands": total, "seconds": seconds, "per_second": total / seconds,
                "sent_per_second": (total - inside) / seconds, "by_command": by_command,
                "server_cpu_percent": 100 * cpu / seconds}


def calls_since(client: redis.Redis, before: dict[str, int]) -> dict[str, int]:
    """Calls of each command (``INFO`` left out) since the counts ``before``."""
    after = command_calls(client)
    return {name: calls - before.get(name, 0) for name, calls in after.items()
            if name != "info" and calls != before.get(name, 0)}


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls so far of each command, from ``INFO commandstats``."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def _server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def xadd_ceiling(url: str, requests: int) -> dict[str, Any]:
    """Pipelined ``XADD`` per second the server takes, over 100 streams."""
    try:
        return _benchmark_tool(url, requests)
    except (FileNotFoundError, subprocess.SubprocessError, ValueError):
        return _raw_client(url, requests)
    finally:
        _clean(url)


def append_ceiling(url: str, runs: int, chunks: int, per_call: int = 100) -> dict[str, Any]:
    """Chunks per second the server stores through our own write step, the ``APPEND`` script,
    driven as fast as one synchronous redis-py client (hiredis: replies parsed and commands
    packed in C) can: ``runs`` runs claimed with ``CLAIM``, then pipelines of one ``EVALSHA
    APPEND`` of ``per_call`` chunks per run, until each run has ``chunks``."""
    client = redis.Redis.from_url(url)
    try:
        return _append_rounds(client, runs, chunks, per_call)
    finally:
        client.close()
        _clean(url)


def _append_rounds(client: redis.Redis, runs: int, chunks: int, per_call: int) -> dict[str, Any]:
    token = "ceiling"
    keys = [(f"{CEILING_PREFIX}{i}", f"{CEILING_PREFIX}{i}:meta", f"{CEILING_PREFIX}{i}:lease")
            for i in range(runs)]
    claim, append = client.script_load(scripts.CLAIM.source), client.script_load(
        scripts.APPEND.source)
    for run in keys:
        client.evalsha(claim, 3, *run, token, 60_000, 3600, "0")
    frames = [PAYLOAD] * per_call
    started = time.perf_counter()
    for first in range(1, chunks + 1, per_call):
        pipe = client.pipeline(transaction=False)
        for run in keys:
            # ARGV as the writer sends them (StreamWriter._append_args): no merged entries
            # (weights ''), the default byte cap.
            pipe.evalsha(append, 3, *run, token, 60_000, 3600, 3600, 10_000, first, "",
                         int(time.time() * 1000), "", 1, "", 64 * 1024 * 1024, *frames)
        pipe.execute()
    elapsed = time.perf_counter() - started
    return {"source": f"the APPEND script: {runs} runs, pipelines of one call of {per_call} "
                      "100-byte chunks per run, one sync redis-py client (hiredis)",
            "per_second": runs * chunks / elapsed}


def round_trip(url: str, requests: int) -> dict[str, Any]:
    """One client, one ``XADD`` at a time: the server's round trip (p50/p99, ms)."""
    try:
        row = _run_tool(url, requests, clients=1, pipeline=1)
        return {"source": "redis-benchmark", "p50_ms": float(row["p50_latency_ms"]),
                "p99_ms": float(row["p99_latency_ms"])}
    except (FileNotFoundError, subprocess.SubprocessError, ValueError):
        return _raw_round_trip(url, requests)
    finally:
        _clean(url)


def _benchmark_tool(url: str, requests: int) -> dict[str, Any]:
    row = _run_tool(url, requests, clients=50, pipeline=100)
    return {"source": "redis-benchmark: XADD of 100-byte chunks to 100 streams, 50 clients, "
                      "pipelines of 100", "per_second": float(row["rps"])}


def _run_tool(url: str, requests: int, *, clients: int, pipeline: int) -> dict[str, str]:
    tool = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if tool is None:
        raise FileNotFoundError("redis-benchmark")
    args = [tool, *_tool_address(url), "-n", str(requests), "-c", str(clients),
            "-P", str(pipeline), "-r", "100", "--csv",
            "XADD", CEILING_PREFIX + "__rand_int__", "MAXLEN", "~", "10000", "*",
            "seq_id", "1", "data", PAYLOAD, "timestamp", "0"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    if not rows:
        raise ValueError(f"redis-benchmark printed no result: {out[:200]!r}")
    return rows[-1]


def _tool_address(url: str) -> list[str]:
    parts = urlparse(url)
    if parts.scheme != "redis":
        raise ValueError(f"redis-benchmark cannot reach {parts.scheme}:// URLs")
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    if parts.password:
        args += ["-a", parts.password]
    if parts.path.strip("/"):
        args += ["--dbnum", parts.path.strip("/")]
    return args


def _raw_client(url: str, requests: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    batch = 1000
    started = time.perf_counter()
    for first in range(0, requests, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + batch, requests)):
            pipe.xadd(f"{CEILING_PREFIX}{i % 100}", {"seq_id": 1, "data": PAYLOAD,
                                                     "timestamp": 0},
                      maxlen=10_000, approximate=True)
        pipe.execute()
    elapsed = time.perf_counter() - started
    client.close()
    return {"source": "raw redis-py client (redis-benchmark not on PATH): XADD of 100-byte "
                      "chunks to 100 streams, one connection, pipelines of 1,000; bound by the "
                      "client, not the server", "per_second": requests / elapsed}


def _raw_round_trip(url: str, requests: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    samples = []
    for _ in range(requests):
        started = time.perf_counter_ns()
        client.xadd(CEILING_PREFIX + "rt", {"data": PAYLOAD}, maxlen=10_000, approximate=True)
        samples.append((time.perf_counter_ns() - started) / 1e6)
    client.close()
    return {"source": "raw redis-py client (redis-benchmark not on PATH)",
            "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}


def _clean(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(CEILING_PREFIX + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
