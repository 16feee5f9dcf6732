"""The chaos soak (``python -m benchmarks.soak``): its judge, and its CI mode end to end.

The judge tests feed it recorded runs by hand: each names a failure the soak must catch
(issue 10's findings) and checks the verdict says so, and that a correct run passes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.soak.judge import Bounds, FaultRecord, RunPlan, StoredRun, judge
from benchmarks.soak.readers import ReaderLog, Received

ROOT = Path(__file__).resolve().parent.parent
CREATED = 1_000_000.0
BOUNDS = Bounds(lease_ttl=2, producer_timeout=6, queue_timeout=20, slack=10)
TEXT = "abcdefghij"  # pieces of 2: ab cd ef gh ij
SOAK_TIMEOUT = 300


def plan() -> RunPlan:
    return RunPlan("run-x", TEXT, 2, 10.0, CREATED)


def chunk(index: int) -> tuple[str, str]:
    return "message", json.dumps({"text": TEXT[2 * index:2 * index + 2], "index": index})


def stored(*events: tuple[str, str], end: str = "done") -> StoredRun:
    frames = [f"event: {name}\ndata: {data}\n\n" if name != "message" else f"data: {data}\n\n"
              for name, data in events]
    frames.append("data: [DONE]\n\n" if end == "done" else
                  'event: error\ndata: {"error": {"kind": "lost", "message": "gone"}}\n\n')
    entries = [(seq, {"seq_id": str(seq), "data": frame, "timestamp": str(int(CREATED * 1000))})
               for seq, frame in enumerate(frames, 1)]
    entries[-1][1]["complete"] = "true"
    return StoredRun("run-x", entries, {"attempt": "1", "end": end})


def reader_of(run: StoredRun, name: str = "r0", at: float = CREATED + 5) -> ReaderLog:
    """A reader that got every stored event, in order, by ``at``."""
    from streaming.wire import parse_frame

    log = ReaderLog("run-x", name, "holder")
    for seq, fields in run.entries:
        event, data = parse_frame(fields["data"])
        log.events.append(Received(seq, event, data, at))
    log.ending, log.ending_seq, log.ended_at = run.ending, run.entries[-1][0], at
    return log


def verdict(run: StoredRun, *readers: ReaderLog,
            faults: list[FaultRecord] | None = None) -> dict[str, Any]:
    return judge([plan()], {"run-x": run}, {"run-x": list(readers)}, faults or [], BOUNDS)


def problems(summary: dict[str, Any]) -> str:
    return json.dumps(summary["problems"])


def test_a_correct_run_passes() -> None:
    run = stored(*(chunk(i) for i in range(5)))
    summary = verdict(run, reader_of(run))
    assert summary["verdict"] == "pass", problems(summary)
    assert summary["done_exact"] == 1


def test_restarted_from_the_beginning_without_telling_clients_is_a_repeated_prefix() -> None:
    run = stored(chunk(0), chunk(1), ("restarted", '{"attempt": 2}'),
                 *(chunk(i) for i in range(5)))
    summary = verdict(run, reader_of(run))
    assert summary["verdict"] == "fail"
    assert summary["done_exact"] == 0
    assert "repeated or skipped output" in problems(summary)


@pytest.mark.parametrize("restarted, rest", [
    ({"attempt": 2, "resume": False, "chunks": 2, "last_seq": 2}, range(5)),
    ({"attempt": 2, "resume": True, "chunks": 2, "last_seq": 2}, range(2, 5)),
])
def test_the_client_rule_for_restarted_gives_the_input_back(restarted: dict[str, Any],
                                                            rest: range) -> None:
    run = stored(chunk(0), chunk(1), ("restarted", json.dumps(restarted)),
                 *(chunk(i) for i in rest))
    summary = verdict(run, reader_of(run))
    assert summary["verdict"] == "pass", problems(summary)


def test_resuming_after_the_wrong_chunk_count_is_flagged() -> None:
    run = stored(chunk(0), chunk(1),
                 ("restarted", '{"attempt": 2, "resume": true, "chunks": 1, "last_seq": 2}'),
                 *(chunk(i) for i in range(2, 5)))
    assert "resumes after 1 chunks" in problems(verdict(run, reader_of(run)))


def test_a_reader_told_lost_while_the_store_says_done_disagrees() -> None:
    run = stored(*(chunk(i) for i in range(5)))
    liar = reader_of(run)
    liar.events = liar.events[:2]
    liar.events.append(Received(None, "error", '{"error": {"kind": "lost"}}', CREATED + 3))
    liar.ending, liar.ending_seq = "lost", None
    summary = verdict(run, liar)
    assert summary["disagreements"] == 1 and summary["made_up_endings"] == 1
    assert "made up, not stored" in problems(summary)


def test_a_reader_without_an_ending_is_a_hang_and_a_run_without_one_never_ended() -> None:
    run = stored(chunk(0), chunk(1))
    run.entries.pop()  # no stored ending
    waiting = ReaderLog("run-x", "r0", "dropper")
    waiting.gave_up_at = CREATED + 100
    summary = verdict(run, waiting)
    assert summary["hangs"] == 1
    assert summary["runs_by_ending"] == {"none stored": 1}
    assert "0 stored endings" in problems(summary)


def test_an_ending_after_the_bound_is_a_hang() -> None:
    run = stored(*(chunk(i) for i in range(5)))
    late = CREATED + BOUNDS.claimed + plan().duration + 1
    run.entries[-1][1]["timestamp"] = str(int(late * 1000))
    assert verdict(run, reader_of(run, at=late))["hangs"] == 1
    fault = FaultRecord("store_kill", "store", CREATED + 2, CREATED + 4)
    assert verdict(run, reader_of(run, at=late), faults=[fault])["hangs"] == 0


def test_duplicates_and_skips_are_counted() -> None:
    run = stored(*(chunk(i) for i in range(5)))
    reader = reader_of(run)
    reader.events.insert(2, reader.events[1])
    del reader.events[4]
    summary = verdict(run, reader)
    assert summary["duplicates"] == 1 and summary["skipped"] == 1


@pytest.mark.slow
@pytest.mark.timeout(SOAK_TIMEOUT + 30)
# xfail only until both lifecycle branches (issue-10a, issue-10b) are merged: on the main of
# before issue 10 the soak finds hung, made-up and repeated-output runs. The coordinator removes
# this mark at the final merge if the branches fix what the soak finds.
@pytest.mark.xfail(strict=False, reason="issue 10: run lifecycle under faults")
def test_the_ci_soak_judges_every_run_correct(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--ci", "--seed", "1",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=SOAK_TIMEOUT)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["runs"] >= 3 and sum(summary["faults"].values()) >= 3, done.stdout
    assert summary["verdict"] == "pass", done.stdout


def test_a_celery_state_left_streaming_after_the_ending_is_flagged() -> None:
    run = stored(*(chunk(i) for i in range(5)), end="lost")
    run.celery_state = "STREAMING"
    summary = verdict(run, reader_of(run))
    assert summary["celery_running_after_ending"] == 1
    assert "Celery state STREAMING after the stored ending" in problems(summary)


def test_the_fault_proxy_forwards_stalls_and_cuts() -> None:
    import socket
    import threading
    import time

    from benchmarks.soak.proxy import FaultProxy

    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(
                lambda: c.recv(1024), b"")], daemon=True).start()

    threading.Thread(target=echo, daemon=True).start()
    proxy = FaultProxy(server.getsockname()[1], "test").start()
    try:
        conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        conn.sendall(b"one")
        assert conn.recv(16) == b"one"
        proxy.stall(1.5)
        time.sleep(0.2)
        began = time.monotonic()
        conn.sendall(b"two")
        assert conn.recv(16) == b"two"
        assert time.monotonic() - began > 1.0, "the stall let bytes through"
        proxy.cut(1.0)
        assert conn.recv(16) == b"", "the cut left the connection open"
        refused = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        assert refused.recv(16) == b"", "a connection during the cut was served"
        time.sleep(1.2)
        again = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        again.sendall(b"three")
        assert again.recv(16) == b"three"
    finally:
        proxy.close()
        server.close()
