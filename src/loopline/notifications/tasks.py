"""Thin task wrappers and schedules: the work is in services and webhooks."""

from __future__ import annotations

import datetime as dt

from loopline.platform.tasks import loopline_task


@loopline_task(retries=4, backoff=30)
def send_notification_email(to: str, subject: str, text: str) -> None:
    from .services import send_system_email

    send_system_email(to, subject, text)


@loopline_task(retries=0)
def deliver_webhooks(max_batches: int = 20) -> int:
    """Send due webhook deliveries; stops after ``max_batches`` so one task stays short (the sweep continues)."""
    from . import webhooks

    total = 0
    for _ in range(max_batches):
        n = webhooks.deliver_due()
        total += n
        if not n:
            break
    return total


@loopline_task(retries=2, backoff=300)
def send_daily_digests() -> int:
    from . import services

    return services.send_digests()


@loopline_task(retries=0)
def prune_notifications() -> int:
    from . import services

    return services.prune()


def register_schedules() -> None:
    from loopline.platform.scheduler import register_schedule

    register_schedule("notifications.webhook_sweep", every=dt.timedelta(minutes=1), task=deliver_webhooks)
    # 07:00 UTC every day.
    register_schedule("notifications.daily_digest", every=dt.timedelta(days=1), offset=dt.timedelta(hours=7),
                      task=send_daily_digests)
    register_schedule("notifications.prune", every=dt.timedelta(days=1), offset=dt.timedelta(hours=3),
                      task=prune_notifications)
