"""Regression: every reader leaves while the hub's blocking connection is being set up.

Found by the web tests' random disconnects: the shard then sent ``XREAD`` with no streams,
redis-py raised ``DataError`` and the shard's task died, so no later reader got data. The
blocking shard follows the runs no doorbell announces (the seed's): doorbells are off here so
that it follows this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from streaming.hub import ReaderHub
from streaming.settings import Settings
from streaming.writer import StreamWriter


async def test_hub_survives_readers_leaving_during_connection_setup(
        settings: Settings, writer: StreamWriter):
    run_id = f"run-{uuid.uuid4().hex}"
    handle = await writer.aopen(run_id)
    await handle.asend("first")
    await handle.aflush()
    async with ReaderHub(settings.replace(doorbell=False)) as hub:
        shard = hub._shards[0]
        real_client_id = shard.client.client_id
        reader_task: asyncio.Task[None] | None = None

        async def client_id_then_leave() -> int:
            answer = await real_client_id()
            assert reader_task is not None
            reader_task.cancel()  # the only reader hangs up while CLIENT ID is in flight
            with contextlib.suppress(asyncio.CancelledError):
                await reader_task
            return int(answer)

        shard.client.client_id = client_id_then_leave  # type: ignore[method-assign]

        async def read_all() -> None:
            async for _ in hub.read(run_id):
                pass

        reader_task = asyncio.create_task(read_all())
        await asyncio.sleep(0.5)
        assert shard.task is not None and not shard.task.done(), shard.task
        await handle.asend("second")
        await handle.afinish()
        events = [e async for e in hub.read(run_id, starting_after=1)]
        assert [e.data for e in events] == ["second", "[DONE]"]
