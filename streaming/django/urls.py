"""``path("streams/", include("streaming.django.urls"))``: a run's stream and status."""

from django.urls import path

from . import views

app_name = "streaming"
urlpatterns = [
    path("runs/<str:run_id>/stream", views.stream, name="run_stream"),
    path("runs/<str:run_id>/status", views.status, name="run_status"),
]
