"""How what a streaming task yields becomes one SSE event: text, JSON, or a named ``Event``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedChunk

__all__ = ["Event", "frame"]


@dataclass(frozen=True, slots=True)
class Event:
    """A named SSE event: ``event: <name>`` with ``data`` as text (str) or JSON (anything else)."""

    name: str
    data: Any = ""


def frame(item: object) -> tuple[str, str | None]:
    """``(data, event name)`` of one yielded value.

    ``str`` is sent as it is; a ``dict`` or ``list`` as JSON; an ``Event`` under its name.
    """
    if isinstance(item, Event):
        return _data(item.data, allow_scalars=True), item.name
    return _data(item, allow_scalars=False), None


def _data(value: object, *, allow_scalars: bool) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list) or allow_scalars:
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise UnsupportedChunk(f"chunk is not JSON-serializable: {exc}") from exc
    raise UnsupportedChunk(
        f"a task may yield str, dict, list or Event, not {type(value).__name__}"
    )
