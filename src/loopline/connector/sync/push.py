"""Loopline → CRM ([R9], [R11], [R15], [R20], [R23], [R25], [R26], [R31]).

:func:`drain` claims due outbox entries (``claim_due``: ``SKIP LOCKED`` on PostgreSQL), builds each prospect's
*current* snapshot (entries only say "this prospect changed"; the values are read at drain time, so several changes
coalesce for free), fetches the CRM records the prospects may sync with — linked ids, and for unlinked prospects the
records with their email — in composite calls of five queries, and decides per prospect
(:func:`engine.plan_prospect_push`): update the linked/matched record, create one (assigned prospects only, [R11]),
or skip with a reason. Outgoing values are checked against the describe ([R20]); a value the CRM would reject goes
to the error queue, not to the CRM. The writes go through sObject Collections packed five to a composite call (one
API call per up to 1,000 records) and map back per record: one bad record never blocks the others.

Idempotency ([R25]) — two guards. **Creates are upserts on an external id** when the org has the field named by the
``external_id_field`` setting (default ``Loopline_Id__c``: a unique external-id text field on Lead/Contact): every
record Loopline creates carries ``LL-<connector hash>-<prospect id>``, so a create re-sent after a lost answer or a
worker killed between the CRM's answer and our commit finds its own record and updates it — prospects without an
email included. And **before creating, re-check by email**: unlinked prospects are always looked up by email in the
CRM first (the same query [R9] matching needs), so even without the field a create that reached the CRM is found on
the re-run and linked instead of created again (then only email-less prospects stay exposed to that millisecond
window — docs/connector.md tells admins to add the field). Two drains never work on one prospect at once: a drain
drops prospects with another entry under lease.

Marketing data sharing ([R34], [R35]): the candidate queries select the BU's rule field, and
:func:`sharing.screen_candidates` drops the records the BU does not see or another BU on the org syncs: for the push
they do not exist, so an unlinked prospect is created anew (by the connector user, hence visible) or skipped.

Bulk API 2.0 ([R23]): when more entries are due than the ``bulk_threshold`` setting, :func:`drain` claims up to
``bulk.PUSH_ROWS`` of them, plans them exactly as above, and :func:`bulk.push_jobs` writes updates and (external-id)
creates through ingest jobs; their results go through the same :func:`_outcome` bookkeeping. Entries stay leased
until their results are applied ([R25]); bulk work waits at 90% of the API share ([R27]).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from loopline.automation.programs.selectors import pending_crm_assignments
from loopline.automation.programs.services import crm_assignments_done
from loopline.platform.queues import backoff_delay, claim_due
from loopline.prospects import services as prospect_services
from loopline.prospects.models import Prospect

from .. import sharing
from ..engine import (
    BatchLimits,
    CrmRecord,
    OutboxItem,
    RunCounters,
    SkipReason,
    WriteOp,
    creation_payload,
    plan_prospect_push,
    plan_push,
    record_hash,
    resolve,
    validate_payload,
    written_hash,
)
from ..engine.batching import WriteOutcome, composite_outcomes
from ..engine.capture import select_fields
from ..engine.creation import PushAction
from ..engine.errors import CrmError, ErrorCategory, classify
from ..engine.model import CrmObject, id18, sobject_name
from ..engine.validate import Operation
from ..metrics import OUTBOX_BACKLOG, SYNC_LATENCY, SYNCED_RECORDS
from ..models import Connector, CrmDescribe, CrmLink, OutboxEntry, SyncError
from ..salesforce.auth import AuthError
from ..salesforce.client import CrmApiError
from ..services import settings_of
from . import budget, bulk, errors, fastwrite, runs
from .context import SyncContext, shared_client
from .snapshots import agreed_baseline, owner_ids, settle_pending_write, snapshot, split_writes, state_of

logger = logging.getLogger("loopline.connector.push")

BATCH = 1000
LEASE_SECONDS = 300
IDS_PER_QUERY = 200
TO_CRM = SyncError.Direction.TO_CRM


class BudgetPaused(Exception):
    """``REQUEST_LIMIT_EXCEEDED``: the connector is paused until the window rolls ([R27])."""


def bulk_threshold(settings: dict[str, Any]) -> int:
    try:
        return max(0, int(settings.get("bulk_threshold") or 0)) or 2000
    except (TypeError, ValueError):
        return 2000


def use_bulk(backlog: int, ctx: SyncContext) -> bool:
    """Bulk API 2.0 ingest jobs when more than ``bulk_threshold`` entries are due ([R23])."""
    return backlog > bulk_threshold(ctx.raw_settings)


def _due_upto(connector: Connector, cap: int) -> int:
    """Due pending entries, counted up to ``cap`` (a bounded count: the outbox may hold millions)."""
    return OutboxEntry.objects.filter(connector=connector, status=OutboxEntry.Status.PENDING,
                                      next_run_at__lte=timezone.now())[:cap].count()


def _extend_lease(entry_ids: Sequence[int]) -> None:
    """Keep a bulk drain's entries claimed while its jobs run; only leases still held are extended."""
    now = timezone.now()
    for i in range(0, len(entry_ids), 5000):
        OutboxEntry.objects.filter(pk__in=entry_ids[i:i + 5000], status=OutboxEntry.Status.PENDING,
                                   locked_until__gt=now).update(locked_until=now + dt.timedelta(seconds=LEASE_SECONDS))


