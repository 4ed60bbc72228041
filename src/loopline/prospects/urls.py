from django.urls import path

from . import views

app_name = "prospects"

urlpatterns = [
    path("", views.prospect_list, name="list"),
]
