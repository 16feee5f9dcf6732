"""Another Celery app in the same processes, unrelated to streaming (a library's, say).

Streaming is installed on ``proj``'s app only; nothing of it may reach this one.
"""

from celery import Celery, signals

billing = Celery("billing", set_as_current=False)
billing.conf.task_default_queue = "billing"
seen: list[str] = []


@billing.task(name="billing.charge")
def charge(amount: int) -> dict:
    return {"charged": amount}


@signals.task_postrun.connect(sender=charge)
def _charged(task_id=None, **_):
    seen.append(task_id)
