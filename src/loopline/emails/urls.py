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
]