# --- Fetching CRM candidates ------------------------------------------------------------------------------------


def run_queries(ctx: SyncContext, queries: Sequence[tuple[str, str]]) -> dict[str, list[dict]]:
    """Run SOQL queries five to a composite call (one API call each); follow ``nextRecordsUrl`` pages."""
    out: dict[str, list[dict]] = {}
    for i in range(0, len(queries), 5):
        chunk = queries[i:i + 5]
        body = {"allOrNone": False, "compositeRequest": [
            {"method": "GET", "url": f"/services/data/v{ctx.api_version}/query?q={_quote(soql)}", "referenceId": ref}
            for ref, soql in chunk]}
        response = ctx.client.restful("composite", method="POST", json=body)
        for sub in response.get("compositeResponse") or ():
            ref = str(sub.get("referenceId"))
            status = int(sub.get("httpStatusCode") or 500)
            body_ = sub.get("body")
            if status >= 300:
                first = body_[0] if isinstance(body_, list) and body_ else {}
                raise CrmApiError(str(first.get("errorCode") or f"HTTP_{status}"),
                                  str(first.get("message") or "query failed"), status)
            records = list(body_.get("records") or [])
            page = body_
            while not page.get("done", True) and page.get("nextRecordsUrl"):
                page = ctx.client.restful(page["nextRecordsUrl"].split(f"/v{ctx.api_version}/", 1)[-1])
                records.extend(page.get("records") or [])
            out[ref] = records
    return out


def _quote(soql: str) -> str:
    from urllib.parse import quote

    return quote(soql, safe="")


def _soql_list(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)


def fetch_candidates(ctx: SyncContext, snaps: Sequence) -> dict[Any, list[CrmRecord]]:
    """Per prospect id, the CRM records it may sync with: its linked records and (unlinked, or unique-email mode)
    the live leads/contacts with its email."""
    linked: dict[str, set[str]] = defaultdict(set)
    emails: set[str] = set()
    person_accounts = ctx.person_accounts
    for s in snaps:
        if s.crm_contact_id:
            linked[CrmObject.CONTACT.value].add(s.crm_contact_id)
            if person_accounts and s.crm_account_id:
                # [R14] the contact may be a person contact: the person account is the record to sync with.
                linked[CrmObject.PERSON_ACCOUNT.value].add(s.crm_account_id)
        elif s.crm_lead_id:
            linked[CrmObject.LEAD.value].add(s.crm_lead_id)
        if not s.is_linked and s.email:
            emails.add(s.email)

    def soql(object_type: str, key: str, values: list[str]) -> str:
        # The rule field too: the push must judge candidates by this BU's sharing rule ([R35]).
        fields = ", ".join(select_fields(object_type, ctx.mappings, sharing.query_fields(ctx, object_type)))
        where = [*ctx.soql_filter(object_type), f"{key} IN ({_soql_list(values)})"]
        if object_type == CrmObject.PERSON_ACCOUNT:
            where.insert(0, "IsPersonAccount = true")
        return f"SELECT {fields} FROM {sobject_name(object_type)} WHERE {' AND '.join(where)}"

    queries: list[tuple[str, str]] = []
    for object_type, ids in linked.items():
        ordered = sorted(ids)
        for i in range(0, len(ordered), IDS_PER_QUERY):
            queries.append((f"{object_type}_id_{i}", soql(object_type, "Id", ordered[i:i + IDS_PER_QUERY])))
    ordered_emails = sorted(emails)
    for object_type in ctx.polled_objects:
        key = "PersonEmail" if object_type == CrmObject.PERSON_ACCOUNT else "Email"
        for i in range(0, len(ordered_emails), IDS_PER_QUERY):
            queries.append((f"{object_type}_email_{i}", soql(object_type, key, ordered_emails[i:i + IDS_PER_QUERY])))
    results = run_queries(ctx, queries) if queries else {}
    by_id: dict[str, CrmRecord] = {}
    by_email: dict[str, list[CrmRecord]] = defaultdict(list)
    for ref, raw in results.items():
        object_type = ref.split("_", 1)[0]
        for r in raw:
            record = CrmRecord.from_api(object_type, r)
            by_id[id18(record.id).lower()] = record
            if record.email:
                by_email[record.email].append(record)
    out: dict[Any, list[CrmRecord]] = {}
    for s in snaps:
        found: dict[str, CrmRecord] = {}
        for crm_id in (s.crm_contact_id, s.crm_lead_id, s.crm_account_id):  # only person accounts are fetched by id
            hit = by_id.get(id18(crm_id).lower()) if crm_id else None
            if hit is not None:
                found[hit.id] = hit
        if not s.is_linked:
            for record in by_email.get(s.email, ()):
                found[record.id] = record
        out[s.id] = list(found.values())
    return out


