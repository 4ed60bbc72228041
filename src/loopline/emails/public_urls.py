"""Public email endpoints (unsubscribe, preference center, bounce webhooks): no login, rate limited."""

from django.urls import include, path

from . import views_public as v

urlpatterns: list = [
    path("u/<str:token>", v.unsubscribe, name="email_unsubscribe"),
    path("email/preferences/<str:token>", v.preferences, name="email_preferences"),
    path("email/confirm/<str:token>", v.confirm, name="email_confirm"),
    # Provider webhooks (delivered, bounced, complained, opened, clicked) normalised by django-anymail ([M29]).
    path("email/anymail/", include("anymail.urls")),
]
