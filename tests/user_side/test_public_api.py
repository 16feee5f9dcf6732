"""``streaming.celery`` on an app of the test's own, in the test process: a real Celery worker
(threads pool, memory broker) through the users' fixtures, and the store under test."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from celery import Celery

import streaming.celery
from streaming.celery import Event, StreamingOptions, StreamingTask
from streaming.control import run_status
from streaming.errors import ConfigurationError, InvalidRunId

app = Celery(f"public-{uuid.uuid4().hex}", broker="memory://", backend="cache+memory://",
             set_as_current=False)
CONF_BEFORE = {key: app.conf[key] for key in ("task_acks_late", "task_reject_on_worker_lost",
                                              "worker_prefetch_multiplier", "task_track_started")}
streaming.celery.install(app, options=StreamingOptions(cancel_check_interval=0.05))
attempts: dict[str, int] = {}


@app.task(base=StreamingTask, name="public.words")
def words(text: str, delay: float = 0.0):
    for word in text.split():
        yield {"text": word + " "}
        time.sleep(delay)


@app.task(base=StreamingTask, name="public.mixed")
async def mixed():
    yield "text"
    yield [1, 2]
    yield Event("usage", {"tokens": 3})
    yield 42  # not text, JSON or an Event


@app.task(base=StreamingTask, bind=True, name="public.crash", max_attempts=1)
def crash(self):
    yield "never: the run was claimed more often than max_attempts allows"


@app.task(name="public.plain")
def plain(x: int) -> int:
    return x * 2


class Choosy(StreamingTask):
    """A class-based streaming task that retries depending on its arguments."""

    name = "public.choosy"

    def run(self, transient: bool):
        yield {"attempt": self.stream.attempt}
        if self.stream.attempt == 1:
            raise ConnectionError("upstream down")

    def retry_stream(self, exc):
        return {"countdown": 0} if self.request.kwargs.get("transient") else None


choosy = app.register_task(Choosy())


class Named(StreamingTask):
    """Its callers name the run (an argument), as the ready-made app's ``tasks.generate``."""

    name = "public.named"

    def run(self, run_id: str, text: str):
        yield text

    def run_id_for(self, task_id, args, kwargs):
        return kwargs["run_id"]


named = app.register_task(Named())


@app.task(base=StreamingTask, bind=True, name="public.resumes", resumable=True,
          autoretry_for=(ConnectionError,), retry_kwargs={"countdown": 0}, max_retries=2)
def resumes(self, n: int):
    """Continues after the chunks its earlier attempts stored."""
    for index in range(self.stream.resumed_chunks, n):
        yield {"i": index, "attempt": self.stream.attempt}
        if index == 2 and self.stream.attempt == 1:
            raise ConnectionError("upstream dropped")


@app.task(base=StreamingTask, name="public.limited", rate_limit="60/m")
def limited():
    yield {"started": time.time()}


@pytest.fixture
def streaming_app() -> Celery:
    return app


def test_install_changes_no_setting_and_is_idempotent():
    assert streaming.celery.install(app) is streaming.celery.streaming_of(app)
    assert {key: app.conf[key] for key in CONF_BEFORE} == CONF_BEFORE
    assert plain.acks_late is False and words.acks_late is True
    assert sorted(step.__name__ for step in app.steps["worker"]) == ["SweepStep", "WorkerStep"]


@pytest.mark.parametrize("own", [None, "a subclass"])
def test_the_worker_gets_the_safe_consumer_unless_the_app_names_its_own(own):
    """``streaming.celery.consumer`` (a broker restart must not stop the worker; the fault is
    in tests/celery_side/test_faults_worker.py): the bootstep swaps Celery's consumer only."""
    from streaming.celery.consumer import Consumer

    class Mine(Consumer):
        pass

    other = Celery("consumers", broker="memory://", set_as_current=False)
    if own:
        other.conf.worker_consumer = Mine
    streaming.celery.install(other)
    worker = other.WorkController(pool_cls="solo", hostname=f"consumers-{uuid.uuid4().hex}@test",
                                  without_heartbeat=True, without_mingle=True,
                                  without_gossip=True)
    assert type(worker.consumer) is (Mine if own else Consumer)


def test_a_task_of_an_app_without_install_says_what_to_do():
    other = Celery("bare", broker="memory://", set_as_current=False)

    def nothing():
        yield from ()

    task = other.task(base=StreamingTask, name="bare.t")(nothing)
    with pytest.raises(ConfigurationError, match=r"streaming.celery.install\(app\)"):
        task.delay()


