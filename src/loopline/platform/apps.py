from django.apps import AppConfig


class PlatformConfig(AppConfig):
    name = "loopline.platform"
    label = "platform"
    verbose_name = "Platform"

    def ready(self) -> None:
        from .scheduler import register_builtin_schedules

        register_builtin_schedules()
