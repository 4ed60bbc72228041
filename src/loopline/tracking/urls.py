from django.urls import path

from . import views

app_name = "tracking"

urlpatterns = [
    path("", views.tracking_settings, name="settings"),
    path("visitors/", views.visitor_list, name="visitors"),
    path("visitors/<int:pk>/", views.visitor_detail, name="visitor"),
    path("redirects/", views.redirect_list, name="redirects"),
    path("redirects/new/", views.redirect_edit, name="redirect_create"),
    path("redirects/<int:pk>/", views.redirect_edit, name="redirect_edit"),
    path("redirects/<int:pk>/report/", views.redirect_report, name="redirect_report"),
    path("files/", views.file_list, name="files"),
    path("files/new/", views.file_edit, name="file_create"),
    path("files/<int:pk>/", views.file_edit, name="file_edit"),
    path("files/<int:pk>/report/", views.file_report, name="file_report"),
]
