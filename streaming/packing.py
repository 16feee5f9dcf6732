"""Commands packed in C for the asyncio clients.

redis-py's blocking client packs commands with hiredis when it is installed; its asyncio
client packs them in Python, argument by argument. For the writer's pipelines (one ``APPEND``
call with dozens of chunks per run) and the hub's shared ``XREAD`` (two arguments per
followed stream) that packing was a leading cost of the process. ``PackedConnection`` is the
asyncio connection with hiredis' packer; without hiredis (or for a float argument, which
redis-py spells with ``repr``) it packs as redis-py does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aredis

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _pack = None

__all__ = ["AVAILABLE", "PackedConnection"]

#: Whether hiredis' packer is there (``PackedConnection`` falls back to redis-py's without it).
AVAILABLE = _pack is not None


class PackedConnection(aredis.Connection):
    """A redis-py asyncio connection that packs commands with hiredis."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if _pack is None or any(type(arg) is float for arg in args):
            return super().pack_command(*args)
        command = args[0]
        if isinstance(command, str) and " " in command:  # "CLIENT UNBLOCK": two words
            args = (*command.split(), *args[1:])
        try:
            return [_pack(args)]
        except TypeError:  # a value redis-py refuses: let it say which
            return super().pack_command(*args)
