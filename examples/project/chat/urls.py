from django.urls import path

from . import views

urlpatterns = [
    path("runs/<str:task>", views.start, name="start_run"),
    path("runs/<str:run_id>/cancel", views.cancel, name="cancel_run"),
]
