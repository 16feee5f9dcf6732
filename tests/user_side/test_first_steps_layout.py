"""A user's project laid out as Celery's "First steps" tutorial lays one out: its own
``tasks.py`` and its own ``worker.py`` at the top, ``celery -A tasks worker``. The installed
distribution has no top-level ``tasks`` or ``worker`` package, so both names are the user's."""

from __future__ import annotations

import textwrap
import uuid

import pytest
from user_env import Process, user_env

from streaming.client import sync_client
from streaming.reader import read_events
from streaming.settings import Settings

pytestmark = pytest.mark.slow

TASKS = '''
import os

from celery import Celery

import streaming.celery
from streaming.celery import StreamingTask
from worker import greeting

app = Celery("tasks", broker=os.environ["CELERY_BROKER_URL"])
app.conf.task_default_queue = os.environ["QUEUE"]
streaming.celery.install(app)


@app.task(base=StreamingTask)
def hello(name):
    yield {"text": greeting(name)}
'''

WORKER = '''
def greeting(name):
    return f"hello {name}, from the user's own worker.py"
'''


def test_a_users_own_tasks_and_worker_modules_are_the_ones_imported(user_bin, redis_url,
                                                                      tmp_path):
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    (tmp_path / "worker.py").write_text(textwrap.dedent(WORKER))
    queue = f"first-steps-{uuid.uuid4().hex}"
    env = user_env(REDIS_URL=redis_url, CELERY_BROKER_URL=redis_url, QUEUE=queue,
                   STREAMING_LEASE_TTL="1")
    worker = Process("first-steps", [str(user_bin / "celery"), "-A", "tasks", "worker",
                                     "-P", "prefork", "-c", "1", "-l", "info"], tmp_path, env)
    try:
        worker.wait_for(" ready.", 60)
        from celery import Celery

        from streaming.celery import Runs

        sender = Celery("sender", broker=redis_url, set_as_current=False)
        settings = Settings(redis_url=redis_url, producer_timeout=15.0, block_timeout=1.0)
        run_id = Runs(sender, settings).apply_async("tasks.hello", ["ada"], queue=queue)
        client = sync_client(settings, reader=True)
        events = [(e.event, e.data) for e in read_events(client, run_id, settings)]
        client.close()
    finally:
        worker.stop()
    assert events == [("message", '{"text": "hello ada, from the user\'s own worker.py"}'),
                      ("message", "[DONE]")], worker.output()