# --- Draining -------------------------------------------------------------------------------------------------------


def claim(connector: Connector, *, limit: int = BATCH, prospect_ids: Iterable[int] | None = None
          ) -> dict[int, list[OutboxEntry]]:
    qs = OutboxEntry.objects.filter(connector=connector, status=OutboxEntry.Status.PENDING)
    if prospect_ids is not None:
        qs = qs.filter(prospect_id__in=list(prospect_ids))
    entries = claim_due(qs, limit=limit, lease_seconds=LEASE_SECONDS)
    by_prospect: dict[int, list[OutboxEntry]] = defaultdict(list)
    for e in entries:
        by_prospect[e.prospect_id].append(e)
    if by_prospect:
        # Another drain holds a lease on an entry of the same prospect: leave the prospect to it ([R25]).
        now = timezone.now()
        busy = set(OutboxEntry.objects.filter(connector=connector, prospect_id__in=list(by_prospect),
                                              status=OutboxEntry.Status.PENDING, locked_until__gt=now)
                   .exclude(pk__in=[e.pk for e in entries]).values_list("prospect_id", flat=True))
        for pid in busy:
            _reschedule(by_prospect.pop(pid), now + dt.timedelta(seconds=2), count_attempt=False)
    return by_prospect


def _done(entries: Iterable[OutboxEntry], status: str = OutboxEntry.Status.DONE) -> None:
    entries = list(entries)
    for e in entries:
        e.status = status
    ids = [e.pk for e in entries]
    if ids:
        OutboxEntry.objects.filter(pk__in=ids).update(status=status, locked_until=None, done_at=timezone.now())


def _reschedule(entries: Iterable[OutboxEntry], when: dt.datetime, *, count_attempt: bool = True) -> None:
    ids = [e.pk for e in entries]
    if not ids:
        return
    fields: dict[str, Any] = {"locked_until": None, "next_run_at": when, "status": OutboxEntry.Status.PENDING}
    if not count_attempt:
        from django.db.models import F

        fields["attempts"] = F("attempts") - 1
    OutboxEntry.objects.filter(pk__in=ids).update(**fields)


def drain(connector: Connector, *, client=None, limit: int = BATCH, prospect_ids: Iterable[int] | None = None,
          ) -> RunCounters:
    """Push one batch of due outbox entries. Returns the run's counters (``note`` says why nothing happened)."""
    due = 0
    if prospect_ids is None:
        threshold = bulk_threshold(settings_of(connector))
        due = _due_upto(connector, threshold + 1)
        if due > threshold:
            decision = budget.decision(connector)
            if not decision.allows_bulk:  # [R27]: the backlog waits, nothing claimed, no API call spent
                return RunCounters(note=f"paused: bulk push deferred: {decision.reason} [R27]")
            limit = max(limit, bulk.PUSH_ROWS)
    claimed = claim(connector, limit=limit, prospect_ids=prospect_ids)
    if not claimed:
        counters = RunCounters(note="the outbox is empty")
        return counters
    try:
        client = client or shared_client(connector)
    except Exception:
        _reschedule([e for es in claimed.values() for e in es], timezone.now() + dt.timedelta(seconds=30))
        raise
    with runs.sync_run(connector, "push", client=client) as run:
        try:
            ctx = SyncContext.load(connector, client)
            push_entries(ctx, claimed, run.counters, backlog=due)
        except BudgetPaused:
            run.counters.note = "paused: the CRM's daily API limit is exhausted [R27]"
        except bulk.BulkDeferred as exc:  # [R27] mid-drain: what is not written yet waits, attempts not counted
            left = [e for es in claimed.values() for e in es if e.status == OutboxEntry.Status.PENDING]
            _reschedule(left, exc.until or timezone.now() + dt.timedelta(minutes=5), count_attempt=False)
            run.counters.note = f"paused: {exc.reason} [R27]"
        except (AuthError, CrmApiError) as exc:
            code = getattr(exc, "code", None) or getattr(exc, "error", "AUTH")
            info = classify(str(code), getattr(exc, "status", None), str(exc))
            left = [e for es in claimed.values() for e in es if e.status == OutboxEntry.Status.PENDING]
            if isinstance(exc, AuthError) or info.category is ErrorCategory.AUTH:
                mark_auth_error(connector, exc)
                _reschedule(left, timezone.now() + dt.timedelta(seconds=60))
            elif info.category is ErrorCategory.LIMIT:
                until = budget.pause_for_limit(connector, str(exc))
                _reschedule(left, until, count_attempt=False)
                run.counters.note = "paused: the CRM's daily API limit is exhausted [R27]"
            else:
                attempt = max((e.attempts for e in left), default=1)
                _reschedule(left, timezone.now() + dt.timedelta(seconds=backoff_delay(attempt, base=2, cap=600)))
                run.counters.fail(str(code), len(claimed))
                run.counters.note = f"the CRM answered {code}; retrying with backoff"
    _gauge(connector)
    return run.counters


