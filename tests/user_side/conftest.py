"""Fixtures of the user-side tests: the wheel in a fresh venv, the example project copied out
of the repository, its prefork worker and its Django site under uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from user_env import Project, build_venv


@pytest.fixture(scope="session")
def user_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv with this project's wheel installed as a user installs it."""
    return build_venv(tmp_path_factory.mktemp("user-venv"))


@pytest.fixture(scope="module")
def project(user_bin: Path, redis_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The example project, outside the repository, with two users, a worker and the site."""
    project = Project(user_bin, redis_url, tmp_path_factory.mktemp("user-project"))
    try:
        project.add_users("alice", "bob")
        project.worker = project.start_worker()
        project.url = project.start_web()
        yield project
    finally:
        project.stop()


@pytest.fixture(scope="module")
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()
