"""Background work for lists and rules (thin: the logic lives in services)."""

from __future__ import annotations

import datetime as dt

from loopline.platform.tasks import enqueue_on_commit, loopline_task

from . import services


@loopline_task(retries=3, backoff=10)
def run_rule(rule_id: int, job_id: int | None = None) -> int:
    return services.run_rule(rule_id, job_id)


@loopline_task(retries=3, backoff=10)
def reevaluate_prospects(bu_id: int, prospect_ids: list[int]) -> None:
    services.reevaluate(bu_id, prospect_ids)


@loopline_task(retries=2, backoff=30)
def refresh_list(list_id: int) -> None:
    from .models import ProspectList

    pl = ProspectList.objects.select_related("bu").filter(pk=list_id).first()
    if pl is not None:
        services.refresh_list(pl)


@loopline_task(retries=2, backoff=30)
def refresh_dependents(bu_id: int, list_id: int) -> None:
    """Refresh the dynamic lists whose criteria use ``list_id`` (after a set-based change of its members)."""
    from . import criteria
    from .models import ProspectList

    for pl in ProspectList.objects.filter(bu_id=bu_id, kind=ProspectList.Kind.DYNAMIC).select_related("bu"):
        if list_id in criteria.referenced_lists(pl.criteria):
            services.refresh_list(pl)


@loopline_task(retries=1, backoff=60)
def refresh_dynamic_lists() -> int:
    return services.refresh_dynamic_lists()


def enqueue_reevaluate(bu_id: int, prospect_ids: list[int]) -> None:
    enqueue_on_commit(reevaluate_prospects, bu_id, [int(i) for i in prospect_ids])


def enqueue_refresh_dependents(bu_id: int, list_id: int) -> None:
    enqueue_on_commit(refresh_dependents, bu_id, list_id)


REFRESH_EVERY = dt.timedelta(hours=1)
