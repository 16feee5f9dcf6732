"""Shared fixtures: a real Redis-compatible server for every test, never a fake.

Without ``REDIS_URL`` the session starts a private embedded Valkey server; with it, tests use
that server but only keys of their own (random run ids): nothing is ever flushed.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
import redis

from streaming.embedded import EmbeddedServer
from streaming.settings import Settings
from streaming.writer import StreamWriter

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip with ``reason`` when ``condition`` is false, but fail under ``CI=true``."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required under CI=true: {reason}")
        pytest.skip(reason)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The server under test: ``REDIS_URL`` if given, else a private embedded one."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with EmbeddedServer() as server:
        yield server.url


@pytest.fixture
def private_server() -> Iterator[EmbeddedServer]:
    """A server of this test's own, for tests that restart, kill or fill it."""
    with EmbeddedServer() as server:
        yield server


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Settings for tests: the shared server, short leases so liveness tests are quick."""
    return Settings(redis_url=redis_url, lease_ttl=1.0, liveness_interval=0.5,
                    producer_timeout=2.0, block_timeout=2.0)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """The test's own view of the store. ``REDIS_ADMIN_URL``, if set, is used for it (the ACL
    test runs the library as a restricted user and inspects the store as an admin)."""
    client = redis.Redis.from_url(os.environ.get("REDIS_ADMIN_URL") or redis_url,
                                  decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def run_id() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
def writer(settings: Settings) -> Iterator[StreamWriter]:
    writer = StreamWriter(settings).start()
    yield writer
    writer.stop(timeout=5)
