from django.urls import path

from . import views

app_name = "qualification"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("rules/", views.rules_edit, name="rules"),
    path("jobs/<int:job_id>/", views.job_detail, name="job"),
    path("jobs/<int:job_id>/status/", views.job_status, name="job_status"),
    path("categories/new/", views.category_edit, name="category_create"),
    path("categories/<int:pk>/", views.category_edit, name="category_edit"),
    path("categories/<int:pk>/delete/", views.category_delete, name="category_delete"),
    path("grading/new/", views.profile_edit, name="profile_create"),
    path("grading/<int:pk>/", views.profile_edit, name="profile_edit"),
    path("prospects/<int:prospect_id>/", views.prospect_grade, name="prospect"),
    path("prospects/<int:prospect_id>/thumbs/", views.prospect_thumbs, name="thumbs"),
    path("prospects/<int:prospect_id>/profile/", views.prospect_profile, name="prospect_profile"),
]
