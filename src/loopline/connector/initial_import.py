"""The explicit initial import ([R10]: "automatically create prospects" is not retroactive — existing CRM records
arrive through this admin action). Starting it creates a :class:`~loopline.platform.models.Job` the UI polls; the
import loops belong to the sync core: :func:`import_from_crm` counts the CRM's leads and contacts (one composite call)
and takes the Bulk API 2.0 path (``connector.sync.bulk``) above the ``bulk_threshold`` setting, or when an
interrupted bulk import waits to be resumed; smaller orgs go through the REST loop (``connector.sync.pull``).
"""

from __future__ import annotations

import importlib
from urllib.parse import quote

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from loopline.accounts.access import Access
from loopline.platform import audit
from loopline.platform.models import Job
from loopline.platform.tasks import (
    Retry,
    advance,
    create_job,
    enqueue_on_commit,
    fail_job,
    finish_job,
    loopline_task,
    running_job,
)

from .models import Connector
from .salesforce.client import CrmApiError
from .services import settings_of
from .sync import bulk, pull
from .sync.bulk import BulkConflict, BulkDeferred

JOB_KIND = "connector.initial_import"
COUNTED_OBJECTS = ("Lead", "Contact")


def crm_counts(connector: Connector, client=None) -> dict[str, int]:
    """``SELECT COUNT() FROM Lead`` and ``… FROM Contact`` in one composite call (one API call, [R27])."""
    from .sync.context import shared_client

    client = client or shared_client(connector)
    version = connector.api_version
    answers = client.composite(
        [
            {
                "method": "GET",
                "referenceId": name,
                "url": f"/services/data/v{version}/query?q={quote(f'SELECT COUNT() FROM {name}')}",
            }
            for name in COUNTED_OBJECTS
        ]
    )
    counts = {}
    for sub in answers:
        body = sub.get("body")
        status = int(sub.get("httpStatusCode") or 500)
        if status >= 300 or not isinstance(body, dict):
            first = body[0] if isinstance(body, list) and body and isinstance(body[0], dict) else {}
            raise CrmApiError(
                str(first.get("errorCode") or f"HTTP_{status}"),
                f"Counting {sub.get('referenceId')} records failed: {first.get('message') or body!r:.200}",
                status,
            )
        counts[str(sub["referenceId"])] = int(body.get("totalSize") or 0)
    return counts


def import_from_crm(connector: Connector, job=None, *, client=None):
    """The initial import through the path that fits the backlog: Bulk API 2.0 above ``bulk_threshold`` records
    (default 2,000) or to resume an interrupted bulk import, otherwise the REST query loop. The job's total is the
    CRM's count, its progress the records applied."""
    counts = crm_counts(connector, client)
    total = sum(counts.values())
    if job is not None:
        advance(job, 0, total=total)
    if bulk.pending(connector) or total > int(settings_of(connector)["bulk_threshold"]):
        return bulk.bulk_initial_import(connector, job, client=client)
    return pull.initial_import(connector, job, client=client)


def _import_loop():
    """The sync core's import loop (a seam the task tests replace)."""
    return import_from_crm


def running_import(connector: Connector) -> Job | None:
    return (
        Job.objects.filter(
            bu_id=connector.bu_id, kind=JOB_KIND, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]
        )
        .order_by("-created_at")
        .first()
    )


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
    job = create_job(
        access.bu,
        JOB_KIND,
        title="Initial import from the CRM",
        created_by=access.user,
        params={"connector_id": connector.pk},
    )
    audit.record(
        "connector.initial_import",
        actor=access.user,
        bu=access.bu,
        obj=connector,
        summary=f"Initial import started (job {job.pk})",
    )
    enqueue_on_commit(run_initial_import, connector_id=connector.pk, job_id=job.pk)
    return job


# A conflict means another worker owns the bulk import's checkpoint: retrying would only start the import again.
@loopline_task(retries=6, backoff=30, give_up_on=(BulkConflict,))
def run_initial_import(connector_id: int, job_id: int) -> None:
    connector = Connector.objects.select_related("bu").filter(pk=connector_id).first()
    if connector is None:
        fail_job(job_id, "The connector was deleted")
        return
    loop = _import_loop()
    with running_job(job_id) as job:
        try:
            counters = loop(connector, job)
        except BulkDeferred as exc:
            # [R27] budget or limit stop: the checkpoint is kept; a later attempt resumes where this one stopped.
            raise Retry(exc.reason, delay=300) from exc
        as_dict = getattr(counters, "as_dict", None)
        if callable(as_dict):
            finish_job(job, result=as_dict())


def fetch_one(access: Access, connector: Connector, crm_id: str):
    """ "Fetch one CRM record now" on the status page: one lead/contact by id, paused or not ([R3]); audited.
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
    audit.record(
        "connector.fetch_record",
        actor=access.user,
        bu=access.bu,
        obj=connector,
        summary=f"{crm_id}: {result.message}"[:300],
    )
    return result
