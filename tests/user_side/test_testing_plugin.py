"""The pytest fixtures users get (``streaming.testing``, registered by the ``pytest11`` entry
point): a user's test suite, written as the README shows it, run by pytest in a directory of
its own. Also pytest-celery's own session worker (no Docker engine) running a streaming task."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

USER_APP = '''
from celery import Celery, shared_task

import streaming.celery
from streaming.celery import StreamingTask

app = Celery("userapp", broker="memory://", backend="cache+memory://")
streaming.celery.install(app)


@app.task(base=StreamingTask, name="user.words")
def words(text):
    for word in text.split():
        yield {"text": word + " "}


@app.task(base=StreamingTask, name="user.fails")
def fails():
    yield "partial"
    raise ValueError("boom")
'''

CONFTEST = '''
import pytest


@pytest.fixture
def streaming_app():
    from userapp import app
    return app
'''

USER_TESTS = '''
def test_words(streaming_worker, streaming_runs):
    run = streaming_runs.run("user.words", "a b c")
    assert run.ending == "done" and run.text() == "a b c "


def test_a_failure_ends_the_run_with_its_error(streaming_worker, streaming_runs):
    run = streaming_runs.run("user.fails")
    assert run.ending == "error" and "boom" in run.events[-1].data
    assert run.data() == ["partial"]
'''

# pytest-celery 1.x brings Celery's own fixtures (celery_session_app, celery_session_worker,
# celery_config, ...): they run in the test process, without Docker.
PYTEST_CELERY_TESTS = '''
import pytest
from celery import shared_task

import streaming.celery
from streaming.celery import StreamingTask


@shared_task(base=StreamingTask, name="session.count")
def count(n):
    for i in range(n):
        yield {"i": i}


@pytest.fixture(scope="session")
def celery_config():
    return {"broker_url": "memory://", "result_backend": "cache+memory://"}


@pytest.fixture(scope="session")
def celery_worker_parameters(celery_session_app, streaming_settings):
    streaming.celery.install(celery_session_app, streaming_settings)  # before the worker
    return {"perform_ping_check": False}


def test_with_the_session_worker(celery_session_app, celery_session_worker, streaming_settings):
    from streaming.testing import StreamingRuns

    run = StreamingRuns(celery_session_app, streaming_settings).run(count, 3)
    assert run.data() == [{"i": 0}, {"i": 1}, {"i": 2}] and run.ending == "done"
'''


def write_user_project(where: Path, app: str, tests: str) -> None:
    """A user's project in ``where``: their app module, this plugin's conftest, their tests."""
    for name, text in (("userapp.py", app), ("conftest.py", CONFTEST), ("test_user.py", tests)):
        (where / name).write_text(textwrap.dedent(text))


def run_pytest(where: Path, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env |= {"STREAMING_TEST_REDIS_URL": redis_url, "PYTHONPATH": str(where)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-W", "ignore::DeprecationWarning", str(where)],
                          cwd=where, env=env, capture_output=True, text=True, timeout=300)


def test_a_users_streaming_tasks_tested_in_a_few_lines(tmp_path, redis_url):
    write_user_project(tmp_path, USER_APP, USER_TESTS)
    done = run_pytest(tmp_path, redis_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_pytest_celerys_session_worker_runs_a_streaming_task(tmp_path, redis_url):
    (tmp_path / "test_session.py").write_text(textwrap.dedent(PYTEST_CELERY_TESTS))
    done = run_pytest(tmp_path, redis_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
