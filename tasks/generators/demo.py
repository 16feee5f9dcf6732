"""Demo generators: ``demo`` streams a text in pieces at a steady rate, ``demo.fail`` fails."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import Field

from ..registry import Params, RunContext, register

__all__ = ["DemoFailure", "DemoParams", "FailParams", "demo", "demo_fail", "demo_total"]


class DemoParams(Params):
    text: str = Field(max_length=1_000_000)
    chunk_size: int = Field(8, ge=1)
    #: Chunks per second.
    rate: float = Field(20.0, gt=0, le=100_000)


class FailParams(Params):
    after: int = Field(3, ge=0)
    rate: float = Field(20.0, gt=0, le=100_000)
    message: str = "demo failure"


class DemoFailure(RuntimeError):
    """What ``demo.fail`` raises."""


def demo_total(params: DemoParams) -> int:
    """The chunks a ``demo`` run yields (its progress total)."""
    return math.ceil(len(params.text) / params.chunk_size)


@register("demo", DemoParams, resumable=True, total=demo_total)
async def demo(params: DemoParams, context: RunContext) -> AsyncIterator[dict[str, Any]]:
    """``params.text`` in ``chunk_size`` pieces, ``rate`` a second; each ``{"text", "index"}``.

    The ``text`` fields, joined in seq order, give the input exactly. A later attempt of the
    run continues after the ``context.resumed_chunks`` pieces stored before, so the same holds
    across restarts.
    """
    size = params.chunk_size
    first = context.resumed_chunks
    for index, start in enumerate(range(first * size, len(params.text), size), start=first):
        if index > first:
            await asyncio.sleep(1 / params.rate)
        yield {"text": params.text[start:start + size], "index": index}


@register("demo.fail", FailParams)
def demo_fail(params: FailParams, context: RunContext) -> Iterator[dict[str, Any]]:
    """``after`` chunks ``{"index": n}``, then ``DemoFailure(message)``."""
    for index in range(params.after):
        yield {"index": index}
        time.sleep(1 / params.rate)
    raise DemoFailure(params.message)
