from django.urls import path

from . import views

app_name = "forms"

urlpatterns = [
    path("", views.form_list, name="list"),
    path("new/", views.form_edit, name="create"),
    path("<int:pk>/", views.form_edit, name="edit"),
    path("<int:pk>/report/", views.form_report, name="report"),
    path("handlers/<int:pk>/report/", views.handler_report, name="handler_report"),
    path("pages/<int:pk>/report/", views.page_report, name="page_report"),
    path("handlers/new/", views.handler_edit, name="handler_create"),
    path("handlers/<int:pk>/", views.handler_edit, name="handler_edit"),
    path("pages/new/", views.page_edit, name="page_create"),
    path("pages/<int:pk>/", views.page_edit, name="page_edit"),
]
