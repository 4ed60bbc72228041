"""Public (no login) tracking routes, mounted at the site root by config/urls.py."""

from django.urls import path, re_path

from . import views_public as v

urlpatterns = [
    path("t/ping", v.ping, name="tracking_ping"),
    path("t/<str:key>/tracker.js", v.tracker_js, name="tracker_js"),
    path("t/<str:key>/hit", v.hit, name="tracking_hit"),
    re_path(r"^e/o/(?P<token>[^/]*)\.gif$", v.email_open, name="email_open"),
    path("e/c/<str:token>", v.email_click, name="email_click"),
    path("r/<str:key>", v.custom_redirect, name="custom_redirect"),
    path("file/<str:key>/", v.tracked_file, name="tracked_file"),
    path("file/<str:key>/<str:filename>", v.tracked_file, name="tracked_file_named"),
]