def backlog(connector: Connector) -> int:
    return OutboxEntry.objects.filter(connector=connector, status=OutboxEntry.Status.PENDING,
                                      next_run_at__lte=timezone.now()).count()


def drain_parallel(connector: Connector, *, threads: int = 4, client=None, max_batches: int = 10**6) -> int:
    """Drain until the outbox has nothing due, with ``threads`` drains at once (each claims its own entries; the
    CRM's answer time of one overlaps the database work of the others). Returns records written."""
    import threading

    from django.db import connection

    written = [0]
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(max_batches):
                counters = drain(connector, client=client)
                if counters.note == "the outbox is empty" or counters.note.startswith("paused"):
                    return
                with lock:
                    written[0] += counters.created + counters.updated
                if budget.blocked(connector):
                    return
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=work, name=f"crm-drain-{i}") for i in range(max(1, threads))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if failures:
        raise failures[0]
    return written[0]


def mark_auth_error(connector: Connector, exc: BaseException) -> None:
    """Token errors (wrong consumer key, revoked certificate): status *error* with the CRM's words; loops skip the
    connector until an admin verifies and resumes it — no crash loop ([R6])."""
    message = f"The CRM refused the connector's token: {exc}. Check the consumer key, username and certificate, "\
              "then verify the connection and resume."
    Connector.objects.filter(pk=connector.pk).update(status=Connector.Status.ERROR, last_error=message[:1000])
    connector.status, connector.last_error = Connector.Status.ERROR, message
    logger.error("connector %s: %s", connector.pk, message)


def _gauge(connector: Connector) -> None:
    from django.db.models import Min

    from ..metrics import ERRORS_OPEN, OUTBOX_AGE

    figures = OutboxEntry.objects.filter(connector=connector, status=OutboxEntry.Status.PENDING).aggregate(
        n=Count("id"), oldest=Min("created_at"))
    OUTBOX_BACKLOG.labels(str(connector.pk)).set(figures["n"] or 0)
    oldest = figures["oldest"]
    OUTBOX_AGE.labels(str(connector.pk)).set((timezone.now() - oldest).total_seconds() if oldest else 0)
    ERRORS_OPEN.labels(str(connector.pk)).set(errors.open_count(connector))


