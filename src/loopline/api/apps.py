from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "loopline.api"
    label = "api"
    verbose_name = "Public REST API"
