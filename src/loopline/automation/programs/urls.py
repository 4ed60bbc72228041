from django.urls import path

from . import views

app_name = "programs"

urlpatterns = [
    path("", views.program_index, name="index"),
    path("new/", views.program_edit, name="create"),
    path("groups/", views.group_index, name="groups"),
    path("groups/new/", views.group_edit, name="group_create"),
    path("groups/<int:group_id>/", views.group_edit, name="group_edit"),
    path("<int:pk>/", views.program_detail, name="detail"),
    path("<int:pk>/edit/", views.program_edit, name="edit"),
    path("<int:pk>/report/", views.program_report, name="report"),
    path("<int:pk>/start/", views.program_start, name="start"),
    path("<int:pk>/pause/", views.program_pause, name="pause"),
    path("<int:pk>/resume/", views.program_resume, name="resume"),
    path("<int:pk>/archive/", views.program_archive, name="archive"),
    path("<int:pk>/steps/new/", views.step_new, name="step_new"),
    path("<int:pk>/steps/<int:step_id>/", views.step_edit, name="step_edit"),
    path("<int:pk>/steps/<int:step_id>/delete/", views.step_delete, name="step_delete"),
    path("<int:pk>/steps/<int:step_id>/first/", views.step_first, name="step_first"),
]
