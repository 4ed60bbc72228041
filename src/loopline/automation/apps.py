from django.apps import AppConfig


class AutomationConfig(AppConfig):
    name = "loopline.automation"
    label = "automation"
    verbose_name = "Lists and automation"
