"""Interoperability with the seed (Letta's stream manager), run from ../shared/seed/.

Both directions: our reader reads what the seed's writer wrote, and the seed's reader reads
what ours wrote. Skipped where ../shared is absent; required under CI=true.
"""

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from streaming import InvalidCursor, Terminal, end_run, read_events, run_status
from streaming.client import sync_client
from tests.conftest import require

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "redis_stream_manager.py"


@pytest.fixture(scope="module")
def seed():
    require(SEED.exists(), f"the seed is not at {SEED} (it lives beside the checkout)")
    spec = importlib.util.spec_from_file_location("seed_redis_stream_manager", SEED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def seed_write(seed, url, run_id, frames, fail=False):
    client = seed.AsyncRedisClient(url)

    async def generate():
        for frame in frames:
            yield frame
        if fail:
            raise RuntimeError("upstream broke")
        yield "data: [DONE]\n\n"

    await seed.create_background_stream_processor(generate(), client, run_id)
    await client._client.aclose()


async def seed_read(seed, url, run_id, starting_after=None):
    client = seed.AsyncRedisClient(url)
    frames = [f async for f in seed.redis_sse_stream_generator(
        client, run_id, starting_after=starting_after, poll_interval=0.01)]
    await client._client.aclose()
    return frames


def test_our_reader_reads_the_seeds_stream(seed, settings, redis_url, run_id):
    frames = [f"data: {json.dumps({'i': i})}\n\n" for i in range(120)]
    asyncio.run(seed_write(seed, redis_url, run_id, frames))
    client = sync_client(settings, reader=True)
    events = list(read_events(client, run_id, settings))
    assert [e.frame for e in events] == [*frames, "data: [DONE]\n\n"]
    assert [e.seq for e in events] == list(range(1, 122))
    assert events[-1].terminal is Terminal.DONE
    resumed = list(read_events(client, run_id, settings, starting_after=100))
    assert [e.seq for e in resumed] == list(range(101, 122))


def test_a_reader_at_the_end_of_a_seed_stream_ends_at_once(seed, settings, redis_url, run_id):
    asyncio.run(seed_write(seed, redis_url, run_id, ["data: 1\n\n", "data: 2\n\n"]))
    client = sync_client(settings, reader=True)
    reader = read_events(client, run_id, settings, starting_after=3)
    assert list(reader) == [] and reader.terminal is Terminal.DONE
    with pytest.raises(InvalidCursor, match="past run"):
        list(read_events(client, run_id, settings, starting_after=4))
    status = run_status(client, run_id, settings)
    assert (status.state, status.last_seq, status.terminal) == ("ended", 3, Terminal.DONE)


def test_our_reader_sees_the_seeds_error_ending(seed, settings, redis_url, run_id):
    asyncio.run(seed_write(seed, redis_url, run_id, ["data: 1\n\n"], fail=True))
    events = list(read_events(sync_client(settings, reader=True), run_id, settings))
    assert events[-1].terminal is Terminal.ERROR and "upstream broke" in events[-1].data


def test_the_seeds_reader_reads_our_stream(seed, writer, redis_url, run_id):
    run = writer.open(run_id)
    for i in range(120):
        run.send(json.dumps({"i": i}))
    run.finish()
    frames = asyncio.run(seed_read(seed, redis_url, run_id))
    assert frames == [f'data: {{"i": {i}}}\n\n' for i in range(120)] + ["data: [DONE]\n\n"]
    resumed = asyncio.run(seed_read(seed, redis_url, run_id, starting_after=119))
    assert resumed == ['data: {"i": 119}\n\n', "data: [DONE]\n\n"]  # seq 120, 121


def test_the_seeds_reader_stops_at_our_error_and_cancel_endings(seed, writer, redis_url, run_id):
    for kind, suffix in ((Terminal.ERROR, "e"), (Terminal.CANCELLED, "c")):
        run = writer.open(f"{run_id}-{suffix}")
        run.send("x")
        run.finish(kind, "stopped")
        frames = asyncio.run(seed_read(seed, redis_url, f"{run_id}-{suffix}"))
        assert frames[0] == "data: x\n\n" and frames[1].startswith(f"event: {kind.value}\n")


def test_the_seeds_reader_stops_at_a_stored_lost_ending(seed, writer, settings, redis_url,
                                                          run_id):
    """An ending the project decides (the guarded END script) is an entry like any other: the
    seed's reader, which waits forever on a dead producer, stops at it."""
    run = writer.open(run_id)
    run.send("x")
    run.release()
    client = sync_client(settings)
    assert end_run(client, run_id, settings, Terminal.LOST, "producer gone",
                   when="not_live") is Terminal.LOST
    frames = asyncio.run(seed_read(seed, redis_url, run_id))
    assert frames[0] == "data: x\n\n" and frames[1].startswith("event: error\n")
    assert '"kind": "lost"' in frames[1] and len(frames) == 2
