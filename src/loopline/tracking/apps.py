import datetime as dt

from django.apps import AppConfig


class TrackingConfig(AppConfig):
    name = "loopline.tracking"
    label = "tracking"
    verbose_name = "Tracking"

    def ready(self) -> None:
        from loopline.platform.scheduler import register_schedule

        from .tasks import ingest_tracking_hits, resolve_visitor_hostnames, sweep_rate_limits

        # The dedicated ingester (``loopline tracking-ingest``) keeps up in real time; this is the safety net.
        register_schedule("tracking.ingest", every=dt.timedelta(minutes=1), task=ingest_tracking_hits)
        register_schedule("tracking.sweep_rate_limits", every=dt.timedelta(minutes=10), task=sweep_rate_limits)
        register_schedule("tracking.resolve_visitor_hostnames", every=dt.timedelta(minutes=5),
                          task=resolve_visitor_hostnames)