def push_entries(ctx: SyncContext, claimed: dict[int, list[OutboxEntry]], counters: RunCounters, *,
                 backlog: int = 0) -> None:
    connector = ctx.connector
    prospects = {p.pk: p for p in Prospect.objects.filter(pk__in=list(claimed), bu_id=connector.bu_id)
                 .select_related("source_campaign", "bu")}
    missing = [pid for pid in claimed if pid not in prospects]
    _done([e for pid in missing for e in claimed[pid]])
    owners = owner_ids(connector.pk, prospects.values())
    by_rule = pending_crm_assignments(connector.bu_id, [pid for pid, p in prospects.items() if not p.crm_id])
    snaps = {pid: snapshot(p, ctx.mappings, owners.get(p.assigned_user_id) if p.assigned_user_id is not None else None,
                           use_assignment_rule=pid in by_rule)
             for pid, p in prospects.items()}
    gated = [s for s in snaps.values() if not (s.do_not_sync or s.crm_deleted or s.is_deleted)]
    # [R34], [R35] records this BU does not see (or another BU syncs) are neither matched nor written to.
    candidates, not_shared = sharing.screen_candidates(ctx, gated, fetch_candidates(ctx, gated) if gated else {})
    links = {id18(link.crm_id).lower(): link for link in CrmLink.objects.filter(
        connector=connector, prospect_id__in=list(snaps))}
    items: list[OutboxItem] = []
    pending: dict[int, dict[str, Any]] = {}
    upsert_fields: dict[str, str | None] = {}
    now = timezone.now()
    for pid, snap in snaps.items():
        entries = claimed[pid]
        if pid in not_shared:  # its linked record stopped matching: the pull recycles the prospect ([R36])
            counters.skip(SkipReason.NOT_VISIBLE)
            SYNCED_RECORDS.labels("to_crm", "skipped").inc()
            _done(entries)
            # The change is held, not dropped: if the record matches again (even before a poll saw it leave), the
            # pull must resolve it in full against the baseline, not skip it as unchanged — that pushes the change.
            CrmLink.objects.filter(connector=connector, prospect_id=pid).update(last_read_hash="",
                                                                                last_written_hash="")
            continue
        decision = plan_prospect_push(snap, candidates.get(pid, []), ctx.settings)
        if decision.action is PushAction.SKIP:
            if decision.skip_reason is SkipReason.ALREADY_LINKED and max(e.attempts for e in entries) < 5:
                # The linked record is not readable right now (converted or deleted, and the pull has not caught
                # up yet): try again shortly instead of dropping the change; lifecycle rules settle it.
                _reschedule(entries, now + dt.timedelta(seconds=30))
                counters.skip(SkipReason.ALREADY_LINKED)
                continue
            counters.skip(decision.skip_reason or SkipReason.UNCHANGED)
            SYNCED_RECORDS.labels("to_crm", "skipped").inc()
            _done(entries)
            continue
        if decision.action is PushAction.UPDATE:
            match = decision.match
            # plan_prospect_push returns UPDATE only with a matched record.
            assert match is not None and match.record is not None
            record = match.record
            link = links.get(id18(record.id).lower())
            settle_pending_write(link, record, ctx.mappings)
            resolution = resolve(snap, record, ctx.mappings, ctx.settings, state_of(link))
            if resolution.skip_reason is not None or resolution.unlink:
                counters.skip(resolution.skip_reason or SkipReason.EMAIL_CHANGED_UNLINKED)
                _done(entries)
                continue
            if resolution.to_loopline:
                _apply_to_loopline(ctx, prospects[pid], resolution)
            link_ids = match.link.as_dict() if match.link else {}
            if not resolution.to_crm:
                _after_write(ctx, prospects[pid], record, None, resolution, link_ids, now)
                counters.unchanged += 1
                _done(entries)
                errors.resolve_for(connector, [pid])
                continue
            checked = validate_payload(record.object_type, resolution.to_crm, ctx.describe(record.object_type),
                                       Operation.UPDATE)
            if not checked.ok:
                _invalid(ctx, pid, record.id, checked, entries, counters)
                continue
            pending[pid] = {"record": record, "resolution": resolution, "payload": checked.payload,
                            "link_ids": link_ids}
            items.append(OutboxItem(str(pid), 0, WriteOp.UPDATE, record.object_type, checked.payload,
                                    min(e.created_at for e in entries), crm_id=record.id, entry_id=pid))
        else:
            creation = decision.creation
            # plan_prospect_push returns CREATE only with a creation that names the object to create.
            assert creation is not None and creation.object_type is not None
            object_type = creation.object_type.value
            payload = creation_payload(snap, ctx.mappings, object_type, creation,
                                       extra=person_record_type(ctx) if object_type == CrmObject.PERSON_ACCOUNT else None)
            checked = validate_payload(object_type, payload, ctx.describe(object_type), Operation.CREATE)
            if not checked.ok:
                _invalid(ctx, pid, "", checked, entries, counters)
                continue
            payload = dict(checked.payload)
            upsert_field = upsert_fields.get(object_type)
            if upsert_field is None and object_type not in upsert_fields:
                upsert_field = upsert_fields[object_type] = external_id_field(ctx, object_type)
            if upsert_field:
                payload[upsert_field] = external_id_value(connector, pid)
            pending[pid] = {"record": None, "object_type": object_type, "payload": payload, "snap": snap,
                            "assignment_rule": creation.use_assignment_rule}
            items.append(OutboxItem(str(pid), 0, WriteOp.CREATE, object_type, payload,
                                    min(e.created_at for e in entries), entry_id=pid))
    if not items:
        return
    _record_pending_writes(ctx, pending, links)
    by_rule_keys = {str(pid) for pid, p in pending.items() if p.get("assignment_rule")}
    batch = OutcomeBatch(ctx, now)
    # Only creates handed to the CRM's assignment rule let it run; every other write says FALSE, because the REST
    # API runs the active rules by default and they would replace the owner Loopline chose ([M22], [R11]).
    plain = [i for i in items if i.key not in by_rule_keys]
    bulk_made: dict[int, str] = {}
    if plain and use_bulk(backlog, ctx):  # ingest jobs run no assignment rule: creates handed to it stay below
        plain, bulk_made = _send_bulk(ctx, plain, upsert_fields, prospects, claimed, pending, counters, batch)
    made = _send(ctx, plain, upsert_fields, prospects, claimed, pending, counters, batch,
                 {"Sforce-Auto-Assign": "FALSE"})
    created = _send(ctx, [i for i in items if i.key in by_rule_keys], upsert_fields, prospects, claimed, pending,
                    counters, batch, {"Sforce-Auto-Assign": "TRUE"})
    _person_contacts(ctx, {**bulk_made, **made, **created}, pending)
    if created:
        _owners_chosen_by_rule(ctx, created, pending)


def _record_pending_writes(ctx: SyncContext, pending: dict[int, dict[str, Any]], links: dict[str, CrmLink]) -> None:
    """[R24] Before the updates go out: what each should leave behind, so that a write the CRM applied but whose
    answer was lost is still known as ours when the record is read again (``settle_pending_write``)."""
    rows: dict[int, dict[str, Any]] = {}
    for item in pending.values():
        record = item["record"]
        link = links.get(id18(record.id).lower()) if record is not None else None
        if link is not None:
            rows[link.pk] = {"pending_write": {"hash": written_hash(record, item["payload"], ctx.mappings),
                                               "baseline": item["resolution"].baseline_after}}
    fastwrite.update(CrmLink, rows, ["pending_write"])


