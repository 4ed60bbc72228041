from django.urls import path

from . import views

app_name = "emails"

urlpatterns = [
    path("", views.email_list, name="list"),
    path("new/", views.email_edit, name="create"),
    path("<int:pk>/", views.email_edit, name="edit"),
    path("<int:pk>/preview/", views.email_preview, name="preview"),
    path("<int:pk>/send/", views.email_send, name="send"),
    path("sends/<int:pk>/", views.send_detail, name="send_detail"),
    path("campaigns/<int:campaign_id>/", views.campaign_report, name="campaign_report"),
    path("inbox/", views.inbox, name="inbox"),
    path("inbox/<int:pk>/", views.inbox_message, name="inbox_message"),
    path("one-to-one/<int:prospect_id>/", views.one_to_one, name="one_to_one"),
    path("dynamic/", views.dynamic_list, name="dynamic_list"),
    path("dynamic/new/", views.dynamic_edit, name="dynamic_create"),
    path("dynamic/<int:pk>/", views.dynamic_edit, name="dynamic_edit"),
    path("dynamic/<int:pk>/preview/", views.dynamic_preview, name="dynamic_preview"),
    path("dynamic/<int:pk>/delete/", views.dynamic_delete, name="dynamic_delete"),
]
