"""Connector background tasks (thin: they call the sync services) and their schedules."""

from __future__ import annotations

import datetime as dt

from loopline.platform.tasks import loopline_task

from .models import Connector


@loopline_task(retries=0)
def sync_tick() -> dict[str, int]:
    """Poll due connectors and drain their outboxes (scale mode; see ``sync.worker``)."""
    from .sync.worker import sync_tick as tick

    return tick()


@loopline_task(retries=2, backoff=10)
def poll_connector(connector_id: int) -> dict:
    from .sync import pull

    connector = Connector.objects.select_related("bu").filter(pk=connector_id, status=Connector.Status.ACTIVE).first()
    if connector is None:
        return {"skipped": "not active"}
    return pull.poll(connector).as_dict()


@loopline_task(retries=2, backoff=10)
def drain_outbox(connector_id: int) -> dict:
    from .sync import push

    connector = Connector.objects.select_related("bu").filter(pk=connector_id, status=Connector.Status.ACTIVE).first()
    if connector is None:
        return {"skipped": "not active"}
    return push.drain(connector).as_dict()


@loopline_task(retries=0)
def reconcile_connectors() -> dict[str, str]:
    """Compare both sides and repair what polling missed (issue #5; ``sync.reconcile``)."""
    from .sync import reconcile

    return reconcile.reconcile_due_connectors()


@loopline_task(retries=1, backoff=60)
def send_error_digests() -> dict[str, int]:
    from .sync import errors

    return errors.send_digests()


def register_schedules() -> None:
    from django.conf import settings

    from loopline.platform.scheduler import register_schedule

    from .sync import errors

    register_schedule("connector.error_digest", every=dt.timedelta(minutes=10), task=send_error_digests)
    hours = float(getattr(settings, "CONNECTOR_RECONCILE_HOURS", 24) or 0)
    if hours > 0:  # 0 turns the scheduled reconciliation off
        register_schedule("connector.reconcile", every=dt.timedelta(hours=hours), task=reconcile_connectors)
    # The embedded supervisor runs ``loopline connector worker`` (lower latency); scale mode ticks through Celery.
    if getattr(settings, "LOOPLINE_CONNECTOR_TICK", getattr(settings, "TASK_BACKEND", "") == "celery"):
        register_schedule("connector.sync_tick", every=dt.timedelta(seconds=2), task=sync_tick)
    del errors
