"""Real worker processes for lifecycle tests: ``celery -A worker worker -P prefork -c 2``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from worker_helpers import stream_settings

from streaming.client import sync_client
from tasks.api import Runs
from worker.config import WorkerConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: Variables a test process may have that must not leak into a worker under test.
_OWN = ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _OWN and not k.startswith(("WORKER_", "STREAMING_", "OPENAI_"))}
    return env | values


class WorkerProcess:
    """One ``celery worker`` subprocess with its own queue, logging to a file."""

    def __init__(self, redis_url: str, *args: str, queue: str | None = None, **env: str) -> None:
        self.queue = queue or f"test-{uuid.uuid4().hex}"
        self.args = ["-P", "prefork", "-c", "2", *args]
        self.env = clean_env(REDIS_URL=redis_url, WORKER_QUEUE=self.queue,
                             PYTHONPATH=str(HERE), WORKER_GENERATOR_MODULES="worker_helpers",
                             STREAMING_LEASE_TTL="1", WORKER_PROGRESS_INTERVAL="0.2",
                             WORKER_CANCEL_CHECK_INTERVAL="0.1", **env)
        self.log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.config = WorkerConfig.from_env(self.env,
                                            streaming=stream_settings(redis_url, lease_ttl=1.0))
        self.runs = Runs.from_config(self.config)
        self.reader = sync_client(self.config.streaming, reader=True)

    def start(self, timeout: float = 40.0) -> WorkerProcess:
        command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "info",
                   "-n", f"{self.queue}@%h", *self.args]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for_log(" ready.", timeout)
        return self

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process is not None and self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{self.output()}"
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[int]:
        assert self.process is not None
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (warm shutdown) and wait; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group this test started
                self.process.wait(10)
        self.reader.close()
        self.runs.client.close()
        if self.process is not None and self.process.returncode == 0:
            self.log.unlink(missing_ok=True)

    def wait_progress(self, run_id: str, chunks: int, timeout: float = 20.0) -> dict:
        """The run's STREAMING progress once it has sent ``chunks`` chunks."""
        deadline = time.monotonic() + timeout
        while True:
            state, info = self.runs.task_state(run_id)
            if state == "STREAMING" and info.get("chunks", 0) >= chunks:
                return info
            assert time.monotonic() < deadline, f"no progress: {state} {info}"
            time.sleep(0.05)
