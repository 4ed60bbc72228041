"""Public email endpoints (unsubscribe, preference center, bounce webhooks): no login, rate limited."""

from django.urls import path  # noqa: F401

urlpatterns: list = []
