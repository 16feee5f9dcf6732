"""A user's setup, outside the repository: this project built as a wheel and installed (not
editable) into a fresh virtual environment, the example project copied to a temporary
directory, and its own processes (a prefork Celery worker, uvicorn serving Django)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from streaming.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "project"
#: What a user installs besides the wheel's extras: an ASGI server for Django.
EXTRAS = "celery,django"


def build_venv(where: Path) -> Path:
    """Build the wheel and install it with its extras into a new venv; returns its bin/."""
    wheels, source = where / "wheels", where / "source"
    # Built from a clean copy: setuptools reuses a checkout's build/ directory, which may hold
    # packages an older configuration included.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "artifacts"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(source)], check=True, timeout=300, capture_output=True)
    wheel = next(wheels.glob("celery_streaming-*.whl"))
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[{EXTRAS}]",
                    "uvicorn"], check=True, timeout=600, capture_output=True)
    return venv / "bin"


def user_env(**values: str) -> dict[str, str]:
    """The environment a user's process gets: none of this repository's, PYTHONPATH neither."""
    keep = {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
                         "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV")
            and not k.startswith(("STREAMING_", "WORKER_", "PYTEST_"))}
    return keep | values


class Process:
    """One process of the user's, in its own session, logging to a file."""

    def __init__(self, name: str, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"user-{name}-", suffix=".log")[1])
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process.poll() is None, f"{self.name} exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{self.output()}"
            time.sleep(0.1)

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the session this test started
                self.process.wait(10)


class Project:
    """The example project in a temporary directory, run with the user's venv."""

    def __init__(self, bin_dir: Path, redis_url: str, where: Path) -> None:
        self.bin = bin_dir
        self.dir = where / "project"
        shutil.copytree(EXAMPLE, self.dir, ignore=shutil.ignore_patterns("__pycache__"))
        self.queue = f"example-{uuid.uuid4().hex}"
        self.llm_queue = f"example-llm-{uuid.uuid4().hex}"
        self.env = user_env(
            REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url, CELERY_RESULT_BACKEND=redis_url,
            CELERY_TASK_DEFAULT_QUEUE=self.queue, CHAT_LLM_QUEUE=self.llm_queue,
            DJANGO_SETTINGS_MODULE="proj.settings", DJANGO_DB=str(where / "db.sqlite3"),
            STREAMING_LEASE_TTL="1", STREAMING_LIVENESS_INTERVAL="0.5",
            DJANGO_SUPERUSER_PASSWORD="secret-pw-1",
        )
        self.processes: list[Process] = []

    def manage(self, *args: str) -> None:
        subprocess.run([str(self.bin / "python"), "manage.py", *args], cwd=self.dir,
                       env=self.env, check=True, timeout=120, capture_output=True)

    def add_users(self, *names: str) -> None:
        self.manage("migrate", "-v", "0")
        for name in names:
            self.manage("createsuperuser", "--noinput", "--username", name,
                        "--email", f"{name}@example.com")

    def start_worker(self) -> Process:
        command = [str(self.bin / "celery"), "-A", "proj", "worker", "-P", "prefork", "-c", "2",
                   "-Q", f"{self.queue},{self.llm_queue}", "-n", f"{self.queue}@%h", "-l", "info"]
        worker = Process("worker", command, self.dir, self.env)
        self.processes.append(worker)
        worker.wait_for(" ready.", 60)
        return worker

    def start_web(self) -> str:
        port = free_port()
        command = [str(self.bin / "uvicorn"), "proj.asgi:application", "--port", str(port),
                   "--lifespan", "off"]
        web = Process("web", command, self.dir, self.env)
        self.processes.append(web)
        web.wait_for("Uvicorn running", 60)
        return f"http://127.0.0.1:{port}"

    def start_wsgi(self) -> str:
        """Django's own development server (WSGI), on which streams cannot be served."""
        port = free_port()
        command = [str(self.bin / "python"), "manage.py", "runserver", "--noreload",
                   f"127.0.0.1:{port}"]
        web = Process("wsgi", command, self.dir, self.env)
        self.processes.append(web)
        web.wait_for("Quit the server", 60)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def logged_in(base_url: str, username: str, password: str = "secret-pw-1") -> httpx.Client:
    """An HTTP client with a Django session: it logs in through Django's own login form."""
    client = httpx.Client(base_url=base_url, timeout=30)
    client.get("/accounts/login/").raise_for_status()
    token = client.cookies["csrftoken"]
    answer = client.post("/accounts/login/", data={
        "username": username, "password": password, "csrfmiddlewaretoken": token})
    assert answer.status_code == 302, answer.text
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client
