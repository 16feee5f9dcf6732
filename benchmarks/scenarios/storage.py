"""Storage: the store's memory per 1,000 tokens of a token-by-token answer, and the longest
answer a reader can replay from its first chunk after it ended.

Tokens are words of English text with their leading space (about 5 bytes each), sent as
``{"text": token}`` events: the project through ``RunWriter.send_text``, the seed through
``write_chunk`` with the same frame. Memory is ``MEMORY USAGE`` (exact, ``SAMPLES 0``) of a
run's stream and meta hash after its ending, divided by its tokens. Three loads:

- quiet: one run at 50 tokens/s (600/s in quick mode), alone on its writer (a lone reader's
  case: nothing is held back; deltas merge only when they arrive while a flush is in flight,
  or with the opt-in ``delta_linger``);
- busy: 50 runs (10 in quick mode) at that rate each, on one writer;
- long: one answer of 50,000 deltas (12,000 in quick mode) sent as fast as possible with
  merging off (the worst case: one entry per delta); then read from seq 0.

"Before" is this project with what it had before: one entry per delta and a 10,000-entry cap.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from typing import Any

import redis

from streaming.reader import read_events
from streaming.settings import Settings
from streaming.writer import StreamWriter

from ..core import Context, Figure, Result, scenario
from .common import cleanup, run_ids

NAME = "storage"
BEFORE = {"merge_deltas": False, "max_stream_length": 10_000}
_TEXT = ("Every chunk the model streams lands in a Redis stream through one batched writer "
         "per process, and any web process serves it to readers who may reconnect at any "
         "moment, so the store keeps the whole answer until the run ends and a while after, "
         "which is where its memory goes.")
_WORDS = _TEXT.split()


def tokens(count: int) -> list[str]:
    """``count`` word tokens with their leading space, as a model streams them."""
    return [(" " if i else "") + _WORDS[i % len(_WORDS)] for i in range(count)]


@scenario(NAME, "Storage: memory per 1,000 tokens, longest answer replayable from seq 0")
def run(ctx: Context) -> Result:
    per_run, busy_runs, rate = ctx.size(600, 2000), ctx.size(10, 50), ctx.size(600.0, 50.0)
    long = ctx.size(12_000, 50_000)
    result = Result(NAME, params={"rate": rate, "tokens_per_run": per_run,
                                  "busy_runs": busy_runs, "long_deltas": long,
                                  "before": BEFORE})
    client = redis.Redis.from_url(ctx.redis_url, decode_responses=True)
    try:
        _memory(ctx, result, client, per_run, busy_runs, rate)
        _long(ctx, result, client, long)
    finally:
        client.close()
        cleanup(ctx.redis_url, NAME)
    return result


# -- memory per 1,000 tokens -------------------------------------------------------------------


def _memory(ctx: Context, result: Result, client: redis.Redis, per_run: int,
            busy_runs: int, rate: float) -> None:
    loads = {"quiet": (1, per_run), "busy": (busy_runs, per_run)}
    text = sum(len(t.encode()) for t in tokens(per_run)) * 1000 / per_run
    for load, (runs, count) in loads.items():
        after = _project(ctx, client, load, runs, count, rate, {})
        before = _project(ctx, client, load + "-before", runs, count, rate, BEFORE)
        seed = _seed(ctx, client, load, runs, count, rate) if ctx.seed else ctx.seed_missing
        result.add(Figure(f"memory per 1,000 tokens, {load} ({runs} x {rate:g} tokens/s)",
                          "KB", "lower", after / 1000, _kb(seed),
                          note=f"before: {before / 1000:.1f} KB; text: {text / 1000:.1f} KB; "
                               f"after = {after / text:.1f}x the text"))
    linger = _project(ctx, client, "quiet-linger", 1, per_run, rate, {"delta_linger": 0.05})
    result.add(Figure("memory per 1,000 tokens, quiet, delta_linger 50 ms (opt-in)", "KB",
                      "lower", linger / 1000, None,
                      note=f"{linger / text:.1f}x the text; adds up to 50 ms to a fast run's "
                           "deltas, none to one after a quiet spell"))


def _kb(value: float | str) -> float | str:
    return value / 1000 if isinstance(value, float) else value


def _project(ctx: Context, client: redis.Redis, label: str, runs: int, count: int,
             rate: float, overrides: dict[str, Any]) -> float:
    """Bytes per 1,000 tokens stored by this project's writer."""
    ids = run_ids(NAME, runs, label)
    writer = StreamWriter(Settings(redis_url=ctx.redis_url, **overrides)).start()
    try:
        handles = [writer.open(run_id) for run_id in ids]
        _paced(runs, count, rate, lambda i, token: handles[i].send_text(token))
        for handle in handles:
            handle.finish(timeout=60)
    finally:
        writer.stop()
    return _usage(client, ids, meta=True) * 1000 / (runs * count)