def _send(ctx: SyncContext, items: list[OutboxItem], upsert_fields: dict[str, str | None],
          prospects: dict[int, Prospect], claimed: dict[int, list[OutboxEntry]], pending: dict[int, dict[str, Any]],
          counters: RunCounters, batch: OutcomeBatch, headers: dict[str, str]) -> dict[int, str]:
    """Write ``items`` as planned batches; returns prospect id → CRM id of the records created."""
    if not items:
        return {}
    limits = BatchLimits(api_version=ctx.api_version, bulk_threshold=10**12,
                         upsert_fields={k: v for k, v in upsert_fields.items() if v})
    plan = plan_push(items, limits)
    failed_keys: set[str] = set()
    created: dict[int, str] = {}
    steps = list(plan.steps)
    index = 0
    while index < len(steps):
        for request in steps[index].requests:
            try:
                response = ctx.client.restful(request.path(), method=request.method(),
                                              json=request.body(ctx.api_version), headers=headers)
                outcomes = composite_outcomes(request, response)
            except CrmApiError as exc:
                info = classify(exc.code, exc.status, exc.message)
                if info.category in (ErrorCategory.LIMIT, ErrorCategory.AUTH):
                    raise
                error = CrmError(exc.code, exc.message, tuple(exc.fields), exc.status)
                outcomes = [WriteOutcome(w, False, w.crm_id, errors=(error,)) for w in request.writes]
            with transaction.atomic():
                for outcome in outcomes:
                    pid = int(outcome.write.key)
                    if not outcome.success:
                        failed_keys.add(outcome.write.key)
                    elif pending[pid]["record"] is None and outcome.crm_id:
                        created[pid] = str(outcome.crm_id)
                    _outcome(ctx, prospects[pid], claimed[pid], pending[pid], outcome, counters, batch)
                batch.flush()
        if failed_keys:  # a failed record's later writes wait in the outbox (order per record is kept)
            steps = steps[:index + 1] + list(plan.without_keys(failed_keys, from_step=index + 1).steps)
        index += 1
    return created


def _send_bulk(ctx: SyncContext, items: list[OutboxItem], upsert_fields: dict[str, str | None],
               prospects: dict[int, Prospect], claimed: dict[int, list[OutboxEntry]],
               pending: dict[int, dict[str, Any]], counters: RunCounters, batch: OutcomeBatch
               ) -> tuple[list[OutboxItem], dict[int, str]]:
    """[R23] Write ``items`` through Bulk API 2.0 ingest jobs. Returns the items left for collections and, per
    prospect id, the CRM id of the records created."""
    entry_ids = [e.pk for i in items for e in claimed[int(i.key)]]
    created: dict[int, str] = {}

    def apply(outcomes: list[WriteOutcome]) -> None:
        with transaction.atomic():
            for outcome in outcomes:
                pid = int(outcome.write.key)
                if outcome.success and pending[pid]["record"] is None and outcome.crm_id:
                    created[pid] = str(outcome.crm_id)
                _outcome(ctx, prospects[pid], claimed[pid], pending[pid], outcome, counters, batch)
            batch.flush()

    left = bulk.push_jobs(ctx, items, {k: v for k, v in upsert_fields.items() if v}, apply,
                          lambda: _extend_lease(entry_ids))
    return left, created


def person_record_type(ctx: SyncContext) -> dict[str, str]:
    """``RecordTypeId`` of the org's person-account record type, when the Account describe lists one named
    ``PersonAccount`` (Salesforce's default); else nothing and the connector user's default record type applies."""
    ctx.describe("Account")
    row = CrmDescribe.objects.filter(connector=ctx.connector, object_type="Account").first()
    infos = (row.data or {}).get("recordTypeInfos") or () if row is not None else ()
    found = next((i for i in infos if i.get("developerName") == "PersonAccount" and i.get("available", True)), None)
    return {"RecordTypeId": str(found["recordTypeId"])} if found and found.get("recordTypeId") else {}


def _person_contacts(ctx: SyncContext, created: dict[int, str], pending: dict[int, dict[str, Any]]) -> None:
    """[R14] a new person account's person contact id becomes the prospect's contact id (one query per batch)."""
    accounts = {id18(crm_id).lower(): pid for pid, crm_id in created.items()
                if pending[pid]["object_type"] == CrmObject.PERSON_ACCOUNT}
    if not accounts:
        return
    try:
        rows = ctx.client.query(f"SELECT Id, PersonContactId FROM Account WHERE Id IN ({_soql_list(accounts)})")
    except CrmApiError:  # the prospect stays linked by its account id; the next push reads the account again
        logger.warning("reading the person contacts of new person accounts failed", exc_info=True)
        return
    found = {accounts[key]: {"crm_contact_id": str(row["PersonContactId"])} for row in rows
             if row.get("PersonContactId") and (key := id18(str(row.get("Id"))).lower()) in accounts}
    prospect_services.set_crm_fields(ctx.connector.bu_id, found)


