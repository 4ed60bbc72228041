from django.urls import path

from . import report_views as views

app_name = "reports"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("roi/", views.roi, name="roi"),
    path("roi/campaign/<int:pk>/", views.roi_campaign, name="roi_campaign"),
    path("roi/unattributed/", views.roi_campaign, name="roi_unattributed"),
    path("lifecycle/", views.lifecycle, name="lifecycle"),
    path("lifecycle/<slug:stage>/", views.lifecycle_stage, name="lifecycle_stage"),
    path("opportunities/", views.opportunities, name="opportunities"),
    path("opportunities/<int:pk>/", views.opportunity_detail, name="opportunity"),
    path("schedules/", views.schedules, name="schedules"),
    path("schedules/<int:pk>/delete/", views.schedule_delete, name="schedule_delete"),
    path("settings/", views.report_settings, name="settings"),
]
