"""docker-compose.yml, checked without a Docker engine."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from worker_procs import ROOT

from tests.conftest import require
from worker.config import ENVIRONMENT, FLOWER_TASKS_COLUMNS, WorkerConfig

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def with_defaults(value: str) -> str:
    """``${NAME:-default}`` as compose resolves it when NAME is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_store_worker_and_flower_with_health_checks(compose):
    services = compose["services"]
    assert {"redis", "worker", "flower"} <= set(services)
    for name in ("redis", "worker", "flower"):
        assert services[name]["healthcheck"]["test"], name
    worker = " ".join(services["worker"]["command"])
    assert worker.startswith("celery -A worker worker -P prefork")
    assert " ".join(services["flower"]["command"]).startswith("celery -A worker flower")
    assert f"--tasks_columns={FLOWER_TASKS_COLUMNS}" in services["flower"]["command"]
    for name in ("worker", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "# api:" in COMPOSE.read_text()  # the web tier's place


def test_one_shared_configuration_the_worker_accepts(compose):
    services = compose["services"]
    shared = compose["x-config"]
    assert services["worker"]["environment"] is services["flower"]["environment"]
    assert services["worker"]["environment"] == shared
    known = {"REDIS_URL", *ENVIRONMENT.values()}
    assert set(shared) <= known | {k for k in shared if k.startswith("STREAMING_")}
    assert shared["REDIS_URL"].startswith("redis://redis:")
    config = WorkerConfig.from_env({k: with_defaults(v) for k, v in shared.items()})
    assert config.time_limit > config.soft_time_limit
    assert config.visibility_timeout > config.time_limit


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose`` (v1, Debian's package): either
    validates a file with ``config`` without a Docker engine."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_is_valid():
    command = compose_command()
    require(command is not None,
            "no compose client (apt-get install docker-compose); the YAML checks above still ran")
    done = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_compose_validation_catches_a_broken_file(tmp_path):
    command = compose_command()
    require(command is not None, "no compose client (apt-get install docker-compose)")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("healthcheck:", "healthchek:"))
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    done = subprocess.run([*command, "-f", str(broken), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "healthchek" in done.stderr
