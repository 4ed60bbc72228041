from django.apps import AppConfig


class ProspectsConfig(AppConfig):
    name = "loopline.prospects"
    label = "prospects"
    verbose_name = "Prospects"