def _owners_chosen_by_rule(ctx: SyncContext, created: dict[int, str], pending: dict[int, dict[str, Any]]) -> None:
    """Read back the owners the CRM's assignment rule picked (one query per object), then close the requests."""
    by_type: dict[str, dict[str, int]] = {}
    for pid, crm_id in created.items():
        by_type.setdefault(pending[pid]["object_type"], {})[id18(crm_id).lower()] = pid
    owners: dict[int, dict[str, Any]] = {}
    for object_type, ids in by_type.items():
        quoted = ", ".join(f"'{i}'" for i in created.values() if id18(i).lower() in ids)
        try:
            rows = ctx.client.query(f"SELECT Id, OwnerId FROM {object_type} WHERE Id IN ({quoted})")
        except CrmApiError:  # the next poll brings the owner; the request is done either way
            logger.warning("reading owners chosen by the assignment rule failed", exc_info=True)
            continue
        for row in rows:
            owner_of = ids.get(id18(str(row.get("Id"))).lower())
            if owner_of is not None and row.get("OwnerId"):
                owners[owner_of] = {"crm_owner_id": str(row["OwnerId"])}
    if owners:
        prospect_services.set_crm_fields(ctx.connector.bu_id, owners)
    crm_assignments_done(ctx.connector.bu_id, list(created))


def external_id_field(ctx: SyncContext, object_type: str) -> str | None:
    """The external-id field creates of ``object_type`` upsert on ([R25]), when the setting names one and the CRM's
    describe shows it as a createable external id; otherwise None (plain creates)."""
    name = str(ctx.raw_settings.get("external_id_field") or "").strip()
    if not name:
        return None
    try:
        described = ctx.describe(object_type).get(name)
    except Exception:  # describe unavailable: create without it rather than not at all
        logger.warning("describe of %s failed; creating without the external id", object_type, exc_info=True)
        return None
    if described is None or not described.external_id or not described.createable:
        return None
    return described.name


def external_id_value(connector: Connector, prospect_id: int) -> str:
    """Stable per connector and prospect, unique across Loopline installations sharing one org."""
    import hashlib

    seed = f"{connector.pk}:{connector.created_at.isoformat() if connector.created_at else ''}"
    return f"LL-{hashlib.sha256(seed.encode()).hexdigest()[:10]}-{prospect_id}"


def _apply_to_loopline(ctx: SyncContext, prospect: Prospect, resolution) -> None:
    data, extra = split_writes(resolution.to_loopline)
    if "email" in data and Prospect.objects.filter(bu_id=prospect.bu_id, email=data["email"]).exclude(
            pk=prospect.pk).exists():
        data.pop("email")
    try:
        with transaction.atomic():
            prospect_services.update_prospect(prospect, data, source="crm", extra=extra,
                                              changed_at=resolution.loopline_changed_at)
    except Exception as exc:
        errors.record(ctx.connector, direction=SyncError.Direction.FROM_CRM, code=getattr(exc, "code", "INVALID"),
                      message=str(exc), prospect_id=prospect.pk)


def _invalid(ctx: SyncContext, pid: int, crm_id: str, checked, entries, counters: RunCounters) -> None:
    """[R20]: not sent blind — the record waits in the error queue with the reason."""
    problem = checked.problems[0]
    errors.record(ctx.connector, direction=TO_CRM, code=problem.code, message=checked.summary(),
                  prospect_id=pid, crm_id=crm_id, fields=[p.field for p in checked.problems])
    counters.fail(problem.code)
    counters.skip(SkipReason.INVALID)
    _done(entries, OutboxEntry.Status.FAILED)


class OutcomeBatch:
    """Successful writes of one API call, saved with a handful of set-based queries (links, prospect CRM fields,
    outbox entries, resolved errors) instead of several queries per record."""

    def __init__(self, ctx: SyncContext, now: dt.datetime):
        self.ctx = ctx
        self.now = now
        self.links: dict[str, dict[str, Any]] = {}
        self.crm_fields: dict[int, dict[str, Any]] = {}
        self.done: list[OutboxEntry] = []
        self.resolved: list[int] = []

    def link(self, crm_id: str, values: dict[str, Any]) -> None:
        self.links[crm_id] = values

    def flush(self) -> None:
        ctx = self.ctx
        if self.links:
            existing = dict(CrmLink.objects.filter(connector=ctx.connector, crm_id__in=list(self.links))
                            .values_list("crm_id", "pk"))
            new: list[dict[str, Any]] = []
            changed: dict[tuple[str, ...], dict[Any, dict[str, Any]]] = {}
            for crm_id, values in self.links.items():
                row = {("prospect_id" if k == "prospect" else k): (v.pk if k == "prospect" else v)
                       for k, v in values.items()}
                if crm_id in existing:
                    changed.setdefault(tuple(sorted(row)), {})[existing[crm_id]] = row
                else:
                    new.append({**row, "connector_id": ctx.connector.pk, "crm_id": crm_id})
            fastwrite.insert(CrmLink, new, ignore_conflicts=True)
            for names, rows in changed.items():
                fastwrite.update(CrmLink, rows, list(names))
        prospect_services.set_crm_fields(ctx.connector.bu_id, self.crm_fields)
        _done(self.done)
        errors.resolve_for(ctx.connector, self.resolved)
        for e in self.done:
            SYNC_LATENCY.labels("to_crm").observe(max(0.0, (self.now - e.created_at).total_seconds()))
        self.links, self.crm_fields, self.done, self.resolved = {}, {}, [], []


