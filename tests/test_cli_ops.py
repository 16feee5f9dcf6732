"""The operator's commands (``python -m streaming runs|inspect|summary``) against real runs in
every state, on a server of the test's own so that the counts are exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from streaming.control import mark_pending
from streaming.settings import Settings
from streaming.wire import Terminal
from streaming.writer import StreamWriter


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": url}
    return subprocess.run([sys.executable, "-m", "streaming", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def cli_json(url: str, *args: str) -> object:
    done = cli(url, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def store(private_server) -> Iterator[tuple[str, Settings, StreamWriter]]:
    """Runs in each state: queued, live, idle, ended (and one ended with an error)."""
    settings = Settings(redis_url=private_server.url, lease_ttl=5.0)
    client = redis.Redis.from_url(private_server.url, decode_responses=True)
    writer = StreamWriter(settings).start()
    mark_pending(client, "queued-run", settings)
    live = writer.open("live-run")
    for i in range(3):
        live.send(f"live {i}")
    live.flush()
    idle = writer.open("idle-run")
    idle.send("one")
    idle.release()  # claimed, no lease: its producer is gone
    ended = writer.open("ended-run")
    for i in range(10):
        ended.send(f"chunk {i}")
    ended.finish()
    failed = writer.open("failed-run")
    failed.finish(Terminal.ERROR, "it broke")
    yield private_server.url, settings, writer
    writer.stop(5)
    client.close()


def test_runs_lists_every_state_with_its_figures(store):
    url, _, _ = store
    rows = {row["run_id"]: row for row in cli_json(url, "runs")}
    assert {r: rows[r]["state"] for r in rows} == {
        "queued-run": "queued", "live-run": "live", "idle-run": "idle", "ended-run": "ended",
        "failed-run": "ended"}
    assert rows["live-run"]["last_seq"] == 3 and rows["live-run"]["attempt"] == 1
    assert rows["ended-run"]["last_seq"] == 11 and rows["ended-run"]["ending"] == "done"
    assert rows["failed-run"]["ending"] == "error"
    assert rows["queued-run"]["attempt"] == 0 and rows["queued-run"]["lag"] is None
    assert 0 <= rows["queued-run"]["age"] < 60  # since it was queued (server clock)
    for run in ("live-run", "idle-run", "ended-run"):
        assert 0 <= rows[run]["lag"] < 60 and 0 <= rows[run]["age"] < 60
    only = cli_json(url, "runs", "--state", "live", "--state", "queued")
    assert sorted(row["run_id"] for row in only) == ["live-run", "queued-run"]
    table = cli(url, "runs", "--state", "idle").stdout.splitlines()
    assert table[0].split()[:2] == ["RUN", "STATE"] and len(table) == 2
    assert table[1].split()[:2] == ["idle-run", "idle"]


def test_inspect_shows_meta_lease_ending_length_and_memory(store):
    url, _, _ = store
    live = cli_json(url, "inspect", "live-run")
    assert live["lease"] == live["meta"]["owner"] and 0 < live["lease_ttl_ms"] <= 5000
    assert live["stream_length"] == 3 and live["stream_bytes"] > 0 and live["meta_bytes"] > 0
    assert live["ending_entry"] is None
    ended = cli_json(url, "inspect", "ended-run")
    assert ended["lease"] is None and ended["meta"]["end"] == "done"
    assert ended["ending_entry"]["data"] == "data: [DONE]\n\n"
    assert ended["stream_length"] == 11 and 0 < ended["ttl"] <= 3600
    text = cli(url, "inspect", "failed-run")
    assert text.returncode == 0 and "it broke" in text.stdout and "ending:" in text.stdout
    missing = cli(url, "inspect", "no-such-run")
    assert missing.returncode == 6
    assert cli(url, "inspect", "bad*id").returncode == 2


def test_summary_counts_runs_streams_and_memory(store):
    url, _, _ = store
    found = cli_json(url, "summary")
    assert found["runs"] == {"queued": 1, "live": 1, "idle": 1, "ended": 2, "missing": 0}
    assert found["streams"] == 4 and found["entries"] == 3 + 1 + 11 + 1
    assert 0 < found["stream_bytes"] < found["used_memory"]
    text = cli(url, "summary").stdout
    assert "5 (1 queued, 1 live, 1 idle, 2 ended, 0 missing)" in text


def test_a_store_that_is_down_is_a_clear_error():
    done = cli("redis://127.0.0.1:1/0", "runs")
    assert done.returncode == 1 and done.stderr.startswith("error:")


def test_end_by_hand_respects_a_live_writer_unless_forced(store):
    url, _, _ = store
    client = redis.Redis.from_url(url, decode_responses=True)
    live = cli(url, "end", "live-run", "--reason", "operator")
    assert live.returncode == 1 and "--force" in live.stdout
    assert client.hget("sse:run:live-run:meta", "end") is None
    idle = cli_json(url, "end", "idle-run", "--reason", "stuck", "--kind", "lost")
    assert idle == {"run_id": "idle-run", "ending": "lost", "ended_now": True, "state": "idle"}
    queued = cli(url, "end", "queued-run", "--reason", "never mind")
    assert queued.returncode == 0 and "ended: cancelled" in queued.stdout
    again = cli_json(url, "end", "ended-run", "--reason", "late")
    assert again["ending"] == "done" and not again["ended_now"]
    assert cli(url, "end", "no-such-run", "--reason", "x").returncode == 6
    forced = cli_json(url, "end", "live-run", "--reason", "operator", "--force")
    assert forced["ended_now"] and forced["ending"] == "cancelled"
    # Every reader sees the stored ending with the reason.
    last = client.xrevrange("sse:run:live-run", count=1)[0][1]
    assert last["complete"] == "true" and "operator" in last["data"]
    assert "stuck" in client.xrevrange("sse:run:idle-run", count=1)[0][1]["data"]
    rows = {row["run_id"]: row["state"] for row in cli_json(url, "runs")}
    assert set(rows.values()) == {"ended"}
    client.close()
