"""One web process, N concurrent SSE clients, one run each at 1 chunk/s: where does it bend?

For each N in the steps, a fresh reference app (``examples.app``: ``StreamEndpoints``, one
``ReaderHub``) runs in one uvicorn process; N clients (``benchmarks.sse_load``: plain asyncio
connections, light enough not to be the bottleneck) each follow their own run from the start,
while a producer process writes every run at 1 chunk/s with the library's ``StreamWriter``.
Reported per N: p50 and p99 of receipt minus send time over every chunk, the app process's CPU
while streaming (``/proc``), its memory per client (resident set with the clients connected
minus before they came, divided by N), lost and repeated chunks. The knee is the largest N of
the steps whose p99 stays under ``KNEE_MS``.

``BENCH_UVICORN_ARGS`` (environment) replaces the uvicorn options the app runs with, to compare
event loops and HTTP parsers; the ones used are in the result's params.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from streaming.tokens import TokenSigner

from ..core import Context, Figure, Result, Target, scenario
from ..procs import Child
from ..sse_load import sse_load
from ..stats import percentile
from .common import cleanup, run_ids
from .end_to_end import cpu_seconds
from .sides import project_producer
from .tiers import app_service, services, uvicorn_args

NAME = "web-clients"
RATE = 1.0
KNEE_MS = 100.0
CLIENTS_PER_PROCESS = 5000
TICK = 0.01
GRACE = 10.0
TOKEN_TTL = 3600.0


@scenario(NAME, "One web process: N SSE clients, one run each at 1 chunk/s")
def run(ctx: Context) -> Result:
    steps = ctx.size((50,), (1000, 2000, 5000, 10_000))
    seconds = ctx.size(2.0, 10.0)
    args = uvicorn_args()
    result = Result(NAME, params={
        "steps": list(steps), "seconds": seconds, "chunks_per_second_per_run": RATE,
        "app": f"examples.app under uvicorn {' '.join(args)}, 1 process, fresh for each N",
        "clients": f"benchmarks.sse_load, up to {CLIENTS_PER_PROCESS:,} per process",
        "figure": "percentiles over every chunk of every client"})
    found = {}
    try:
        for size in steps:
            found[size] = step(ctx, size, seconds, args)
    finally:
        cleanup(ctx.redis_url, NAME)
    seed = "n/a (the seed has no HTTP tier)"
    for n, one in found.items():
        result.params[f"N={n}"] = {k: v for k, v in one.items() if k != "delays_ns"}
        result.add(Figure(f"p50, N={n:,}", "ms", "lower", one["p50_ms"], seed))
        result.add(Figure(f"p99, N={n:,}", "ms", "lower", one["p99_ms"], seed,
                          target=Target(limit=KNEE_MS)))
        result.add(Figure(f"app CPU, N={n:,}", "% of a core", "lower", one["app_cpu_percent"],
                          seed))
        result.add(Figure(f"app memory per client, N={n:,}", "KiB", "lower",
                          one["rss_per_client_kib"], seed))
        result.add(Figure(f"chunks lost or repeated, N={n:,}", "chunks", "lower",
                          one["lost"] + one["repeated"], seed, target=Target(limit=0)))
    under = [n for n, one in found.items() if one["p99_ms"] <= KNEE_MS]
    result.add(Figure("knee: most clients with p99 under 100 ms", "clients", "higher",
                      max(under, default=0), seed, target=Target(limit=10_000),
                      note=f"of the steps {', '.join(f'{n:,}' for n in steps)}"))
    return result


def step(ctx: Context, n: int, seconds: float, args: list[str],
          watch: Callable[[int], AbstractContextManager[Any]] | None = None) -> dict[str, Any]:
    """One N: a fresh app, its clients and producer; ``watch(app pid)`` (a profiler) wraps the
    streaming window."""
    secret = secrets.token_urlsafe(32)
    signer = TokenSigner(secret)
    ids = run_ids(NAME, n, "p")
    streams = [(run_id, signer.issue(run_id, TOKEN_TTL)) for run_id in ids]
    processes = -(-n // CLIENTS_PER_PROCESS)
    with services(ctx.redis_url, secret) as started, contextlib.ExitStack() as stack:
        url = app_service(started, args)
        app_pid = started.services["app"].process.pid
        producer = stack.enter_context(Child(project_producer, ctx.redis_url, ids, RATE,
                                             seconds, {}, TICK, name="web-producer"))
        producer.channel.expect("ready", 300)
        time.sleep(0.5)  # the app settles after its start-up
        rss_before = _rss(app_pid)
        clients = [stack.enter_context(Child(sse_load, url, streams[i::processes], GRACE,
                                             name=f"web-clients-{i}"))
                   for i in range(processes)]
        joined = [c.channel.expect("ready", 300) for c in clients]
        started.check()
        rss_after = _rss(app_pid)
        with watch(app_pid) if watch else contextlib.nullcontext():
            cpu, began = cpu_seconds(app_pid), time.monotonic()
            producer.channel.send("go")
            sent = dict(zip(ids, producer.channel.expect("result", seconds * 3 + 120)["sent"],
                            strict=True))
            app_cpu = (cpu_seconds(app_pid) - cpu) / (time.monotonic() - began)
        for client in clients:
            client.channel.send("stop", sent)
        parts = [c.channel.expect("result", GRACE + 60) for c in clients]
    return _tally(parts, sent, joined, app_cpu, (rss_after - rss_before) / n)


def _tally(parts: list[dict[str, Any]], sent: dict[str, int], joined: list[dict[str, Any]],
           app_cpu: float, rss_per_client: float) -> dict[str, Any]:
    delays = [d for part in parts for d in part["delays_ns"]]
    lost = repeated = 0
    for part in parts:
        for run_id, unique, again in part["clients"]:
            lost += max(sent[run_id] - unique, 0)
            repeated += again
    return {
        "delays_ns": delays, "received": len(delays), "expected": sum(sent.values()),
        "p50_ms": percentile(delays, 50) / 1e6, "p99_ms": percentile(delays, 99) / 1e6,
        "max_ms": max(delays, default=0) / 1e6, "lost": lost, "repeated": repeated,
        "errors": sum(part["errors"] for part in parts),
        "app_cpu_percent": 100 * app_cpu, "rss_per_client_kib": rss_per_client / 1024,
        "join_seconds": max(j["join_seconds"] for j in joined),
        "clients_cpu_seconds": sum(part["cpu_seconds"] for part in parts),
    }


def _rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (``/proc``); 0 without it."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
