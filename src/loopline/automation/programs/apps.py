from django.apps import AppConfig


class ProgramsConfig(AppConfig):
    name = "loopline.automation.programs"
    label = "programs"
    verbose_name = "Engagement programs and assignment"
