"""Thin task wrappers: the work is in services."""

from __future__ import annotations

from loopline.platform.tasks import loopline_task


@loopline_task(retries=3, backoff=10)
def rescore(job_id: int) -> None:
    from . import services

    services.run_rescore(job_id)


@loopline_task(retries=3, backoff=10)
def regrade(job_id: int) -> None:
    from . import services

    services.run_regrade(job_id)


@loopline_task(retries=3, backoff=10)
def regrade_prospects(bu_id: int, prospect_ids: list[int]) -> None:
    from . import services

    services.regrade_ids(bu_id, prospect_ids)
