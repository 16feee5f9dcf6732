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
import secrets
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
from .tiers import app_service, services

NAME = "end-to-end"
RATE = 2.0  # chunks/s per run
CLIENTS_PER_RUN = 5
CLIENTS_PER_PROCESS = 500
TICK = 0.01
GRACE = 10.0
JOIN_TIMEOUT = 120.0
STOP_TIMEOUT = 600.0
TOKEN_TTL = 3600.0


@scenario(NAME, "End to end over HTTP with 1,000 SSE clients")
def run(ctx: Context) -> Result:
    clients, seconds = ctx.size(50, 1000), ctx.size(3.0, 10.0)
    runs = clients // CLIENTS_PER_RUN
    processes = -(-clients // CLIENTS_PER_PROCESS)
    result = Result(NAME, params={
        "clients": clients, "runs": runs, "clients_per_run": CLIENTS_PER_RUN,
        "chunks_per_second_per_run": RATE, "seconds": seconds,
        "offered_chunks_per_second": runs * RATE * CLIENTS_PER_RUN,
        "app": "examples.app (StreamEndpoints, one ReaderHub) under uvicorn, 1 process",
        "producer": "StreamWriter in its own process (no Celery)",
        "client processes": f"{processes} process(es), asyncio + httpx.AsyncClient + httpx-sse, "
                   f"one HTTP/1.1 connection per client, ?token= auth"})
    try:
        measured = _measure(ctx, runs, seconds, processes)
    finally:
        cleanup(ctx.redis_url, NAME)
    delays = [d for part in measured["parts"] for d in part["delays_ns"]]
    received = sum(len(part["delays_ns"]) for part in measured["parts"])
    first = min(part["first_ns"] for part in measured["parts"] if part["first_ns"])
    last = max(part["last_ns"] for part in measured["parts"] if part["last_ns"])
    lost = dups = 0
    for part in measured["parts"]:
        for run_id, unique, repeated in part["clients"]:
            lost += max(measured["sent"][run_id] - unique, 0)
            dups += repeated
    errors = sum(part["errors"] for part in measured["parts"])
    seed = "n/a (the seed has no HTTP tier)"
    result.add(Figure("chunks/s delivered", "chunks/s", "higher",
                      received / max((last - first) / 1e9, 1e-9), seed,
                      note=f"offered {runs * RATE * CLIENTS_PER_RUN:,.0f}/s; first to last "
                           "receipt over all clients"))
    for q, target in ((50, None), (99, None)):
        result.add(Figure(f"p{q} write to receipt", "ms", "lower",
                          percentile(delays, q) / 1e6, seed, target=target))
    result.add(Figure("chunks lost", "chunks", "lower", lost, seed, target=Target(limit=0)))
    result.add(Figure("chunks repeated", "chunks", "lower", dups, seed, target=Target(limit=0)))
    result.add(Figure("clients connected and streaming", "s", "lower",
                      max(part["join_seconds"] for part in measured["parts"]), seed))
    result.params["chunks received"] = received
    result.params["chunks expected"] = sum(measured["sent"].values()) * CLIENTS_PER_RUN
    result.params["client errors"] = errors
    result.notes.append("seed: n/a, it has no HTTP tier of its own to measure")
    return result


def _measure(ctx: Context, runs: int, seconds: float, processes: int) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    signer = TokenSigner(secret)
    ids = run_ids(NAME, runs, "p")
    streams = [(run_id, signer.issue(run_id, TOKEN_TTL))
               for run_id in ids for _ in range(CLIENTS_PER_RUN)]
    shares = [streams[i::processes] for i in range(processes)]
    with services(ctx.redis_url, secret) as started, contextlib.ExitStack() as stack:
        url = app_service(started)
        producer = stack.enter_context(Child(project_producer, ctx.redis_url, ids, RATE,
                                             seconds, {}, TICK, name="e2e-producer"))
        producer.channel.expect("ready", 300)
        readers = [stack.enter_context(Child(sse_clients, url, share, GRACE,
                                             name=f"e2e-clients-{i}"))
                   for i, share in enumerate(shares)]
        joined = [reader.channel.expect("ready", JOIN_TIMEOUT + 30) for reader in readers]
        started.check()
        producer.channel.send("go")
        produced = producer.channel.expect("result", seconds * 3 + 120)
        sent = dict(zip(ids, produced["sent"], strict=True))
        for reader in readers:
            reader.channel.send("stop", sent)
        parts = [reader.channel.expect("result", GRACE + 60) for reader in readers]
    for part, join in zip(parts, joined, strict=True):
        part.update(join)
    return {"sent": sent, "parts": parts}


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
                raise TimeoutError(f"{sum(connected)} of {n} clients connected after "
                                   f"{JOIN_TIMEOUT} s; {errors} failed: {failures[:3]}")
            await asyncio.sleep(0.05)
        channel.send("ready", {"join_seconds": time.monotonic() - began})
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
        "first_ns": span[0], "last_ns": span[1],
    }