def _outcome(ctx: SyncContext, prospect: Prospect, entries: list[OutboxEntry], item: dict[str, Any],
             outcome: WriteOutcome, counters: RunCounters, batch: OutcomeBatch) -> None:
    connector = ctx.connector
    now = batch.now
    if outcome.success:
        if item["record"] is None:
            from ..engine.values import crm_hash

            crm_id = str(outcome.crm_id)
            object_type = item["object_type"]
            key = {CrmObject.LEAD: "crm_lead_id", CrmObject.PERSON_ACCOUNT: "crm_account_id"}.get(
                object_type, "crm_contact_id")  # a person account's contact id is read back (_person_contacts)
            update = {key: crm_id, "crm_last_sync_at": now}
            if item["payload"].get("OwnerId"):
                update["crm_owner_id"] = item["payload"]["OwnerId"]
            batch.crm_fields[prospect.pk] = update
            written = crm_hash(item["payload"], ctx.mappings, object_type)
            batch.link(crm_id, {
                "prospect": prospect, "crm_object": object_type, "last_synced_at": now,
                "last_written_hash": written, "last_read_hash": written,
                "baseline": agreed_baseline(item["snap"].values, ctx.mappings, object_type, crm_side=False)})
            counters.created += 1
            SYNCED_RECORDS.labels("to_crm", "created").inc()
        else:
            _after_write(ctx, prospect, item["record"], item["payload"], item["resolution"], item["link_ids"], now,
                         batch)
            counters.updated += 1
            SYNCED_RECORDS.labels("to_crm", "updated").inc()
        batch.done.extend(entries)
        batch.resolved.append(prospect.pk)
        return
    error = outcome.errors[0] if outcome.errors else CrmError("UNKNOWN_ERROR", "no result")
    info = classify(error.code, error.http_status, error.message)
    counters.fail(error.code)
    crm_id = item["record"].id if item["record"] is not None else ""
    if info.category is ErrorCategory.TRANSIENT:
        attempts = max(e.attempts for e in entries)
        when = timezone.now() + dt.timedelta(seconds=backoff_delay(attempts, base=2.0, cap=900.0))
        _reschedule(entries, when)
        errors.record(connector, direction=TO_CRM, code=error.code, message=error.message, prospect_id=prospect.pk,
                      crm_id=crm_id, fields=error.fields, http_status=error.http_status, next_retry_at=when)
        return
    if (info.record_deleted or info.lead_converted) and max(e.attempts for e in entries) < 5:
        # Merged, converted or deleted between our read and our write: once a poll has followed the record
        # ([R13], [R31], [R32]) the change goes to the survivor or the contact (or stops for a CRM-deleted prospect).
        _reschedule(entries, timezone.now() + dt.timedelta(seconds=30))
        return
    errors.record(connector, direction=TO_CRM, code=error.code, message=error.message, prospect_id=prospect.pk,
                  crm_id=crm_id, fields=error.fields, http_status=error.http_status)
    _done(entries, OutboxEntry.Status.FAILED)


def _after_write(ctx: SyncContext, prospect: Prospect, record: CrmRecord, payload: dict | None, resolution,
                 link_ids: dict[str, str], now: dt.datetime, batch: OutcomeBatch | None = None) -> None:
    """Design note 3: link hashes, baseline and modstamp after a successful (or unnecessary) write."""
    values = {"prospect": prospect, "crm_object": record.object_type, "last_synced_at": now,
              "last_read_hash": record_hash(record, ctx.mappings), "last_crm_modstamp": record.system_modstamp,
              "baseline": resolution.baseline_after, "pending_write": {}}
    if payload:
        # The CRM now holds what we wrote: that is both the echo to expect and the last known CRM state.
        values["last_written_hash"] = values["last_read_hash"] = written_hash(record, payload, ctx.mappings)
    else:  # nothing written: the record as read is the reference (see pull._save_link)
        values["last_written_hash"] = ""
    update: dict[str, Any] = {k: v for k, v in link_ids.items() if v}
    update["crm_last_sync_at"] = now
    if record.owner_id and record.owner_id != prospect.crm_owner_id:
        update["crm_owner_id"] = record.owner_id
    if batch is not None:
        batch.link(record.id, values)
        batch.crm_fields[prospect.pk] = update
        return
    CrmLink.objects.update_or_create(connector=ctx.connector, crm_id=record.id, defaults=values)
    prospect_services.set_crm_fields(prospect.bu_id, {prospect.pk: update})
