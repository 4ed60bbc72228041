"""The explicit initial import ([R10]: "automatically create prospects" is not retroactive — existing CRM records
arrive through this admin action). Starting it creates a :class:`~loopline.platform.models.Job` the UI polls; the
import loop itself belongs to the sync core (``connector.sync.pull.initial_import(connector, job)``).
"""

from __future__ import annotations

import importlib

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from loopline.accounts.access import Access
from loopline.platform import audit
from loopline.platform.models import Job
from loopline.platform.tasks import (
    create_job,
    enqueue_on_commit,
    fail_job,
    finish_job,
    loopline_task,
    running_job,
)

from .models import Connector

JOB_KIND = "connector.initial_import"


def _import_loop():
    """The sync core's import loop, or ``None`` while it is not installed."""
    try:
        module = importlib.import_module("loopline.connector.sync.pull")
    except ImportError:
        return None
    return getattr(module, "initial_import", None)


def running_import(connector: Connector) -> Job | None:
    return (Job.objects.filter(bu_id=connector.bu_id, kind=JOB_KIND,
                               status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).order_by("-created_at").first())


@transaction.atomic
def start_initial_import(access: Access, connector: Connector) -> Job:
    if not access.can("connector.edit"):  # [R5]
        raise PermissionDenied("Only administrators can manage the CRM connector")
    if connector.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")
    if not connector.last_verified_at:
        raise ValidationError("Verify the connection before importing from the CRM")
    existing = running_import(connector)
    if existing is not None:
        return existing
    job = create_job(access.bu, JOB_KIND, title="Initial import from the CRM", created_by=access.user,
                     params={"connector_id": connector.pk})
    audit.record("connector.initial_import", actor=access.user, bu=access.bu, obj=connector,
                 summary=f"Initial import started (job {job.pk})")
    enqueue_on_commit(run_initial_import, connector_id=connector.pk, job_id=job.pk)
    return job


@loopline_task(retries=2, backoff=30)
def run_initial_import(connector_id: int, job_id: int) -> None:
    connector = Connector.objects.select_related("bu").filter(pk=connector_id).first()
    if connector is None:
        fail_job(job_id, "The connector was deleted")
        return
    loop = _import_loop()
    if loop is None:
        fail_job(job_id, "The initial import is not available in this version (connector sync core missing).")
        return
    with running_job(job_id) as job:
        counters = loop(connector, job)
        as_dict = getattr(counters, "as_dict", None)
        if callable(as_dict):
            finish_job(job, result=as_dict())


def fetch_one(access: Access, connector: Connector, crm_id: str):
    """"Fetch one CRM record now" on the status page: one lead/contact by id, paused or not ([R3]); audited.
    Returns the sync core's ``ManualResult`` (``ok``, ``message``, ``prospect_id``)."""
    if not access.can("connector.edit"):  # [R5]
        raise PermissionDenied("Only administrators can manage the CRM connector")
    if connector.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")
    crm_id = (crm_id or "").strip()
    if len(crm_id) not in (15, 18) or not crm_id.isalnum():
        raise ValidationError("Enter a lead or contact id (15 or 18 letters and digits, e.g. 00Q… or 003…)")
    manual = importlib.import_module("loopline.connector.sync.manual")
    result = manual.send_to_loopline(connector, crm_id)
    audit.record("connector.fetch_record", actor=access.user, bu=access.bu, obj=connector,
                 summary=f"{crm_id}: {result.message}"[:300])
    return result
