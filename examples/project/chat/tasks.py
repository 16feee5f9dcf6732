"""The project's own tasks: streaming ones (their output is a resumable stream) and a plain one.

Each streaming task is a Celery task with ``base=StreamingTask``: name, queue, retries, time
and rate limits are Celery's own options. Its run id is its task id.
"""

import asyncio
import time

from celery import shared_task

from streaming.celery import Event, StreamingTask


@shared_task(base=StreamingTask, name="chat.echo", rate_limit="100/s")
def echo(text: str, size: int = 4, delay: float = 0.0):
    """A sync generator: ``text`` in pieces of ``size``; each yield is one event."""
    for start in range(0, len(text), size):
        if start and delay:
            time.sleep(delay)
        yield {"text": text[start:start + size]}


@shared_task(base=StreamingTask, name="chat.answer", soft_time_limit=120, time_limit=150)
async def answer(question: str, words: int = 5, delay: float = 0.0):
    """An async generator (an LLM client would be awaited here); routed to the ``llm`` queue
    by ``CELERY_TASK_ROUTES``."""
    yield Event("status", "thinking")
    for index in range(words):
        await asyncio.sleep(delay)
        yield {"text": f"word{index} "}
    yield Event("usage", {"words": words, "question": question})


@shared_task(base=StreamingTask, bind=True, name="chat.summarize")
def summarize(self, text: str):
    """A bound task that sends through its run handle and returns its own result."""
    words = text.split()
    for word in words:
        self.stream.send({"text": word + " "})
    return {"words": len(words), "run_id": self.stream.run_id}


class UpstreamDown(ConnectionError):
    """A transient failure of an upstream service."""


@shared_task(base=StreamingTask, bind=True, name="chat.flaky", autoretry_for=(UpstreamDown,),
             retry_kwargs={"countdown": 0}, max_retries=3)
def flaky(self, failures: int):
    """Fails its first ``failures`` attempts; Celery retries it, the run goes on."""
    attempt = self.stream.attempt
    yield {"text": f"attempt {attempt} "}
    if attempt <= failures:
        raise UpstreamDown(f"attempt {attempt}: upstream down")
    yield {"text": "done"}


@shared_task(base=StreamingTask, name="chat.once", reject_on_worker_lost=False)
def once(text: str, delay: float = 0.05):
    """A run that must not be repeated (say it has side effects): if its process dies, the
    message is not requeued and the worker ends the run ``lost``."""
    for char in text:
        time.sleep(delay)
        yield {"text": char}


@shared_task(name="chat.add")
def add(x: int, y: int) -> int:
    """A plain task: streaming leaves it as Celery made it."""
    return x + y


@shared_task(name="chat.neighbours")
def neighbours() -> dict:
    """What the worker process looks like to the other app and to plain tasks."""
    import os

    from proj.billing import billing, charge, seen
    from proj.celery import app

    result = charge.apply(args=(5,))
    return {
        "billing_result": result.result, "billing_postrun": result.id in seen,
        "billing_acks_late": billing.conf.task_acks_late,
        "billing_steps": sorted(str(step) for step in billing.steps["worker"]),
        "app_acks_late": app.conf.task_acks_late,
        "add_acks_late": add.acks_late, "echo_acks_late": echo.acks_late,
        "billing_task_id": result.id, "pid": os.getpid(),
    }
