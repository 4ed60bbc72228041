"""Routes of the signed-in user interface. Each app adds its own include here."""

from django.urls import include, path

from loopline.prospects import views as prospect_views

urlpatterns = [
    path("", prospect_views.home, name="home"),
    path("accounts/", include("loopline.accounts.urls")),
    path("prospects/", include("loopline.prospects.urls")),
    path("campaigns/", include("loopline.campaigns.urls")),
    path("reports/", include("loopline.campaigns.report_urls")),
    path("tracking/", include("loopline.tracking.urls")),
    path("forms/", include("loopline.forms.urls")),
    path("connector/", include("loopline.connector.urls")),
    path("emails/", include("loopline.emails.urls")),
    path("scoring/", include("loopline.qualification.urls")),
    path("automation/programs/", include("loopline.automation.programs.urls")),
    path("automation/", include("loopline.automation.urls")),
    path("notifications/", include("loopline.notifications.urls")),
]
