from django.urls import path

from . import views

app_name = "notifications"

urlpatterns = [
    path("", views.index, name="index"),
    path("read/", views.mark_all_read, name="mark_all_read"),
    path("live/", views.live, name="live"),
    path("preferences/", views.preferences, name="preferences"),
    path("webhooks/", views.webhook_list, name="webhooks"),
    path("webhooks/new/", views.webhook_edit, name="webhook_create"),
    path("webhooks/<int:pk>/", views.webhook_detail, name="webhook"),
    path("webhooks/<int:pk>/edit/", views.webhook_edit, name="webhook_edit"),
    path("webhooks/<int:pk>/action/", views.webhook_action, name="webhook_action"),
    path("webhooks/<int:pk>/deliveries/<int:delivery_id>/redeliver/", views.delivery_redeliver, name="redeliver"),
]
