"""Reporting background tasks (thin: they call services) and their schedules."""

from __future__ import annotations

import datetime as dt

from loopline.platform.tasks import loopline_task


@loopline_task(retries=1, backoff=60)
def refresh_reporting() -> dict[str, int]:
    """Link contact roles, catch MQL/SQL no event announced, rebuild the daily counters."""
    from . import services

    return services.refresh_all()


@loopline_task(retries=3, backoff=10)
def check_lifecycle(bu_id: int, prospect_ids: list[int], created_ids: list[int]) -> None:
    """Lifecycle stages (MQL/SQL) of a large bulk change, off the request or load that made it."""
    from . import services

    services.check_lifecycle(bu_id, prospect_ids, created_ids)


@loopline_task(retries=0)
def send_scheduled_reports() -> int:
    from . import services

    return services.send_due_reports()


@loopline_task(retries=1, backoff=60)
def recompute_attribution(bu_id: int) -> dict:
    from . import services

    return services.recompute_attribution(bu_id)


def register_schedules() -> None:
    from loopline.platform.scheduler import register_schedule

    register_schedule("reports.refresh", every=dt.timedelta(minutes=15), task=refresh_reporting,
                      offset=dt.timedelta(minutes=4))
    register_schedule("reports.send_scheduled", every=dt.timedelta(minutes=5), task=send_scheduled_reports)
