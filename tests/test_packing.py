"""The asyncio clients pack commands with hiredis (``streaming.packing``): the same bytes as
redis-py's own packer, commands of two words split, floats and refused values left to
redis-py, and the clients the library builds use it against a real server."""

from __future__ import annotations

import pytest
import redis.asyncio as aredis
from redis.exceptions import DataError

from streaming.client import async_client
from streaming.packing import AVAILABLE, PackedConnection
from streaming.settings import Settings

COMMANDS = [
    ("XREAD", "BLOCK", "100", "COUNT", "500", "STREAMS", "a", "b", "0-1", "0-2"),
    ("EVALSHA", "f" * 40, 3, "k1", "k2", "k3", "token", 10_000, "data: é\n\n", b"raw"),
    ("CLIENT UNBLOCK", 42),
    ("SET", "key", 1.5),  # a float: redis-py's spelling
]


@pytest.mark.skipif(not AVAILABLE, reason="hiredis is not installed")
@pytest.mark.parametrize("command", COMMANDS)
def test_packed_like_redis_py(command: tuple[object, ...]) -> None:
    ours = b"".join(PackedConnection().pack_command(*command))
    theirs = b"".join(aredis.Connection().pack_command(*command))
    assert ours == theirs


def test_a_refused_value_gets_redis_pys_error() -> None:
    with pytest.raises(DataError):
        PackedConnection().pack_command("SET", "key", None)


async def test_the_librarys_clients_pack_in_c_against_a_real_server(settings: Settings) -> None:
    client = async_client(settings, reader=True, max_connections=2)
    try:
        assert client.connection_pool.connection_class is PackedConnection
        await client.set("packing:test", "é" * 3, ex=10)
        assert await client.get("packing:test") == "ééé"
        assert await client.xread({"packing:none": "0-0"}, count=1) in ([], {})
    finally:
        await client.delete("packing:test")
        await client.aclose()
