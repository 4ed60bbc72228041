from django.apps import AppConfig


class ConnectorConfig(AppConfig):
    name = "loopline.connector"
    label = "connector"
    verbose_name = "CRM connector"

    def ready(self) -> None:
        from . import outbox

        outbox.connect()
