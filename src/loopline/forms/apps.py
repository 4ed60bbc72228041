from django.apps import AppConfig


class FormsConfig(AppConfig):
    name = "loopline.forms"
    label = "loopline_forms"
    verbose_name = "Forms and landing pages"
