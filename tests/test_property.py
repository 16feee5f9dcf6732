"""Property: many writers, many reconnecting readers; each reader sees each seq once, in order."""

import asyncio
import itertools
import threading
import uuid

from hypothesis import HealthCheck, example, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from streaming import ReaderHub, StreamWriter, mark_pending, read_events
from streaming.client import sync_client

runs_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=80),  # chunks in the run
        st.lists(  # readers: a start cursor fraction, then the events read before each reconnect
            st.tuples(st.floats(0, 1), st.lists(st.integers(1, 30), max_size=4)),
            min_size=1, max_size=3,
        ),
    ),
    min_size=1, max_size=4,
)

PROPERTY = hyp_settings(max_examples=12, deadline=None,
                        suppress_health_check=[HealthCheck.function_scoped_fixture])


def produce(writer, run_id, count, barrier):
    run = writer.open(run_id)
    barrier.wait()
    for i in range(count):
        run.send(f"{run_id}:{i}")
    run.finish()


async def read_with_reconnects(hub, run_id, start, breaks):
    """Read from ``start``, dropping the connection after each count in ``breaks``."""
    seen, cursor = [], start
    for limit in [*breaks, None]:
        reader = hub.read(run_id, starting_after=cursor)
        got = 0
        async for event in reader:
            seen.append(event)
            cursor = event.seq if event.seq is not None else cursor
            got += 1
            if limit is not None and got >= limit:
                break
        if reader.terminal is not None:
            break
    return seen


@PROPERTY
@given(plan=runs_strategy)
def test_every_reader_sees_every_seq_exactly_once(plan, settings):
    writer = StreamWriter(settings).start()
    admin = sync_client(settings)
    run_ids = [f"prop-{uuid.uuid4().hex}" for _ in plan]
    for run_id in run_ids:
        mark_pending(admin, run_id, settings)

    async def scenario():
        barrier = threading.Barrier(len(plan) + 1)
        producers = [threading.Thread(target=produce, args=(writer, run_id, count, barrier))
                     for run_id, (count, _) in zip(run_ids, plan)]
        for thread in producers:
            thread.start()
        async with ReaderHub(settings) as hub:
            readers = [
                (run_id, count, asyncio.create_task(read_with_reconnects(hub, run_id, 0, breaks)))
                for run_id, (count, readers_plan) in zip(run_ids, plan)
                for _, breaks in readers_plan
            ]
            await asyncio.to_thread(barrier.wait)
            results = await asyncio.wait_for(
                asyncio.gather(*(task for *_, task in readers)), 60)
        for thread in producers:
            thread.join(10)
        return [(run_id, count, result) for (run_id, count, _), result in zip(readers, results)]

    try:
        for run_id, count, events in asyncio.run(scenario()):
            assert [e.seq for e in events] == list(range(1, count + 2))
            assert [e.data for e in events[:-1]] == [f"{run_id}:{i}" for i in range(count)]
        # Late readers at random cursors, after the runs ended, by the blocking reader too.
        client = sync_client(settings, reader=True)
        for run_id, (count, readers_plan) in zip(run_ids, plan):
            for fraction, _ in readers_plan:
                start = int(fraction * (count + 1))
                seqs = [e.seq for e in read_events(client, run_id, settings, starting_after=start)]
                assert seqs == list(range(start + 1, count + 2))
    finally:
        writer.stop()


def _entries(seqs: list[int], end: bool) -> list[tuple[str, dict[str, str]]]:
    """Stream entries with these seq ids, in stream order (the last one the ending if
    ``end``): ids ``0-<n>`` as our writers store them."""
    entries = []
    for n, seq in enumerate(seqs, start=1):
        last = end and n == len(seqs)
        frame = 'event: done\ndata: {"reason": "ok"}\n\n' if last else f"data: chunk {seq}\n\n"
        fields = {"seq_id": str(seq), "data": frame, "timestamp": "0"}
        if last:
            fields["complete"] = "true"
        entries.append((f"0-{n}", fields))
    return entries


@given(seqs=st.lists(st.integers(0, 12), max_size=12), end=st.booleans(),
       after=st.integers(0, 4), cuts=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 3)),
                                              max_size=6))
@example(seqs=[4], end=False, after=3, cuts=[])  # an entry before the cursor's position
@hyp_settings(max_examples=300)
def test_a_cursor_takes_single_entries_as_it_takes_any_batch(seqs, end, after, cuts):
    """``RunCursor.feed_parsed`` has a path of its own for a batch of one entry: fed the same
    entries in random batches, some of which start again at entries already taken (a re-read),
    a cursor yields and ends up where one fed entry by entry through the general path does
    (repeated and skipped seq ids, endings, old entries)."""
    from streaming.cursor import RunCursor, parse_entries
    from streaming.settings import Settings
    from streaming.wire import RunKeys

    settings = Settings(redis_url="redis://unused")
    items = parse_entries(_entries(seqs, end))
    batched, general = (RunCursor(RunKeys.for_run("prop"), after, settings) for _ in range(2))
    backs = dict(cuts)
    bounds = sorted({0, len(items), *(c for c in backs if c < len(items))})
    got, want = [], []
    for start, stop in itertools.pairwise(bounds):
        batch = items[max(0, start - backs.get(start, 0)):stop]
        for item in batch:
            want += list(general._feed([item]))
        got += list(batched.feed_parsed(batch))
        state = lambda c: (c.after, c.last_id, c.last_key, c.terminal)  # noqa: E731
        assert state(batched) == state(general)
    assert got == want
