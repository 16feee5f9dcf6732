"""The public surface: exports, settings from the environment, SSE framing, no Celery import."""

import asyncio
import subprocess
import sys

import pytest

import streaming
from streaming import ConfigurationError, Event, Settings, sse_frames
from streaming.sse import PING


def test_everything_exported_exists_and_is_documented():
    for name in streaming.__all__:
        assert hasattr(streaming, name), name
    for name in ("StreamWriter", "ReaderHub", "read_events", "sse_frames", "Settings"):
        assert name in streaming.__doc__


#: The Celery side: imported by workers and the processes that start runs, nowhere else.
CELERY_SIDE = {"celery"}


def test_the_library_never_imports_celery():
    """Readers, the web tier (Starlette, FastAPI, Django) and the pytest plugin import no
    Celery: an API process imports them alone."""
    code = ("import sys, pkgutil, importlib, streaming\n"
            "for m in pkgutil.iter_modules(streaming.__path__):\n"
            f"    if m.name not in {sorted(CELERY_SIDE)!r} + ['__main__']:\n"
            "        importlib.import_module('streaming.' + m.name)\n"
            "import streaming.django.views, streaming.django.urls\n"
            "assert 'celery' not in sys.modules, 'celery imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_celery_side_is_only_what_the_docs_name():
    import streaming.celery

    assert sorted(streaming.celery.__all__) == sorted(
        ["STREAMING", "Event", "RunHandle", "Runs", "Streaming", "StreamingOptions",
         "StreamingTask", "Summary", "frame", "install", "new_run_id", "streaming_of",
         "streaming_task"])
    for name in streaming.celery.__all__:
        assert hasattr(streaming.celery, name), name
    for name in ("install", "StreamingTask", "RunHandle", "Runs", "Event", "StreamingOptions"):
        assert name in streaming.celery.__doc__, name


def test_settings_from_env():
    settings = Settings.from_env({"REDIS_URL": "redis://x:1/0", "STREAMING_LEASE_TTL": "2.5",
                                  "STREAMING_MAX_STREAM_LENGTH": "50",
                                  "STREAMING_CLUSTER_HASH_TAGS": "yes"})
    assert settings.redis_url == "redis://x:1/0" and settings.lease_ttl == 2.5
    assert settings.max_stream_length == 50 and settings.cluster_hash_tags is True
    assert Settings.from_env({}).redis_url is None


@pytest.mark.parametrize(("name", "value", "message"), [
    ("STREAMING_LEASE_TTL", "soon", "STREAMING_LEASE_TTL='soon' is not a valid float"),
    ("STREAMING_MAX_STREAM_LENGTH", "1.5", "is not a valid int"),
    ("STREAMING_CLUSTER_HASH_TAGS", "maybe", "is not a valid bool"),
    ("STREAMING_RETENTION", "0", "retention must be positive"),
])
def test_bad_settings_name_the_variable(name, value, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({name: value})


async def test_sse_frames_add_ids_and_pings_on_silence():
    async def events():
        yield Event(1, "message", "a", "data: a\n\n")
        await asyncio.sleep(0.35)
        yield Event(2, "delta", "b", "event: delta\ndata: b\n\n")

    frames = [frame async for frame in sse_frames(events(), ping_interval=0.1, retry_ms=1000)]
    assert frames[0] == "retry: 1000\n\n"
    assert frames[1] == "id: 1\ndata: a\n\n"
    assert frames[-1] == "id: 2\nevent: delta\ndata: b\n\n"
    assert 2 <= frames.count(PING) <= 4


async def test_sse_frames_close_the_source_when_the_client_goes():
    closed = asyncio.Event()

    async def events():
        try:
            while True:
                yield Event(1, "message", "a", "data: a\n\n")
                await asyncio.sleep(10)
        finally:
            closed.set()

    frames = sse_frames(events(), ping_interval=5)
    assert await anext(frames) == "id: 1\ndata: a\n\n"
    await frames.aclose()
    assert closed.is_set()
