from django.urls import path

from . import prospect_views, views

app_name = "connector"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("create/", views.create, name="create"),
    path("certificate.crt", views.certificate, name="certificate"),
    path("certificate/regenerate/", views.regenerate_certificate, name="regenerate_certificate"),
    path("connection/", views.connection, name="connection"),
    path("verify/", views.verify, name="verify"),
    path("pause/", views.pause, name="pause"),
    path("resume/", views.resume, name="resume"),
    path("settings/", views.settings_page, name="settings"),
    path("settings/sharing/", views.sharing_rules, name="sharing_rules"),
    path("mapping/", views.mapping, name="mapping"),
    path("mapping/add/", views.mapping_add, name="mapping_add"),
    path("mapping/<int:mapping_id>/behaviour/", views.mapping_behaviour, name="mapping_behaviour"),
    path("mapping/<int:mapping_id>/remove/", views.mapping_remove, name="mapping_remove"),
    path("status/", views.status, name="status"),
    path("status/panel/", views.status_panel, name="status_panel"),
    path("status/fetch/", views.fetch_record, name="fetch_record"),
    path("errors/", views.errors, name="errors"),
    path("errors/retry-all/", views.errors_retry_all, name="errors_retry_all"),
    path("errors/<int:error_id>/retry/", views.error_retry, name="error_retry"),
    path("errors/<int:error_id>/dismiss/", views.error_dismiss, name="error_dismiss"),
    path("import/", views.import_start, name="import_start"),
    path("import/<int:job_id>/", views.import_job, name="import_job"),
    path("import/<int:job_id>/status/", views.import_status, name="import_status"),
    path("export/", views.export_start, name="export_start"),
    path("export/<int:job_id>/", views.export_job, name="export_job"),
    path("export/<int:job_id>/status/", views.export_status, name="export_status"),
    path("metadata/", views.metadata_page, name="metadata"),
    path("metadata/refresh/", views.metadata_refresh, name="metadata_refresh"),
    path("metadata/roles/", views.metadata_roles, name="metadata_roles"),
    path("prospects/<int:pk>/sync/", prospect_views.sync_prospect, name="sync_prospect"),
    path("prospects/<int:pk>/allow-recreate/", prospect_views.allow_recreate, name="allow_recreate"),
]
