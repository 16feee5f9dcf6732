"""One ``grep run=<id>`` follows a run through a prefork worker's log and a web process's log,
and every line that names the run carries its attempt."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
from worker_procs import WorkerProcess

from streaming.tokens import TokenSigner
from tests.waiting import wait_for
from tests.web.app_process import AppProcess

pytestmark = pytest.mark.slow
SECRET = "logs-suite-" + "s" * 32


def lines_about(text: str, run_id: str) -> list[str]:
    return [line for line in text.splitlines() if run_id in line]


def test_one_grep_follows_a_run_across_the_worker_and_the_web_tier(redis_url):
    worker = WorkerProcess(redis_url).start()
    web = AppProcess({"REDIS_URL": redis_url, "STREAMING_TOKEN_SECRET": SECRET}).start()
    try:
        run_id = worker.runs.start("demo", {"text": "x" * 60, "chunk_size": 2, "rate": 20})
        victim = worker.wait_progress(run_id, chunks=3)["worker_pid"]
        os.kill(victim, signal.SIGKILL)  # a second attempt continues the run
        token = TokenSigner(SECRET).issue(run_id, 600)
        body = httpx.get(f"{web.url}/runs/{run_id}/stream?token={token}", timeout=60).text
        assert "[DONE]" in body
        worker.runs.celery.AsyncResult(run_id).get(timeout=30)
        # Celery logs "succeeded" after storing the result; the web process logs the closed
        # stream after sending its last byte: wait for both lines, not for the result.
        worker.wait_for_log(f"run={run_id} attempt=2 Task", 30)
        wait_for(lambda: "closed at seq" in web.output(), 30, "the web process logs the stream")
        worker_lines = lines_about(worker.output(), run_id)
        web_lines = lines_about(web.output(), run_id)
    finally:
        web.stop()
        worker.stop()
    tag = f"run={run_id} attempt="
    assert all(tag in line for line in worker_lines + web_lines), "\n".join(
        line for line in worker_lines + web_lines if tag not in line)
    assert any(f"run={run_id} attempt=1 " in line and "started" in line for line in worker_lines)
    assert any(f"run={run_id} attempt=2 " in line and "ended done" in line
               for line in worker_lines)
    assert any("succeeded" in line and f"run={run_id} attempt=2 " in line
               for line in worker_lines)
    assert any(f"run={run_id} attempt=2 " in line and "closed at seq" in line
               for line in web_lines), web_lines
