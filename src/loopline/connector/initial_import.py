"""The explicit initial import ([R10]: "automatically create prospects" is not retroactive — existing CRM records
arrive through this admin action). Starting it creates a :class:`~loopline.platform.models.Job` the UI polls; the
import loops belong to the sync core: :func:`import_from_crm` counts the CRM's leads and contacts (one composite call)
and takes the Bulk API 2.0 path (``connector.sync.bulk``) above the ``bulk_threshold`` setting, or when an
interrupted bulk import waits to be resumed; smaller orgs go through the REST loop (``connector.sync.pull``).

The initial export is the other direction: :func:`start_initial_export` queues one outbox entry per prospect that
exists in Loopline but has never synced ([R23]); the ordinary push sends them (Bulk API 2.0 above the threshold) and
the job follows the export's entries until none is pending.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from urllib.parse import quote

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, Exists, OuterRef
from django.utils import timezone

from loopline.accounts.access import Access
from loopline.platform import audit
from loopline.platform.models import Job
from loopline.platform.tasks import (
    Retry,
    advance,
    create_job,
    current_attempt,
    enqueue_on_commit,
    fail_job,
    finish_job,
    loopline_task,
    running_job,
    start_job,
)
from loopline.prospects.models import Prospect

from .models import Connector, CrmLink, OutboxEntry
from .salesforce.client import CrmApiError
from .services import settings_of
from .sync import bulk, pull
from .sync.bulk import BulkConflict, BulkDeferred

logger = logging.getLogger("loopline.connector.initial_import")

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


def _require_admin(access: Access, connector: Connector) -> None:
    if not access.can("connector.edit"):  # [R5]
        raise PermissionDenied("Only administrators can manage the CRM connector")
    if connector.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")


def _running(connector: Connector, kind: str) -> Job | None:
    return (
        Job.objects.filter(bu_id=connector.bu_id, kind=kind, status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
        .order_by("-created_at")
        .first()
    )


def running_import(connector: Connector) -> Job | None:
    return _running(connector, JOB_KIND)


@transaction.atomic
def start_initial_import(access: Access, connector: Connector) -> Job:
    _require_admin(access, connector)
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
    _require_admin(access, connector)
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


# --- Initial export: the prospects that already exist, Loopline → CRM ([R11], [R23]) --------------------------------

EXPORT_KIND = "connector.initial_export"
EXPORT_REASON = "initial_export"
EXPORT_CHUNK = 2000  # prospects per INSERT; each chunk commits with its checkpoint
EXPORT_RETRIES = 6
TICK_SECONDS = 10  # progress refresh while the outbox drains
PAUSED_TICK_SECONDS = 60  # nothing drains while the connector is paused: look less often
STALE_SECONDS = 3 * TICK_SECONDS  # no tick for this long: the progress page refreshes the job itself
FINISH_LEASE = dt.timedelta(minutes=10)
IDS_PER_QUERY = 200


def eligible_prospects(connector: Connector):
    """The prospects an initial export sends: the connector's BU, not in the recycle bin, not merged, not "do not sync"
    ([R15]), not CRM-deleted ([R31]), and never linked by this connector."""
    return Prospect.objects.filter(
        bu_id=connector.bu_id, is_deleted=False, merged_into__isnull=True, do_not_sync=False, crm_deleted=False,
    ).filter(~Exists(CrmLink.objects.filter(connector=connector, prospect_id=OuterRef("pk"))))


def running_export(connector: Connector) -> Job | None:
    return _running(connector, EXPORT_KIND)


@transaction.atomic
def start_initial_export(access: Access, connector: Connector) -> Job:
    """Send the prospects that already exist in Loopline to the CRM once: a job whose task queues one outbox entry per
    eligible prospect; the ordinary push sends them. Starting it while one runs returns the running one."""
    _require_admin(access, connector)
    if not connector.last_verified_at:
        raise ValidationError("Verify the connection before sending prospects to the CRM")
    # The connector's row lock serialises two admins pressing the button at once: one export per connector.
    Connector.objects.select_for_update().filter(pk=connector.pk).first()
    existing = running_export(connector)
    if existing is not None:
        return existing
    job = create_job(
        access.bu,
        EXPORT_KIND,
        title="Send prospects to the CRM",
        created_by=access.user,
        params={"connector_id": connector.pk, "tick": 0},
    )
    audit.record(
        "connector.initial_export",
        actor=access.user,
        bu=access.bu,
        obj=connector,
        summary=f"Sending existing prospects to the CRM (job {job.pk})",
    )
    enqueue_on_commit(run_initial_export, connector_id=connector.pk, job_id=job.pk)
    return job


def export_entries(connector: Connector, job: Job):
    """The outbox entries this export queued: only one export runs at a time, and its entries come after the outbox's
    last id when it started."""
    floor = int((job.params or {}).get("entry_floor") or 0)
    return OutboxEntry.objects.filter(connector=connector, reason=EXPORT_REASON, pk__gt=floor)


def queue_export(connector: Connector, job_id: int) -> None:
    """Queue one entry (all fields) per eligible prospect, in id order and chunks of :data:`EXPORT_CHUNK`. Each chunk
    commits together with its checkpoint (the last prospect id) under the job's row lock, so a worker killed half-way
    (or a second delivery of the task) resumes after the last committed chunk and never queues a prospect twice.
    Prospects with a pending entry already are left to it ([R23]: one pending change per prospect)."""
    while True:
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            params = dict(job.params or {})
            if params.get("queued_all") or job.is_finished:
                return
            now = timezone.now()
            fields: dict = {"heartbeat_at": now}
            if "last_prospect_id" not in params:  # the first chunk: count once, note where our entries start
                last_entry = OutboxEntry.objects.order_by("-pk").values_list("pk", flat=True).first()
                params.update(entry_floor=last_entry or 0, last_prospect_id=0, queued=0, already_queued=0)
                fields["total"] = eligible_prospects(connector).count()
            pending = OutboxEntry.objects.filter(
                connector=connector, prospect_id=OuterRef("pk"), status=OutboxEntry.Status.PENDING)
            chunk = list(
                eligible_prospects(connector).filter(pk__gt=params["last_prospect_id"]).order_by("pk")
                .annotate(has_pending=Exists(pending)).values_list("pk", "has_pending")[:EXPORT_CHUNK]
            )
            new = [pk for pk, has_pending in chunk if not has_pending]
            OutboxEntry.objects.bulk_create(
                [OutboxEntry(connector=connector, prospect_id=pk, changed_fields=["*"], reason=EXPORT_REASON,
                             next_run_at=now) for pk in new],
                batch_size=EXPORT_CHUNK,
            )
            if chunk:
                params["last_prospect_id"] = chunk[-1][0]
            params["queued"] += len(new)
            params["already_queued"] += len(chunk) - len(new)
            if len(chunk) < EXPORT_CHUNK:
                params["queued_all"] = True
                # What the chunks found: prospects linked or recycled meanwhile drop out, new ones come in.
                fields["total"] = params["queued"] + params["already_queued"]
            Job.objects.filter(pk=job_id).update(params=params, **fields)


def refresh_export(connector: Connector, job_id: int) -> bool:
    """Progress from the export's entries: done (+ the prospects that were already queued) and failed; the result
    counts linked, skipped and failed prospects. Once everything is queued and none of the entries is pending, the
    job finishes (created vs linked split, see :func:`_count_created`). Returns True when the job is finished."""
    job = Job.objects.get(pk=job_id)
    if job.is_finished:
        return True
    params = job.params or {}
    entries = export_entries(connector, job)
    counts = dict(entries.order_by().values_list("status").annotate(n=Count("id")))
    done_ids = entries.filter(status=OutboxEntry.Status.DONE).order_by().values("prospect_id")
    finished = done_ids.distinct().count()
    synced = (CrmLink.objects.filter(connector=connector, prospect_id__in=done_ids).order_by()
              .values("prospect_id").distinct().count())
    failed = int(counts.get(OutboxEntry.Status.FAILED, 0))
    result = {"queued": int(params.get("queued", 0)), "already_queued": int(params.get("already_queued", 0)),
              "synced": synced, "skipped": max(0, finished - synced), "failed": failed}
    Job.objects.filter(pk=job_id, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).update(
        done=int(counts.get(OutboxEntry.Status.DONE, 0)) + result["already_queued"], failed=failed,
        result=result, heartbeat_at=timezone.now())
    if not params.get("queued_all") or counts.get(OutboxEntry.Status.PENDING):
        return False
    with transaction.atomic():  # one finisher at a time (the task, or the page of a job whose ticks stopped)
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.is_finished:
            return True
        started = (job.params or {}).get("finishing_at")
        if started and timezone.now() - dt.datetime.fromisoformat(started) < FINISH_LEASE:
            return False
        Job.objects.filter(pk=job_id).update(params={**job.params, "finishing_at": timezone.now().isoformat()})
    created = _count_created(connector, done_ids, job.started_at or job.created_at)
    if created is None:
        result["note"] = "Created and linked are counted together: the CRM could not be asked which records are new."
    else:
        result = {**result, "created": created, "linked": synced - created}
        del result["synced"]
    finish_job(job_id, result=result)
    return True


def _count_created(connector: Connector, prospect_ids, since: dt.datetime) -> int | None:
    """How many of these prospects are linked to a record the connector user created since the export started (the
    others matched an existing record, [R9]). One SOQL query per 200 linked ids, five per composite call, counted in
    the API budget; None when the CRM cannot be asked now (90% of the API share used [R27], or an error)."""
    from .engine.model import id18, sobject_name
    from .sync import budget, runs
    from .sync.context import shared_client

    if not budget.decision(connector).allows_bulk:
        return None
    # A margin for the clocks of both sides: a record matched by email was not created by the connector user minutes
    # before the export began.
    stamp = (since - dt.timedelta(minutes=5)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    by_user = f" AND CreatedById = '{connector.connector_user_id}'" if connector.connector_user_id else ""
    created: set[int] = set()
    try:
        client = shared_client(connector)
        with runs.sync_run(connector, "initial_export", client=client) as run:
            owners: dict[str, int] = {}
            batches: dict[str, list[str]] = {}
            queries: list[str] = []

            def ask(final: bool = False) -> None:
                while len(queries) >= 5 or (final and queries):
                    subrequests = [
                        {"method": "GET", "referenceId": f"q{i}",
                         "url": f"/services/data/v{connector.api_version}/query?q={quote(soql)}"}
                        for i, soql in enumerate(queries[:5])]
                    del queries[:5]
                    for sub in client.composite(subrequests):
                        status = int(sub.get("httpStatusCode") or 500)
                        body = sub.get("body")
                        if status >= 300 or not isinstance(body, dict):
                            raise CrmApiError(f"HTTP_{status}", f"Reading new records failed: {body!r:.200}", status)
                        for record in body.get("records") or ():
                            pid = owners.get(id18(str(record.get("Id"))).lower())
                            if pid is not None:
                                created.add(pid)

            def flush(sobject: str) -> None:
                ids = batches.pop(sobject, [])
                if ids:
                    listed = ", ".join(f"'{i}'" for i in ids)
                    queries.append(f"SELECT Id FROM {sobject} WHERE Id IN ({listed}) AND CreatedDate >= {stamp}"
                                   f"{by_user}")

            links = (CrmLink.objects.filter(connector=connector, prospect_id__in=prospect_ids).order_by("pk")
                     .values_list("prospect_id", "crm_object", "crm_id"))
            for pid, crm_object, crm_id in links.iterator(chunk_size=2000):
                if not crm_id.isalnum():
                    continue
                owners[id18(crm_id).lower()] = pid
                sobject = sobject_name(crm_object)
                batches.setdefault(sobject, []).append(crm_id)
                if len(batches[sobject]) >= IDS_PER_QUERY:
                    flush(sobject)
                    ask()
            for sobject in list(batches):
                flush(sobject)
            ask(final=True)
            run.counters.created = len(created)
            run.counters.note = f"initial export: {len(created)} of the linked prospects created their CRM record"
    except Exception:  # the counts are a summary: the export itself is done either way
        logger.warning("connector %s: counting the records the initial export created failed", connector.pk,
                       exc_info=True)
        return None
    return len(created)


def refresh_stale_export(job: Job) -> Job:
    """The progress page of an export whose ticks stopped (a task backend that cannot defer, or a lost worker)
    refreshes the job itself, so it still finishes; otherwise the page only reads."""
    if (job.kind != EXPORT_KIND or job.status != Job.Status.RUNNING or not (job.params or {}).get("queued_all")
            or (job.heartbeat_at and (timezone.now() - job.heartbeat_at).total_seconds() < STALE_SECONDS)):
        return job
    connector = Connector.objects.filter(pk=int((job.params or {}).get("connector_id") or 0), bu_id=job.bu_id).first()
    if connector is not None:
        refresh_export(connector, job.pk)
        job.refresh_from_db()
    return job


def _next_tick(connector: Connector, job_id: int, tick: int) -> None:
    """Run the task again in a few seconds instead of holding a worker for the whole drain. The tick number makes a
    duplicated delivery harmless: only the first to move it on enqueues the next tick."""
    backend = run_initial_export.get_backend()
    if not backend.supports_defer:  # e.g. the immediate backend: the progress page refreshes the job instead
        return
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        params = dict(job.params or {})
        if int(params.get("tick") or 0) != tick or job.is_finished:
            return
        params["tick"] = tick + 1
        Job.objects.filter(pk=job_id).update(params=params)
    connector.refresh_from_db(fields=["status"])
    delay = TICK_SECONDS if connector.status == Connector.Status.ACTIVE else PAUSED_TICK_SECONDS
    run_initial_export.using(run_after=timezone.now() + dt.timedelta(seconds=delay)).enqueue(
        connector_id=connector.pk, job_id=job_id, tick=tick + 1)


@loopline_task(retries=EXPORT_RETRIES, backoff=30)
def run_initial_export(connector_id: int, job_id: int, tick: int = 0) -> None:
    """Queue the export (resuming from its checkpoint), refresh its progress, and come back in a few seconds until
    none of its entries is pending. The push does the sending; while the connector is paused the entries wait."""
    connector = Connector.objects.select_related("bu").filter(pk=connector_id).first()
    if connector is None:
        fail_job(job_id, "The connector was deleted")
        return
    job = Job.objects.filter(pk=job_id, kind=EXPORT_KIND).first()
    if job is None or job.is_finished or int((job.params or {}).get("tick") or 0) != tick:
        return  # finished, cancelled, or a stale duplicate of an earlier tick
    start_job(job_id)
    try:
        queue_export(connector, job_id)
        finished = refresh_export(connector, job_id)
    except Exception as exc:
        if current_attempt() > EXPORT_RETRIES:  # the last attempt: until then the job stays running
            fail_job(job_id, exc)
        raise
    if not finished:
        _next_tick(connector, job_id, tick)
