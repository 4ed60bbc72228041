import datetime as dt

from django.apps import AppConfig


class TrackingConfig(AppConfig):
    name = "loopline.tracking"
    label = "tracking"
    verbose_name = "Tracking"

    def ready(self) -> None:
        from loopline.platform.scheduler import register_schedule

        from .tasks import ingest_tracking_hits

        # The dedicated ingester (``loopline tracking-ingest``) keeps up in real time; this is the safety net.
        register_schedule("tracking.ingest", every=dt.timedelta(minutes=1), task=ingest_tracking_hits)
