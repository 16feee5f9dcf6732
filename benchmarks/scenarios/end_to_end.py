"""End to end over HTTP: many concurrent SSE clients of the reference app's stream endpoint.

The reference app (``examples.app``: ``streaming.web.StreamEndpoints``, one ``ReaderHub``) runs
in one uvicorn process against the harness's server. A producer process writes the runs with
the library's ``StreamWriter`` (no Celery: the figure is the web tier's), each chunk carrying
its send time (``time.time_ns()``). Client processes hold the SSE connections: asyncio, one
``httpx.AsyncClient`` each (no connection cap) and ``httpx-sse``; every client follows one run
from the start (``?token=`` read tokens from the app's secret) and records, per chunk, receipt
minus send time and the event's ``id:`` (the seq), from which lost and repeated chunks are
counted against what the producer sent to that run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import statistics
import time
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from streaming.tokens import TokenSigner

from ..core import Context, Figure, Result, Target, scenario
from ..procs import Channel, Child, answer_async
from ..stats import percentile
from .common import cleanup, run_ids, sent_at
from .sides import project_producer
from .tiers import app_service, services, uvicorn_args

NAME = "end-to-end"
RATE = 2.0  # chunks/s per run
CLIENTS_PER_RUN = 1  # one run per client: as many streams as clients
CLIENTS_PER_PROCESS = 500
TICK = 0.01
GRACE = 10.0
JOIN_TIMEOUT = 120.0
STOP_TIMEOUT = 600.0
TOKEN_TTL = 3600.0


@scenario(NAME, "End to end over HTTP: 1,000 SSE clients, one run each")
def run(ctx: Context) -> Result:
    clients, seconds = ctx.size(50, 1000), ctx.size(3.0, 10.0)
    repeats = ctx.size(1, 3)
    runs = clients // CLIENTS_PER_RUN
    processes = -(-clients // CLIENTS_PER_PROCESS)
    offered = runs * RATE * CLIENTS_PER_RUN
    result = Result(NAME, params={
        "clients": clients, "runs": runs, "clients_per_run": CLIENTS_PER_RUN,
        "chunks_per_second_per_run": RATE, "seconds": seconds,
        "offered_chunks_per_second": offered, "repeats": repeats,
        "app": "examples.app (StreamEndpoints, one ReaderHub) under uvicorn "
               f"{' '.join(uvicorn_args())}, 1 process, started once for all repeats",
        "producer": "StreamWriter in its own process (no Celery), fresh runs each repeat",
        "client processes": f"{processes} process(es), asyncio + httpx.AsyncClient + "
                            "httpx-sse, one HTTP/1.1 connection per client, ?token= auth",
        "figure": "percentiles over every sample of every repeat (each repeat's beside); "
                  "rate: median of the repeats; lost and repeated: summed over the repeats"})
    try:
        rounds = [_tally(measured) for measured in _measure(ctx, runs, seconds, processes,
                                                            repeats)]
    finally:
        cleanup(ctx.redis_url, NAME)
    for key in ("chunks_per_second", "p50_ms", "p99_ms", "received", "expected", "lost",
                "repeated", "errors", "join_seconds", "app_cpu_percent",
                "clients_cpu_percent"):
        result.params[f"{key} of each repeat"] = [one[key] for one in rounds]
    seed = "n/a (the seed has no HTTP tier)"
    result.add(Figure("chunks/s delivered", "chunks/s", "higher",
                      statistics.median(one["chunks_per_second"] for one in rounds), seed,
                      note=f"offered {offered:,.0f}/s; first to last receipt, all clients"))
    every = [d for one in rounds for d in one.pop("delays_ns")]
    for q in (50, 99):
        result.add(Figure(f"p{q} write to receipt", "ms", "lower", percentile(every, q) / 1e6,
                          seed, note="all samples of all repeats" if q == 99 else ""))
    result.add(Figure("chunks lost", "chunks", "lower", sum(one["lost"] for one in rounds),
                      seed, target=Target(limit=0)))
    result.add(Figure("chunks repeated", "chunks", "lower",
                      sum(one["repeated"] for one in rounds), seed, target=Target(limit=0)))
    result.add(Figure("clients connected and streaming", "s", "lower",
                      max(one["join_seconds"] for one in rounds), seed,
                      note=f"{clients:,} clients; worst repeat"))
    result.add(Figure("app process CPU while streaming", "% of a core", "lower",
                      statistics.median(one["app_cpu_percent"] for one in rounds), seed,
                      note="uvicorn process, /proc stat, producer's go to its end"))
    result.add(Figure("client processes' CPU while streaming", "% of a core", "lower",
                      statistics.median(one["clients_cpu_percent"] for one in rounds), seed,
                      note="all client processes, first to last receipt"))
    result.notes.append("seed: n/a, it has no HTTP tier of its own to measure")
    result.notes.append("every process (app, producer, clients, server) shares the machine's "
                        "cores: the latency is the whole system's on this machine")
    return result


def _tally(measured: dict[str, Any]) -> dict[str, Any]:
    """One repeat's figures from what its client processes received."""
    parts, sent = measured["parts"], measured["sent"]
    delays = [d for part in parts for d in part["delays_ns"]]
    first = min((part["first_ns"] for part in parts if part["first_ns"]), default=0)
    last = max((part["last_ns"] for part in parts if part["last_ns"]), default=0)
    lost = repeated = expected = 0
    for part in parts:
        for run_id, unique, again in part["clients"]:
            expected += sent[run_id]
            lost += max(sent[run_id] - unique, 0)
            repeated += again
    return {
        "delays_ns": delays,
        "chunks_per_second": len(delays) / max((last - first) / 1e9, 1e-9),
        "p50_ms": percentile(delays, 50) / 1e6, "p99_ms": percentile(delays, 99) / 1e6,
        "received": len(delays), "expected": expected, "lost": lost, "repeated": repeated,
        "errors": sum(part["errors"] for part in parts),
        "join_seconds": max(part["join_seconds"] for part in parts),
        "app_cpu_percent": 100 * measured["app_cpu"],
        "clients_cpu_percent": 100 * sum(part["cpu_seconds"] for part in parts)
        / max((last - first) / 1e9, 1e-9),
    }


