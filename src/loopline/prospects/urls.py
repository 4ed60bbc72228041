from django.urls import path

from . import import_views, views

app_name = "prospects"

urlpatterns = [
    path("", views.prospect_list, name="list"),
    path("new/", views.prospect_create, name="create"),
    path("<int:pk>/", views.prospect_detail, name="detail"),
    path("<int:pk>/edit/", views.prospect_edit, name="edit"),
    path("<int:pk>/timeline/", views.prospect_timeline, name="timeline"),
    path("<int:pk>/tags/", views.tag_add, name="tag_add"),
    path("<int:pk>/tags/<int:tag_id>/remove/", views.tag_remove, name="tag_remove"),
    path("<int:pk>/assign/", views.prospect_assign, name="assign"),
    path("<int:pk>/star/", views.prospect_star, name="star"),
    path("<int:pk>/recycle/", views.prospect_recycle, name="recycle"),
    path("<int:pk>/merge/", views.prospect_merge, name="merge"),
    path("<int:pk>/merge/<int:other_pk>/", views.prospect_merge_confirm, name="merge_confirm"),
    path("recycle-bin/", views.recycle_bin, name="recycle_bin"),
    path("recycle-bin/<int:pk>/restore/", views.prospect_undelete, name="undelete"),
    path("recycle-bin/<int:pk>/delete/", views.prospect_delete_permanently, name="delete_permanently"),
    path("fields/", views.custom_fields, name="custom_fields"),
    path("fields/new/", views.custom_field_form, name="custom_field_create"),
    path("fields/<int:field_id>/", views.custom_field_form, name="custom_field_edit"),
    path("fields/<int:field_id>/delete/", views.custom_field_delete, name="custom_field_delete"),
    # Import and export (import_views.py)
    path("import/", import_views.import_start, name="import"),
    path("import/<int:job_id>/", import_views.import_job, name="import_job"),
    path("import/<int:job_id>/map/", import_views.import_map, name="import_map"),
    path("import/<int:job_id>/status/", import_views.import_status, name="import_status"),
    path("import/<int:job_id>/rejects.csv", import_views.import_rejects, name="import_rejects"),
    path("export.csv", import_views.prospect_export, name="export"),
]
