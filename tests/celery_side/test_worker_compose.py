"""docker-compose.yml, checked without a Docker engine: the whole product (store, workers,
Flower, the web tier), secrets only from the environment, ports on loopback unless opted in."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from worker_procs import ROOT

from tests.conftest import require
from worker.config import ENVIRONMENT, FLOWER_TASKS_COLUMNS, WorkerConfig

COMPOSE = ROOT / "docker-compose.yml"
#: The secrets compose refuses to start without (``.env.example`` lists them).
SECRETS = {"REDIS_PASSWORD": "store-pw", "FLOWER_PASSWORD": "flower-pw",
           "STREAMING_TOKEN_SECRET": "t" * 32}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def with_defaults(value: str) -> str:
    """``${NAME:-default}`` as compose resolves it when NAME is unset (and the secrets)."""
    value = re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", lambda m: SECRETS[m.group(1)], str(value))
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_the_whole_product_with_health_checks(compose):
    services = compose["services"]
    assert {"redis", "worker", "flower", "web"} <= set(services)
    for name in ("redis", "worker", "flower", "web"):
        assert services[name]["healthcheck"]["test"], name
    worker = " ".join(services["worker"]["command"])
    assert worker.startswith("celery -A worker worker -P prefork")
    assert " ".join(services["flower"]["command"]).startswith("celery -A worker flower")
    assert f"--tasks_columns={FLOWER_TASKS_COLUMNS}" in services["flower"]["command"]
    web = " ".join(services["web"]["command"])
    assert web.startswith("uvicorn --factory examples.app:create_app") and "--workers" in web
    for name in ("worker", "flower", "web"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "8000/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '".[worker,web]"' in dockerfile and "COPY examples" in dockerfile


def test_one_shared_configuration_the_worker_accepts(compose):
    services = compose["services"]
    shared = compose["x-config"]
    assert services["worker"]["environment"] == shared
    for name in ("flower", "web"):  # the shared configuration and their own secret
        own = {k: v for k, v in services[name]["environment"].items() if k not in shared}
        assert {k: services[name]["environment"][k] for k in shared} == shared
        assert set(own) == {"flower": {"FLOWER_BASIC_AUTH"},
                            "web": {"STREAMING_TOKEN_SECRET"}}[name]
    known = {"REDIS_URL", *ENVIRONMENT.values()}
    assert set(shared) <= known | {k for k in shared if k.startswith("STREAMING_")}
    assert shared["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    config = WorkerConfig.from_env({k: with_defaults(v) for k, v in shared.items()})
    assert config.time_limit > config.soft_time_limit
    assert config.visibility_timeout > config.time_limit
    assert config.streaming.redis_url == "redis://:store-pw@redis:6379/0"


def test_no_open_door(compose):
    """The store needs its password, Flower its credentials, the web tier its token secret;
    none has a default; published ports listen on loopback unless the operator opts in."""
    services = compose["services"]
    store = " ".join(services["redis"]["command"])
    assert "--requirepass ${REDIS_PASSWORD:?" in store and "ports" not in services["redis"]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].endswith(
        "${FLOWER_PASSWORD:?set FLOWER_PASSWORD in .env}")
    assert "FLOWER_UNAUTHENTICATED_API" not in str(compose)
    assert services["web"]["environment"]["STREAMING_TOKEN_SECRET"].startswith(
        "${STREAMING_TOKEN_SECRET:?")
    published = [port for s in services.values() for port in s.get("ports", [])]
    assert published and all(re.match(r"\$\{[A-Z_]+_BIND:-127\.0\.0\.1\}:", p) for p in published)
    example = (ROOT / ".env.example").read_text()
    assert all(f"\n{name}=\n" in example for name in SECRETS)  # listed, left empty
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose`` (v1, Debian's package): either
    validates a file with ``config`` without a Docker engine."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def compose_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    require(command is not None,
            "no compose client (apt-get install docker-compose); the YAML checks above still ran")
    assert command is not None
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.endswith("_BIND")}
    return subprocess.run([*command, "-f", str(path), "config"], capture_output=True, text=True,
                          timeout=60, env={**clean, **env}, cwd=path.parent)


def test_compose_config_is_valid():
    done = compose_config(COMPOSE, SECRETS)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    for name in ("web", "flower"):
        assert all(str(port).startswith("127.0.0.1:") for port in resolved[name]["ports"]), \
            resolved[name]["ports"]
    assert resolved["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "admin:flower-pw"
    opened = compose_config(COMPOSE, {**SECRETS, "WEB_BIND": "0.0.0.0"})
    assert yaml.safe_load(opened.stdout)["services"]["web"]["ports"][0].startswith("0.0.0.0:")


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(missing):
    done = compose_config(COMPOSE, {k: v for k, v in SECRETS.items() if k != missing})
    assert done.returncode != 0 and missing in done.stderr, done.stderr


def test_compose_validation_catches_a_broken_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("healthcheck:", "healthchek:"))
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    done = compose_config(broken, SECRETS)
    assert done.returncode != 0 and "healthchek" in done.stderr
