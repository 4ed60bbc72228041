from django.urls import path

from . import views

app_name = "automation"

urlpatterns = [
    path("criteria/builder/", views.criteria_builder, name="criteria_builder"),
    path("lists/", views.list_index, name="list_index"),
    path("lists/new/", views.list_edit, name="list_create"),
    path("lists/add-prospects/", views.add_filtered, name="add_filtered"),
    path("lists/<int:pk>/", views.list_detail, name="list_detail"),
    path("lists/<int:pk>/edit/", views.list_edit, name="list_edit"),
    path("lists/<int:pk>/refresh/", views.list_refresh, name="list_refresh"),
    path("lists/<int:pk>/delete/", views.list_delete, name="list_delete"),
    path("lists/<int:pk>/members/add/", views.list_members_add, name="list_members_add"),
    path("lists/<int:pk>/members/remove/", views.list_members_remove, name="list_members_remove"),
    path("prospects/<int:prospect_id>/lists/", views.prospect_lists, name="prospect_lists"),
    path("rules/", views.rule_index, name="rule_index"),
    path("rules/new/", views.rule_edit, name="rule_create"),
    path("rules/<int:pk>/", views.rule_detail, name="rule_detail"),
    path("rules/<int:pk>/edit/", views.rule_edit, name="rule_edit"),
    path("rules/<int:pk>/progress/", views.rule_progress, name="rule_progress"),
    path("rules/<int:pk>/resume/", views.rule_resume, name="rule_resume"),
    path("rules/<int:pk>/pause/", views.rule_pause, name="rule_pause"),
    path("rules/<int:pk>/delete/", views.rule_delete, name="rule_delete"),
]
