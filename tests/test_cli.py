"""``python -m streaming tail``: output and exit status by ending."""

import json
import os
import subprocess
import sys

import pytest

from streaming import StreamWriter, Terminal


def tail(redis_url, *args):
    env = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-m", "streaming", "tail", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("kind", "status"), [(Terminal.DONE, 0), (Terminal.ERROR, 1),
                                              (Terminal.CANCELLED, 3), (Terminal.TIMEOUT, 4)])
def test_exit_status_tells_the_ending(writer, redis_url, run_id, kind, status):
    run = writer.open(run_id)
    run.send("hello")
    run.finish(kind, "why")
    result = tail(redis_url, run_id)
    assert result.returncode == status, result.stderr
    assert result.stdout.splitlines()[0] == "hello"


def test_json_output_and_cursor(writer, redis_url, run_id):
    run = writer.open(run_id)
    for i in range(3):
        run.send(str(i), event="delta" if i == 2 else None)
    run.finish()
    result = tail(redis_url, run_id, "--json", "--starting-after", "1")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {"seq": 2, "event": "message", "data": "1", "terminal": None},
        {"seq": 3, "event": "delta", "data": "2", "terminal": None},
        {"seq": 4, "event": "message", "data": "[DONE]", "terminal": "done"},
    ]


def test_not_found_gap_and_bad_input(settings, redis_url, run_id):
    assert tail(redis_url, run_id).returncode == 6
    writer = StreamWriter(settings.replace(max_stream_length=100)).start()
    try:
        run = writer.open(run_id)
        for i in range(500):
            run.send(str(i))
        run.finish()
    finally:
        writer.stop()
    result = tail(redis_url, run_id)
    assert result.returncode == 7 and result.stdout.startswith("[gap]")
    bad = tail(redis_url, run_id, "--starting-after", "-3")
    assert bad.returncode == 2 and "not a non-negative integer" in bad.stderr
    assert tail(redis_url, "bad*id").returncode == 2



@pytest.mark.parametrize(("resume", "says"), [
    (False, "[restarted] attempt 2 starts over: the output above is void"),
    (True, "[restarted] attempt 2 continues after chunk 1; the output above stands"),
])
def test_a_restart_says_whether_the_output_above_stands(writer, redis_url, run_id, resume,
                                                        says):
    """The client rule: ``resume`` false voids what the earlier attempt printed."""
    run = writer.open(run_id)
    run.send("first")
    run.send(json.dumps({"attempt": 2, "resume": resume, "chunks": 1, "last_seq": 1}),
             event="restarted")
    run.send("second")
    run.finish()
    lines = tail(redis_url, run_id).stdout.splitlines()
    assert lines[0] == "first" and lines[1].startswith(says) and lines[2] == "second", lines
