"""Settings of the example project (only what it needs; everything else is Django's default)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "chat",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "proj.urls"
ASGI_APPLICATION = "proj.asgi.application"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("DJANGO_DB", BASE_DIR / "db.sqlite3")}}
LOGIN_REDIRECT_URL = "/"
USE_TZ = True

# Celery (read by proj/celery.py with the CELERY_ namespace).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
# The web process sends runs by name (no task code), so routing lives here, not in decorators.
CELERY_TASK_ROUTES = {"chat.answer": {"queue": os.environ.get("CHAT_LLM_QUEUE", "llm")}}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # long runs never wait behind another in a prefetch
# Redis broker: a task unacknowledged this long is delivered again; keep it above the longest
# run (streaming tasks acknowledge late, so a killed worker's run is redelivered and continues).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7200}

# Streams (streaming.django): the store, and who may read a run.
STREAMING = {"redis_url": os.environ.get("REDIS_URL", "redis://localhost:6379/0")}
STREAMING_AUTHORIZE = "chat.access.may_read"
