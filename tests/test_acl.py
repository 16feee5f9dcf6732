"""The minimal Redis ACL (``deploy/redis.acl``, issue 15): the core suite runs as the web tier's
user, and again with ``CLIENT UNBLOCK`` refused (the hub's slower fallback); the writer runs as
its own user; each user is refused every key outside ``sse:*``. A private server each time."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streaming import ReaderHub, StreamWriter
from streaming.embedded import EmbeddedServer
from streaming.hub import NO_UNBLOCK_BLOCK
from streaming.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
ACL_FILE = ROOT / "deploy" / "redis.acl"
CORE = ["tests/test_writer.py", "tests/test_reader.py", "tests/test_property.py",
        "tests/test_lifecycle.py"]


def acl_users() -> dict[str, list[str]]:
    """The users of the ACL file: name -> rules, each password replaced by ``pw-<name>``."""
    users = {}
    for line in ACL_FILE.read_text().splitlines():
        if line.startswith("user "):
            _, name, *rules = line.split()
            users[name] = [f">pw-{name}" if rule.startswith(">") else rule for rule in rules]
    return users


@pytest.fixture(scope="module")
def acl_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as server:
        admin = redis.Redis(port=server.port, decode_responses=True)
        for name, rules in acl_users().items():
            admin.execute_command("ACL", "SETUSER", name, "reset", *rules)
        no_unblock = [*acl_users()["streaming-web"], "-client|unblock"]
        admin.execute_command("ACL", "SETUSER", "web-no-unblock", "reset",
                              *[">pw-web-no-unblock" if r.startswith(">") else r
                                for r in no_unblock])
        admin.close()
        yield server


def url_of(server: EmbeddedServer, user: str) -> str:
    return f"redis://{user}:pw-{user}@127.0.0.1:{server.port}/0"


def denials(server: EmbeddedServer) -> list[dict]:
    admin = redis.Redis(port=server.port, decode_responses=True)
    try:
        return admin.acl_log()
    finally:
        admin.close()


@pytest.mark.parametrize("user", ["streaming-web", "web-no-unblock"])
def test_the_core_suite_runs_under_the_web_tiers_acl(acl_server, user):
    """The core cases use the writer and every reader through one URL: the web tier's user
    grants both. Without CLIENT UNBLOCK they pass too (the hub's fallback)."""
    admin = redis.Redis(port=acl_server.port, decode_responses=True)
    admin.acl_log_reset()
    env = {**os.environ, "REDIS_URL": url_of(acl_server, user),
           "REDIS_ADMIN_URL": f"redis://127.0.0.1:{acl_server.port}/0"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-W", "error::pytest.PytestUnraisableExceptionWarning", *CORE],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "never retrieved" not in output, output[-6000:]
    refused = {(entry["reason"], entry["object"], entry["username"])
               for entry in admin.acl_log(count=1000)}
    admin.close()
    # The only refusal allowed: CLIENT UNBLOCK, and only if the blocking read was used (the
    # runs our writers ring are followed by doorbells, which never unblock anything).
    expected = {("command", "client|unblock", user)} if user == "web-no-unblock" else set()
    assert refused <= expected, refused


async def test_the_hub_without_client_unblock_follows_a_new_reader_within_its_bound(
        acl_server, caplog):
    writer_settings = Settings(redis_url=url_of(acl_server, "streaming-writer"))
    # The blocking read's fallback: doorbells off, so that it follows these runs.
    web_settings = Settings(redis_url=url_of(acl_server, "web-no-unblock"), block_timeout=20,
                            liveness_interval=25, doorbell=False)
    writer = StreamWriter(writer_settings).start()
    busy, late = (writer.open(f"run-{uuid.uuid4().hex}") for _ in range(2))
    caplog.set_level(logging.WARNING)
    try:
        async with ReaderHub(web_settings) as hub:
            seen: list[str] = []

            async def follow_busy() -> None:
                async for event in hub.read(busy.run_id):
                    seen.append(event.data)

            following = asyncio.create_task(follow_busy())
            while hub.stats()["followed"] == 0:  # it caught up and joined the shared read
                await asyncio.sleep(0.05)
            busy.send("one")
            while not seen or hub.stats()["blocking_reads"] == 0:  # delivered by that read
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # the shared read blocks again, on the busy run only
            reader = hub.read(late.run_id)
            waiting = asyncio.create_task(anext(aiter(reader)))
            await asyncio.sleep(0.3)  # it caught up (nothing yet) and joined the shared read
            sent = time.monotonic()
            late.send("hello")
            event = await asyncio.wait_for(waiting, 10)
            delay = time.monotonic() - sent
            following.cancel()
        busy.finish()
        late.finish()
    finally:
        writer.stop()
    gc.collect()
    assert event.data == "hello"
    print(f"\nfirst live event of a new reader without CLIENT UNBLOCK: {delay:.2f} s")
    assert delay < NO_UNBLOCK_BLOCK + 2.0  # not the 20 s block
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("CLIENT UNBLOCK refused" in w for w in warnings) == 1, warnings
    assert not any("never retrieved" in w for w in warnings), warnings


@pytest.mark.parametrize("user", ["streaming-writer", "streaming-worker", "streaming-web"])
def test_no_user_reaches_a_key_outside_the_project_or_an_admin_command(acl_server, user):
    client = redis.Redis.from_url(url_of(acl_server, user), decode_responses=True)
    try:
        for call in (lambda: client.get("celery"), lambda: client.set("other:key", "x"),
                     lambda: client.keys("*"), lambda: client.flushdb(),
                     lambda: client.config_get("*"), lambda: client.eval(
                         "return redis.call('GET', KEYS[1])", 1, "other:key"),
                     lambda: client.publish("sse:run:x", "1")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                call()
        assert client.set("sse:acl-check", "x") and client.delete("sse:acl-check") == 1
    finally:
        client.close()
