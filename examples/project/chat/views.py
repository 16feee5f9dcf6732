"""Start and cancel runs. The web process imports no task code: runs are sent by name."""

import json

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST
from proj.celery import app

from streaming.celery import Runs

runs = Runs(app)
#: The tasks a user may start from the web: names only, no task code is imported here.
STREAMING_TASKS = ("chat.echo", "chat.answer", "chat.summarize", "chat.flaky", "chat.once")


@login_required
@require_POST
def start(request: HttpRequest, task: str) -> JsonResponse:
    if task not in STREAMING_TASKS:
        return JsonResponse({"error": f"no such task {task!r}"}, status=404)
    run_id = runs.apply_async(task, kwargs=json.loads(request.body or b"{}"))
    request.session["runs"] = [*request.session.get("runs", []), run_id]
    return JsonResponse({"run_id": run_id, "stream": f"/streams/runs/{run_id}/stream"},
                        status=201)


@login_required
@require_POST
def cancel(request: HttpRequest, run_id: str) -> JsonResponse:
    if run_id not in request.session.get("runs", []):
        return JsonResponse({"error": "not your run"}, status=403)
    return JsonResponse({"cancelled": runs.cancel(run_id, "cancelled by the user")})
