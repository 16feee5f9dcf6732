"""The web process's garbage-collector pacing (``streaming.gcpolicy``), applied by the
endpoints' lifespan: long-lived objects frozen after joins, frozen garbage swept when the
frozen set doubled, everything given back at shutdown."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streaming.errors import ConfigurationError
from streaming.gcpolicy import YOUNG_THRESHOLD, GcPacer
from streaming.settings import Settings
from streaming.web import StreamEndpoints

SECRET = "s" * 32


@pytest.fixture(autouse=True)
def collector() -> Iterator[None]:
    """Each test starts and ends with CPython's defaults."""
    before = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class Joins:
    """A hub's counts: readers that joined so far, and those reading now."""

    def __init__(self) -> None:
        self.count = 0
        self.now = 0

    def __call__(self) -> int:
        return self.count

    def readers(self) -> int:
        return self.now


def cycles(n: int) -> list[list[object]]:
    made: list[list[object]] = []
    for _ in range(n):
        pair: list[object] = []
        pair.append([pair])
        made.append(pair)
    return made


def test_a_bad_mode_is_refused_when_the_endpoints_are_made() -> None:
    with pytest.raises(ConfigurationError, match="gc mode must be one of"):
        StreamEndpoints(Settings(token_secret=SECRET, gc_mode="sometimes"))
    assert Settings.from_env({"STREAMING_GC_MODE": "off"}).gc_mode == "off"


async def test_joins_mode_freezes_after_start_up_and_after_joins_only() -> None:
    joins = Joins()
    pacer = GcPacer("joins", joins, joins.readers, interval=3600)
    pacer.start()
    try:
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        frozen = gc.get_freeze_count()
        assert frozen > 0
        kept = cycles(1000)
        pacer.tick()  # nobody joined: the new objects stay with the collector
        assert gc.get_freeze_count() <= frozen  # (fewer when a frozen object was freed)
        joins.count += 1
        pacer.tick()
        assert gc.get_freeze_count() >= frozen + 2000
        assert kept
    finally:
        await pacer.aclose()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] != YOUNG_THRESHOLD


async def test_frozen_garbage_is_swept_once_the_readers_turned_over() -> None:
    joins = Joins()
    pacer = GcPacer("joins", joins, joins.readers, interval=3600)
    pacer.start()
    try:
        baseline = gc.get_freeze_count()
        joins.count = joins.now = 2000  # a process filling up: frozen, never swept
        garbage = cycles(baseline)
        pacer.tick()
        assert pacer.sweeps == 0
        del garbage  # frozen cycles: garbage the collector does not see
        joins.count += 999  # 999 readers came and went: under the floor of 1,000
        pacer.tick()
        assert pacer.sweeps == 0
        assert gc.get_freeze_count() >= 3 * baseline
        joins.count += 1
        joins.now -= 1  # one more left
        pacer.tick()
        assert pacer.sweeps == 1
        assert gc.get_freeze_count() < 2 * baseline
    finally:
        await pacer.aclose()


async def test_startup_mode_freezes_once(settings: Settings) -> None:
    joins = Joins()
    pacer = GcPacer("startup", joins, joins.readers)
    pacer.start()
    frozen = gc.get_freeze_count()
    joins.count += 1
    kept = cycles(100)
    pacer.tick()  # no task runs in this mode; tick() is the joins mode's step
    await pacer.aclose()
    assert frozen > 0 and kept and gc.get_freeze_count() == 0


async def test_the_endpoints_lifespan_applies_the_mode(settings: Settings) -> None:
    endpoints = StreamEndpoints(settings.replace(token_secret=SECRET))
    assert endpoints.gc.mode == "joins"
    async with endpoints.lifespan():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.get_freeze_count() == 0
    off = StreamEndpoints(settings.replace(token_secret=SECRET, gc_mode="off"))
    async with off.lifespan():
        assert gc.get_freeze_count() == 0
