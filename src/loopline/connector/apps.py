from django.apps import AppConfig


class ConnectorConfig(AppConfig):
    name = "loopline.connector"
    label = "connector"
    verbose_name = "CRM connector"

    def ready(self) -> None:
        from . import outbox

        outbox.connect()

        from . import metadata

        metadata.register_schedules()  # metadata sync every 15 minutes, paused or not ([R2])

        from . import tasks

        tasks.register_schedules()  # error digest; the sync tick in scale (Celery) mode

        from .sync import deletions

        deletions.register_actions()  # "allow CRM record to be recreated" ([R31])
        _register_worker_child()


def _register_worker_child() -> None:
    """Embedded mode: ``loopline run`` supervises the connector sync loop (``loopline connector worker``)."""
    from django.conf import settings

    if getattr(settings, "TASK_BACKEND", "") == "celery":
        return
    from loopline.platform.management.commands.run import EXTRA_CHILDREN, ChildSpec

    if not any(child.name == "connector-worker" for child in EXTRA_CHILDREN):
        EXTRA_CHILDREN.append(ChildSpec("connector-worker", ["loopline", "connector", "worker"]))
