"""Property: many writers, many reconnecting readers; each reader sees each seq once, in order."""

import asyncio
import threading
import uuid

from hypothesis import HealthCheck, given
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
