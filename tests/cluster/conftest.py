"""Fixtures of the cluster tests: a private Redis Cluster (three primaries of the embedded
valkey-server) for the session, and the core fixtures (``settings``, ``redis_url``,
``redis_client``) pointed at it, so core tests imported here run against the cluster as they are.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streaming.client import SyncClient, sync_client
from streaming.embedded import EmbeddedCluster
from streaming.settings import Settings


@pytest.fixture(scope="session")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_url(cluster: EmbeddedCluster) -> str:
    return cluster.url


@pytest.fixture
def settings(cluster: EmbeddedCluster) -> Settings:
    """As the core ``settings``: short leases so liveness tests are quick."""
    return Settings(redis_url=cluster.url, lease_ttl=1.0, liveness_interval=0.5,
                    producer_timeout=2.0, block_timeout=2.0)


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[SyncClient]:
    client = sync_client(settings)
    yield client
    client.close()
