"""Serve run streams from a Django project (ASGI; Django 5 or later). No Celery import.

    # urls.py
    path("streams/", include("streaming.django.urls")),

    # settings.py
    STREAMING = {"redis_url": "redis://localhost:6379/0"}      # Settings fields; default: env
    STREAMING_AUTHORIZE = "myapp.access.may_read"              # (request, run_id) -> bool

Routes: ``GET runs/<run_id>/stream`` (SSE; the cursor is ``Last-Event-ID``, else
``?last_event_id=``, else ``?starting_after=``) and ``GET runs/<run_id>/status``. Access is
decided by the project's own hook, which may use ``await request.auser()`` and the session;
without one, any logged-in user may read any run. Run under an ASGI server (uvicorn, daphne):
each event loop serves all its streams from one shared reader hub.
"""