def _measure(ctx: Context, runs: int, seconds: float, processes: int,
             repeats: int) -> list[dict[str, Any]]:
    secret = secrets.token_urlsafe(32)
    signer = TokenSigner(secret)
    rounds = []
    with services(ctx.redis_url, secret) as started:
        url = app_service(started, uvicorn_args())
        for _ in range(repeats):
            rounds.append(_once(ctx, started, url, signer, runs, seconds, processes))
    return rounds


def _once(ctx: Context, started: Any, url: str, signer: TokenSigner, runs: int,
          seconds: float, processes: int) -> dict[str, Any]:
    ids = run_ids(NAME, runs, "p")
    streams = [(run_id, signer.issue(run_id, TOKEN_TTL))
               for run_id in ids for _ in range(CLIENTS_PER_RUN)]
    shares = [streams[i::processes] for i in range(processes)]
    with contextlib.ExitStack() as stack:
        producer = stack.enter_context(Child(project_producer, ctx.redis_url, ids, RATE,
                                             seconds, {}, TICK, name="e2e-producer"))
        producer.channel.expect("ready", 300)
        readers = [stack.enter_context(Child(sse_clients, url, share, GRACE,
                                             name=f"e2e-clients-{i}"))
                   for i, share in enumerate(shares)]
        joined = [reader.channel.expect("ready", JOIN_TIMEOUT + 30) for reader in readers]
        started.check()
        app_pid = started.services["app"].process.pid
        cpu, began = cpu_seconds(app_pid), time.monotonic()
        producer.channel.send("go")
        produced = producer.channel.expect("result", seconds * 3 + 120)
        app_cpu = (cpu_seconds(app_pid) - cpu) / (time.monotonic() - began)
        sent = dict(zip(ids, produced["sent"], strict=True))
        for reader in readers:
            reader.channel.send("stop", sent)
        parts = [reader.channel.expect("result", GRACE + 60) for reader in readers]
    for part, join in zip(parts, joined, strict=True):
        part.update(join)
    return {"sent": sent, "parts": parts, "app_cpu": app_cpu}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` so far; NaN without ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def sse_clients(channel: Channel, base_url: str, streams: list[tuple[str, str]],
                grace: float) -> None:
    """SSE clients in this process, one per ``(run id, token)``; see the module docstring."""
    answer_async(channel, _clients(channel, base_url, streams, grace))


async def _clients(channel: Channel, base_url: str, streams: list[tuple[str, str]],
                   grace: float) -> dict[str, Any]:
    n = len(streams)
    delays: list[int] = []
    seqs: list[list[int]] = [[] for _ in streams]
    connected = [False] * n
    span = [0, 0]  # first and last receipt (time.time_ns())
    errors = 0
    failures: list[str] = []
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    timeout = httpx.Timeout(60.0, connect=JOIN_TIMEOUT)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:

        async def follow(i: int, run_id: str, token: str) -> None:
            nonlocal errors
            try:
                async with aconnect_sse(client, "GET", f"/runs/{run_id}/stream",
                                        params={"token": token}) as source:
                    source.response.raise_for_status()
                    connected[i] = True
                    async for event in source.aiter_sse():
                        sent = sent_at(event.data)
                        if sent is not None:
                            now = time.time_ns()
                            span[0] = span[0] or now
                            span[1] = now
                            delays.append(now - sent)
                            seqs[i].append(int(event.id))
            except (httpx.HTTPError, ValueError) as exc:
                errors += 1
                failures.append(repr(exc))

        began = time.monotonic()
        tasks = [asyncio.create_task(follow(i, run_id, token))
                 for i, (run_id, token) in enumerate(streams)]
        while not all(connected):
            if errors or time.monotonic() - began > JOIN_TIMEOUT:
                raise TimeoutError(f"{sum(connected)} of {n} clients connected (bound "
                                   f"{JOIN_TIMEOUT} s); {errors} failed: {failures[:3]}")
            await asyncio.sleep(0.05)
        channel.send("ready", {"join_seconds": time.monotonic() - began})
        cpu = time.process_time()
        expected = await asyncio.to_thread(channel.expect, "stop", STOP_TIMEOUT)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not all(
                len(set(seqs[i])) >= expected[run_id] for i, (run_id, _) in enumerate(streams)):
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)
    return {
        "delays_ns": delays, "errors": errors, "failures": failures[:5],
        "clients": [(run_id, len(set(seqs[i])), len(seqs[i]) - len(set(seqs[i])))
                    for i, (run_id, _) in enumerate(streams)],
        "first_ns": span[0], "last_ns": span[1], "cpu_seconds": time.process_time() - cpu,
    }