def _paced(runs: int, count: int, rate: float, send: Any) -> None:
    """``count`` tokens on each of ``runs`` runs, ``rate`` a second each, round robin."""
    interval = 1.0 / (rate * runs)
    start = time.perf_counter()
    words = tokens(count)
    for k in range(runs * count):
        delay = start + k * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(k % runs, words[k // runs])


def _seed(ctx: Context, client: redis.Redis, label: str, runs: int, count: int,
          rate: float) -> float:
    ids = run_ids(NAME, runs, label + "-seed")
    asyncio.run(_seed_write(ctx, ids, count, rate))
    return _usage(client, ids, meta=False) * 1000 / (runs * count)


async def _seed_write(ctx: Context, ids: list[str], count: int, rate: float) -> None:
    writer = ctx.seed.RedisSSEStreamWriter(ctx.seed.AsyncRedisClient(ctx.redis_url))
    await writer.start()
    interval = 1.0 / (rate * len(ids))
    start = time.perf_counter()
    words = tokens(count)
    for k in range(len(ids) * count):
        delay = start + k * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = f"data: {json.dumps({'text': words[k // len(ids)]})}\n\n"
        await writer.write_chunk(ids[k % len(ids)], frame)
    for run_id in ids:
        await writer.write_chunk(run_id, "data: [DONE]\n\n", is_complete=True)
    await writer.stop()
    await (await writer.redis.get_client()).aclose()


def _usage(client: redis.Redis, ids: list[str], *, meta: bool) -> int:
    total = 0
    for run_id in ids:
        keys = [f"sse:run:{run_id}"] + ([f"sse:run:{run_id}:meta"] if meta else [])
        total += sum(int(client.memory_usage(key, samples=0) or 0) for key in keys)
    return total


# -- the longest answer replayable from seq 0 ----------------------------------------------------


def _long(ctx: Context, result: Result, client: redis.Redis, count: int) -> None:
    after = _long_project(ctx, client, "long", count, {"merge_deltas": False})
    before = _long_project(ctx, client, "long-before", count, BEFORE)
    seed = _long_seed(ctx, client, count) if ctx.seed else ctx.seed_missing
    result.add(Figure(f"deltas of a {count:,}-delta answer a reader gets from seq 0", "deltas",
                      "higher", after["from_start"], seed,
                      note=f"before: {before['from_start']} (a gap event, then the last "
                           f"{before['kept']:,}); merging off, one entry per delta"))
    result.notes.append(
        f"long answer, after: {after['kept']:,} of {count:,} entries kept, "
        f"{after['bytes'] / 1e6:.2f} MB ({after['bytes'] / count:.0f} B a delta)")
    defaults = Settings()
    frame = sum(len(f"data: {json.dumps({'text': t})}\n\n") for t in tokens(1000)) / 1000
    longest = min(defaults.max_stream_length, int(defaults.max_stream_bytes / (frame + 32)))
    seed_cap = _seed_cap(ctx) if ctx.seed else ctx.seed_missing
    result.add(Figure("longest answer replayable whole from seq 0, one entry per delta",
                      "deltas", "higher", longest, seed_cap,
                      note=f"before: {BEFORE['max_stream_length']:,}; the caps, with "
                           f"{frame + 32:.0f} B counted an entry: min(max_stream_length "
                           f"{defaults.max_stream_length:,}, max_stream_bytes "
                           f"{defaults.max_stream_bytes:,} / {frame + 32:.0f})"))


def _seed_cap(ctx: Context) -> int:
    """The seed writer's default ``MAXLEN`` (its ``max_stream_length``)."""
    default = inspect.signature(ctx.seed.RedisSSEStreamWriter).parameters["max_stream_length"]
    return int(default.default)


def _long_project(ctx: Context, client: redis.Redis, label: str, count: int,
                  overrides: dict[str, Any]) -> dict[str, int]:
    run_id = run_ids(NAME, 1, label)[0]
    settings = Settings(redis_url=ctx.redis_url, **overrides)
    writer = StreamWriter(settings).start()
    try:
        run = writer.open(run_id)
        for token in tokens(count):
            run.send_text(token)
        run.finish(timeout=300)
    finally:
        writer.stop()
    from_start = 0
    for event in read_events(client, run_id, settings):
        if event.seq != from_start + 1 or event.terminal is not None:
            break
        from_start += 1
    return {"from_start": from_start, "kept": client.xlen(f"sse:run:{run_id}"),
            "bytes": _usage(client, [run_id], meta=True)}


def _long_seed(ctx: Context, client: redis.Redis, count: int) -> int:
    """Deltas the seed's reader gets from seq 0, in order from the first one."""
    run_id = run_ids(NAME, 1, "long-seed")[0]
    asyncio.run(_seed_burst(ctx, run_id, count))

    async def read() -> list[str]:
        reader_client = ctx.seed.AsyncRedisClient(ctx.redis_url)
        frames = [f async for f in ctx.seed.redis_sse_stream_generator(
            reader_client, run_id, starting_after=0)]
        await (await reader_client.get_client()).aclose()
        return frames

    frames = asyncio.run(read())
    first = client.xrange(f"sse:run:{run_id}", count=1)
    starts_at_one = bool(first) and first[0][1].get("seq_id") == "1"
    return len(frames) - 1 if starts_at_one else 0


async def _seed_burst(ctx: Context, run_id: str, count: int) -> None:
    writer = ctx.seed.RedisSSEStreamWriter(ctx.seed.AsyncRedisClient(ctx.redis_url))
    await writer.start()
    for token in tokens(count):
        await writer.write_chunk(run_id, f"data: {json.dumps({'text': token})}\n\n")
    await writer.write_chunk(run_id, "data: [DONE]\n\n", is_complete=True)
    await writer.stop()
    await (await writer.redis.get_client()).aclose()