def test_delay_from_code_that_imports_the_task_returns_the_run(streaming_worker,
                                                               streaming_runs):
    result = words.delay("one two three")
    run = streaming_runs.collect(result.id)
    assert run.text() == "one two three " and run.ending == "done"
    assert result.get(timeout=30)["chunks"] == 3


def test_a_run_is_marked_queued_when_sent(streaming_worker, streaming_settings):
    result = words.apply_async(("never run",), queue=f"nobody-{uuid.uuid4().hex}")
    status = run_status(streaming.celery.streaming_of(app).redis, result.id, streaming_settings)
    assert status.state == "pending"


def test_a_bad_run_id_is_refused_before_sending():
    with pytest.raises(InvalidRunId):
        words.apply_async(("x",), task_id="bad id with spaces")


def test_called_directly_the_body_is_the_users_generator():
    assert list(words("a b")) == [{"text": "a "}, {"text": "b "}]


def test_an_unsupported_chunk_ends_the_run_with_its_error(streaming_worker, streaming_runs):
    run = streaming_runs.run("public.mixed")
    assert [e.data for e in run.chunks] == ["text", "[1, 2]", '{"tokens": 3}']
    assert run.ending == "error"
    assert '"type": "UnsupportedChunk"' in run.events[-1].data
    assert "not int" in run.events[-1].data


def test_max_attempts_is_a_task_option(streaming_worker, streaming_runs, streaming_settings):
    from streaming.writer import StreamWriter

    run_id = str(uuid.uuid4())
    writer = StreamWriter(streaming_settings).start()
    try:
        writer.open(run_id).release()  # an earlier attempt that never ended
    finally:
        writer.stop()
    crash.apply_async(task_id=run_id)
    run = streaming_runs.collect(run_id)
    assert run.ending == "lost" and "started 2 times" in run.events[-1].data


def test_a_cancel_stops_the_run_between_chunks(streaming_worker, streaming_runs):
    run_id = streaming_runs.start("public.words", " ".join(["w"] * 200), delay=0.05)
    time.sleep(0.5)
    assert streaming_runs.runs.cancel(run_id, "enough")
    run = streaming_runs.collect(run_id)
    assert run.ending == "cancelled" and len(run.chunks) < 200


@pytest.mark.parametrize(("transient", "ending", "attempts"), [(True, "done", [1, 2]),
                                                               (False, "error", [1])])
def test_retry_stream_decides_from_the_calls_arguments(streaming_worker, streaming_runs,
                                                      transient, ending, attempts):
    run = streaming_runs.run("public.choosy", transient=transient)
    assert run.ending == ending
    assert [item["attempt"] for item in run.data() if "attempt" in item] == attempts


def test_a_task_may_take_its_run_id_from_its_arguments(streaming_worker, streaming_runs):
    run_id = f"run-{uuid.uuid4().hex}"
    result = named.apply_async(kwargs={"run_id": run_id, "text": "named"})
    assert result.id != run_id
    run = streaming_runs.collect(run_id)
    assert run.data() == ["named"] and run.ending == "done"


def test_a_resumable_task_continues_after_the_stored_chunks(streaming_worker, streaming_runs):
    run = streaming_runs.run("public.resumes", 6)
    restarted = [json.loads(e.data) for e in run.events if e.event == "restarted"]
    assert restarted == [{"attempt": 2, "resume": True, "chunks": 3, "last_seq": 3}]
    assert [item["i"] for item in run.data()] == [0, 1, 2, 3, 4, 5]  # each once
    assert [item["attempt"] for item in run.data()] == [1, 1, 1, 2, 2, 2]
    assert run.ending == "done"


def test_a_rate_limit_spaces_the_runs_and_each_ends_done(streaming_worker, streaming_runs):
    """Celery's ``rate_limit`` on a streaming task (60/m: one a second) holds the later runs
    in the worker, queued, and each still runs once and ends ``done``."""
    results = [limited.delay() for _ in range(3)]
    runs = [streaming_runs.collect(result.id) for result in results]
    assert [run.ending for run in runs] == ["done"] * 3
    assert [len(run.data()) for run in runs] == [1, 1, 1]
    starts = sorted(run.data()[0]["started"] for run in runs)
    assert starts[2] - starts[0] >= 1.5, starts
