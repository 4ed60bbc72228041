from django.urls import include, path

from loopline.api.views import api
from loopline.platform import views as platform_views

urlpatterns = [
    path("healthz", platform_views.healthz, name="healthz"),
    path("metrics", platform_views.metrics, name="metrics"),
    path("api/v1/", api.urls),
    path("", include("loopline.connector.urls_public")),
    path("", include("loopline.tracking.public_urls")),
    path("", include("loopline.forms.public_urls")),
    path("", include("loopline.emails.public_urls")),
    path("", include("loopline.ui_urls")),
]
