from django.apps import AppConfig


class QualificationConfig(AppConfig):
    name = "loopline.qualification"
    label = "qualification"
    verbose_name = "Scoring and grading"
