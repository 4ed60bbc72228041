from django.apps import AppConfig


class PlatformConfig(AppConfig):
    name = "loopline.platform"
    label = "platform"
    verbose_name = "Platform"
