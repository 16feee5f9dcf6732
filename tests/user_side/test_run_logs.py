"""A user's own ``StreamingTask``: its log lines carry ``run=<id> attempt=<n>`` (run by pytest
in a directory of its own, with the plugin's in-process worker)."""

from __future__ import annotations

from test_testing_plugin import run_pytest, write_user_project

USER_APP = '''
import logging

from celery import Celery

import streaming.celery
from streaming.celery import StreamingTask

app = Celery("userapp", broker="memory://", backend="cache+memory://")
streaming.celery.install(app)


@app.task(base=StreamingTask, name="user.chatty")
def chatty(text):
    logging.getLogger("userapp").warning("thinking about %s", text)
    yield {"text": text}
'''

USER_TESTS = '''
import logging

from streaming.logs import RunFilter


def test_lines_about_a_run_say_which(streaming_worker, streaming_runs, caplog):
    caplog.handler.addFilter(RunFilter())
    with caplog.at_level(logging.WARNING, logger="userapp"):
        run = streaming_runs.run("user.chatty", "tea")
    assert run.ending == "done"
    lines = [r.getMessage() for r in caplog.records if r.name == "userapp"]
    assert lines == [f"run={run.run_id} attempt=1 thinking about tea"], lines
'''


def test_a_users_task_logs_with_its_run_and_attempt(tmp_path, redis_url):
    write_user_project(tmp_path, USER_APP, USER_TESTS)
    done = run_pytest(tmp_path, redis_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
