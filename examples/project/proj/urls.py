from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("chat/", include("chat.urls")),
    # GET streams/runs/<run_id>/stream (SSE, resumable with Last-Event-ID) and .../status.
    path("streams/", include("streaming.django.urls")),
]
