"""Flower shows runs with clear names, hidden secrets, the STREAMING state with progress in its
tasks list, and cancelled runs as CANCELLED (REVOKED in Celery's result backend)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from worker_procs import ROOT, WorkerProcess

from streaming.embedded import free_port
from worker.config import FLOWER_TASKS_COLUMNS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flower(redis_url: str) -> Iterator[tuple[WorkerProcess, str]]:
    # Short requeue grace and sweep: the worker's sweep ends dead runs of other workers soon.
    worker = WorkerProcess(redis_url, STREAMING_PRODUCER_TIMEOUT="3",
                           WORKER_SWEEP_INTERVAL="0.5").start()
    port = free_port()
    env = worker.env | {"FLOWER_UNAUTHENTICATED_API": "true"}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
         "--address=127.0.0.1", f"--tasks_columns={FLOWER_TASKS_COLUMNS}"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: worker.queue in str(get(f"{url}/api/workers?refresh=1")), 30)
        yield worker, url
    finally:
        process.terminate()
        process.wait(20)
        worker.stop()


def get(url: str) -> object:
    try:
        response = httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_until(condition, timeout: float, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(poll)
    return result


def task_info(url: str, run_id: str, state: str) -> dict:
    def seen():
        info = get(f"{url}/api/task/info/{run_id}")
        return info if isinstance(info, dict) and info.get("state") == state else None

    return wait_until(seen, 20)


PROGRESS = re.compile(r"(\d+)/(\d+) chunks, last_seq (\d+), attempt (\d+)")


def test_flower_shows_a_streaming_run_with_progress_then_its_summary(flower):
    worker, url = flower
    run_id = worker.runs.start("demo", {"text": "f" * 60, "chunk_size": 2, "rate": 10})
    streaming = task_info(url, run_id, "STREAMING")
    assert streaming["name"] == "tasks.generate[demo]"
    seen: list[tuple[int, ...]] = []

    def progress() -> bool:
        info = get(f"{url}/api/task/info/{run_id}")
        shown = PROGRESS.fullmatch(info["result"] or "") if isinstance(info, dict) else None
        if shown and info["state"] == "STREAMING":
            seen.append(tuple(int(n) for n in shown.groups()))
        return len({s[0] for s in seen}) >= 3  # three different counts seen mid-run

    wait_until(progress, 15, poll=0.05)
    for chunks, total, last_seq, attempt in seen:  # the counters agree, with the total
        assert (chunks, total, attempt) == (last_seq, 30, 1)
    done = task_info(url, run_id, "SUCCESS")
    assert "'ending': 'done'" in done["result"] and "'chunks': 30" in done["result"]


def test_the_tasks_list_has_the_result_column(flower):
    _, url = flower
    page = httpx.get(f"{url}/tasks", timeout=10).text
    assert re.search(r"<th[^>]*>\s*Result\s*</th>", page), "no Result column on /tasks"


def test_a_cancelled_run_is_cancelled_in_flower_and_revoked_in_celery(flower):
    worker, url = flower
    run_id = worker.runs.start("demo", {"text": "c" * 200, "chunk_size": 1, "rate": 20})
    task_info(url, run_id, "STREAMING")
    assert worker.runs.cancel(run_id, "stop pressed")
    info = task_info(url, run_id, "CANCELLED")
    assert "'ending': 'cancelled'" in info["result"]
    state, _ = worker.runs.task_state(run_id)
    assert state == "REVOKED"


def test_flower_shows_arguments_without_secrets(flower):
    worker, url = flower
    run_id = worker.runs.start("openai", {"prompt": "hi", "api_key": "sk-very-secret"})
    info = task_info(url, run_id, "FAILURE")
    assert "'prompt': 'hi'" in info["kwargs"] and "'***'" in info["kwargs"]
    listed = get(f"{url}/api/tasks?limit=100")
    assert run_id in listed and "sk-very-secret" not in str(listed)


@pytest.mark.fault
def test_flower_shows_a_run_whose_whole_worker_was_killed_as_failed(flower, redis_url):
    """Finding 7: not STREAMING forever; the sweep of the worker still alive stores the
    failure and announces it with a task-failed event, which Flower shows."""
    _, url = flower
    victim = WorkerProcess(redis_url, STREAMING_PRODUCER_TIMEOUT="3").start()
    try:
        run_id = victim.runs.start("demo", {"text": "k" * 200, "chunk_size": 1, "rate": 10})
        task_info(url, run_id, "STREAMING")
        assert victim.process is not None
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait(10)
        info = task_info(url, run_id, "FAILURE")
        assert "RunEnded" in info["exception"] and "lost" in info["exception"]
    finally:
        victim.stop()
