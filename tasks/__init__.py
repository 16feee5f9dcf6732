"""Thin Celery tasks and the generators they run.

``tasks.generate`` (in ``tasks.generate``) runs a registered generator into a run's stream;
``tasks.api`` starts, cancels and looks up runs from any process (it imports no task code).
"""

__all__ = ["GENERATE"]

#: The name runs are sent under (``send_task``) and the worker registers the task as.
GENERATE = "tasks.generate"
