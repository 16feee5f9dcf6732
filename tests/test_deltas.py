"""Text deltas that wait together are stored as one entry: fewer entries, the same text, every
reader (ours and the seed's) exactly once from any cursor, exact chunk counts for resumes, and
no delta held back on a quiet run. A run's stream is capped by bytes, not by an entry count."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
import uuid
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from streaming.reader import read_events
from streaming.settings import Settings
from streaming.writer import StreamWriter
from tests.conftest import require
from tests.waiting import wait_for

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "redis_stream_manager.py"
TOKENS = [f" tok{i}" if i % 7 else f" é{i}\n" for i in range(3000)]


def stored(client: redis.Redis, run_id: str) -> list[dict[str, str]]:
    return [fields for _, fields in client.xrange(f"sse:run:{run_id}")]


def text_of(entries: list[dict[str, str]]) -> str:
    out = []
    for fields in entries:
        frame = fields["data"]
        if fields.get("complete"):
            continue
        assert frame.startswith("data: ") and frame.endswith("\n\n") and frame.count("\n") == 2
        out.append(json.loads(frame[6:])["text"])
    return "".join(out)


def burst(writer: StreamWriter, run_id: str) -> int:
    run = writer.open(run_id)
    for token in TOKENS:
        run.send_text(token)
    return run.finish()


def test_deltas_that_wait_together_are_one_entry_with_the_same_text(writer, redis_client,
                                                                    run_id):
    last = burst(writer, run_id)
    entries = stored(redis_client, run_id)
    assert len(entries) == last < len(TOKENS) / 2  # merged while flushes were in flight
    assert [int(e["seq_id"]) for e in entries] == list(range(1, last + 1))
    assert text_of(entries) == "".join(TOKENS)


def test_merging_off_stores_one_entry_per_delta(settings, redis_client, run_id):
    writer = StreamWriter(settings.replace(merge_deltas=False)).start()
    try:
        assert burst(writer, run_id) == len(TOKENS) + 1
    finally:
        writer.stop()
    assert text_of(stored(redis_client, run_id)) == "".join(TOKENS)


def test_every_cursor_resumes_exactly_once(writer, redis_client, settings, run_id):
    last = burst(writer, run_id)
    entries = stored(redis_client, run_id)
    for cursor in range(last):
        events = list(read_events(redis_client, run_id, settings, starting_after=cursor))
        assert [e.seq for e in events] == list(range(cursor + 1, last + 1))
        assert text_of(entries[cursor:]) == "".join(
            json.loads(e.data)["text"] for e in events if e.terminal is None)


def test_the_seeds_reader_reads_merged_deltas(writer, redis_url, run_id):
    require(SEED.exists(), f"the seed is not at {SEED}")
    spec = importlib.util.spec_from_file_location("seed_for_deltas", SEED)
    seed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed)
    last = burst(writer, run_id)

    async def read(after: int) -> list[str]:
        client = seed.AsyncRedisClient(redis_url)
        frames = [data async for data in seed.redis_sse_stream_generator(
            client, run_id, starting_after=after)]
        await (await client.get_client()).aclose()
        return frames

    whole = asyncio.run(read(0))
    assert "".join(json.loads(f[6:])["text"] for f in whole[:-1]) == "".join(TOKENS)
    middle = last // 2
    assert asyncio.run(read(middle)) == whole[middle:]


def test_resumed_chunk_count_counts_merged_deltas(settings, redis_client, run_id):
    first = StreamWriter(settings).start()
    try:
        run = first.open(run_id)
        for token in TOKENS[:1000]:
            run.send_text(token)
        run.release()
    finally:
        first.stop()
    assert int(redis_client.hget(f"sse:run:{run_id}:meta", "seq")) < 1000  # some merged
    second = StreamWriter(settings).start()
    try:
        again = second.open(run_id, resume=True)
        assert again.resumed_chunks == 1000
        again.finish()
    finally:
        second.stop()


def test_a_lone_delta_is_not_held_even_with_a_long_linger(settings, redis_client, run_id):
    """delta_linger applies to deltas that follow closely; the first one goes at once."""
    writer = StreamWriter(settings.replace(delta_linger=60.0)).start()
    try:
        run = writer.open(run_id)
        run.send_text("hello")
        wait_for(lambda: redis_client.xlen(f"sse:run:{run_id}") == 1, 10,
                 "the lone delta is stored without waiting for the linger")
        for token in ("a", "b", "c"):
            run.send_text(token)  # these follow closely: they linger and merge
        assert run.flush(10) == 2  # a flush seals them: one entry
        assert text_of(stored(redis_client, run_id)) == "helloabc"
        run.finish()
    finally:
        writer.stop()


def test_the_byte_cap_trims_a_run_past_it_and_says_so(settings, redis_client, run_id):
    writer = StreamWriter(settings.replace(max_stream_bytes=20_000, merge_deltas=False)).start()
    try:
        run = writer.open(run_id)
        for i in range(2000):
            run.send_text(f"token {i}")  # ~25-byte frames, ~57 bytes an entry
        run.finish()
    finally:
        writer.stop()
    entries = stored(redis_client, run_id)
    assert 100 < len(entries) < 600
    assert sum(len(e["data"]) + 32 for e in entries) < 2 * 20_000
    events = list(read_events(redis_client, run_id, settings))
    assert events[0].event == "gap" and events[-1].seq == 2001


@pytest.mark.slow
def test_fifty_thousand_single_deltas_stay_replayable_from_the_start(redis_url, redis_client,
                                                                     run_id):
    """The default caps keep a long token-by-token answer whole (the seed's 10,000 did not)."""
    settings = Settings(redis_url=redis_url, merge_deltas=False)
    writer = StreamWriter(settings).start()
    try:
        run = writer.open(run_id)
        for i in range(50_000):
            run.send_text(f" t{i % 100}")
        last = run.finish(timeout=120)
    finally:
        writer.stop()
    assert last == 50_001 and redis_client.xlen(f"sse:run:{run_id}") == 50_001
    events = list(read_events(redis_client, run_id, settings))
    assert [e.seq for e in events] == list(range(1, 50_002))


@hyp_settings(max_examples=15, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.one_of(st.text(max_size=6), st.sampled_from(["<event>", "<pause>"])),
                     max_size=120),
       linger=st.sampled_from([0.0, 0.02]))
