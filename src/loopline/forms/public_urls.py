"""Public (no login) form routes, mounted at the site root by config/urls.py."""

from django.urls import path

from . import views_public as v

urlpatterns = [
    path("f/<str:key>/", v.form_page, name="public_form"),
    path("f/<str:key>/embed.js", v.embed_js, name="form_embed_js"),
    path("fh/<str:key>", v.form_handler, name="form_handler_post"),
    path("lp/<str:key>/", v.landing_page, name="public_landing_page"),
]
