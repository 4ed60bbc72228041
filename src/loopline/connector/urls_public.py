"""Public (token-authenticated) connector endpoints. Included from ``config/urls.py``."""

from django.urls import path

from . import public_views

app_name = "connector_public"

urlpatterns = [
    path("connector/<slug:bu_slug>/send-to-loopline", public_views.send_to_loopline, name="send_to_loopline"),
]
