"""The operator's commands on a Redis Cluster store: runs on every primary are found, inspected,
summed up and ended by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from streaming.control import mark_pending
from streaming.writer import StreamWriter


def cli(url: str, *args: str) -> object:
    done = subprocess.run([sys.executable, "-m", "streaming", *args, "--json"],
                          env={**os.environ, "REDIS_URL": url}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_runs_inspect_summary_and_end_on_a_cluster(settings, redis_client, redis_url):
    tag = os.urandom(4).hex()
    ids = [f"ops-{tag}-{i}" for i in range(6)]  # spread over the primaries by their slots
    writer = StreamWriter(settings).start()
    try:
        for run_id in ids[:3]:
            run = writer.open(run_id)
            run.send("x")
            run.finish()
        mark_pending(redis_client, ids[3], settings)
        live = writer.open(ids[4])
        live.send("y")
        live.flush()
        rows = {row["run_id"]: row for row in cli(redis_url, "runs")}
        assert {rows[r]["state"] for r in ids[:3]} == {"ended"}
        assert rows[ids[3]]["state"] == "queued" and rows[ids[4]]["state"] == "live"
        assert ids[5] not in rows
        detail = cli(redis_url, "inspect", ids[0])
        assert detail["stream_length"] == 2 and detail["ending_entry"]["data"] == "data: [DONE]\n\n"
        found = cli(redis_url, "summary")
        assert found["runs"]["ended"] >= 3 and found["stream_bytes"] > 0
        assert cli(redis_url, "end", ids[3], "--reason", "by hand")["ended_now"]
        live.finish()
    finally:
        writer.stop()