def test_any_mix_of_deltas_and_events_is_stored_in_order_and_read_once(plan, linger, settings,
                                                                       redis_client):
    """Deltas (any text), other events and pauses in any order: what is stored is the same
    sequence with adjacent deltas joined; every cursor reads the rest exactly once."""
    run_id = f"mix-{uuid.uuid4().hex}"
    writer = StreamWriter(settings.replace(delta_linger=linger) if linger else settings).start()
    expected: list[tuple[str, str]] = []  # (kind, text) with adjacent deltas joined
    try:
        run = writer.open(run_id)
        for step in plan:
            if step == "<pause>":
                time.sleep(0.005)
            elif step == "<event>":
                run.send("e", event="other")
                expected.append(("other", "e"))
            else:
                run.send_text(step)
                if expected and expected[-1][0] == "text":
                    expected[-1] = ("text", expected[-1][1] + step)
                else:
                    expected.append(("text", step))
        last = run.finish()
    finally:
        writer.stop()
    events = list(read_events(redis_client, run_id, settings))
    assert [e.seq for e in events] == list(range(1, last + 1))
    got: list[tuple[str, str]] = []
    for event in events[:-1]:
        if event.event == "other":
            got.append(("other", event.data))
        elif got and got[-1][0] == "text":
            got[-1] = ("text", got[-1][1] + json.loads(event.data)["text"])
        else:
            got.append(("text", json.loads(event.data)["text"]))
    assert got == [item for item in expected if item != ("text", "")] or got == expected
    for cursor in range(0, last, max(last // 5, 1)):
        again = list(read_events(redis_client, run_id, settings, starting_after=cursor))
        assert [e.seq for e in again] == list(range(cursor + 1, last + 1))


@pytest.mark.parametrize("merge", [True, False])
def test_a_streaming_tasks_text_yields_merge_only_when_its_app_says_so(writer, redis_client,
                                                                       run_id, merge):
    """``StreamingOptions.merge_text_deltas`` (on for the ready-made worker): the task's handle
    sends ``{"text"}`` yields through ``send_text``; off, each yield stays its own event."""
    from streaming.celery.handle import RunHandle
    from streaming.celery.runner import CancelWatch

    run = writer.open(run_id)
    handle = RunHandle(run, CancelWatch(run, lambda: "", 60.0), lambda _: None,
                       merge_text=merge)
    for token in TOKENS:
        handle.send({"text": token})
    handle.send({"text": "x", "more": 1})  # not a pure delta: its own event either way
    last = run.finish()
    entries = stored(redis_client, run_id)
    assert text_of(entries[:-2]) == "".join(TOKENS)
    assert json.loads(entries[-2]["data"][6:]) == {"text": "x", "more": 1}
    assert (last < len(TOKENS) / 2) if merge else (last == len(TOKENS) + 2)
