"""The project's Celery app, as Celery's Django guide makes it, plus one line for streaming."""

import os

from celery import Celery

import streaming.celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The worker side of streaming, on this app only: a writer per worker process, endings for
# runs whose process died, progress for Flower. Reads REDIS_URL and STREAMING_* variables.
streaming.celery.install(app)
