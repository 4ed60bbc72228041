"""CRM objects related to prospects: connected campaign members ([R38]), email sends logged as CRM Tasks ([R39]) and
opportunities with their contact roles ([R40]).

**Pull** — :func:`riders` adds ``CampaignMember``, ``Opportunity`` and ``OpportunityContactRole`` change queries to the
prospect poll's composite call (``sync/pull.py``): each has its own ``SystemModstamp`` watermark (same overlap and
de-duplication as leads and contacts, [R22]) and costs no extra API call while it fits the composite's five queries;
what does not fit is polled in one composite call of its own. Records are applied page by page in the watermark's
transaction:

* opportunities are mirrored read-only (``campaigns.services.upsert_opportunities``) when one of their contact roles
  names a prospect of this BU, or when they are mirrored already; an unknown opportunity's roles are read in one
  query so a new deal of a synced contact is not missed;
* contact roles of this BU's prospects (or of mirrored opportunities) feed ``upsert_contact_roles``; deleted roles
  ``remove_contact_roles``; a role whose opportunity is not mirrored yet brings the opportunity with it;
* CRM campaign members of this BU's prospects become memberships (``upsert_campaign_members``), with campaigns not
  synced yet fetched on the spot; members deleted in the CRM leave the campaign in Loopline; our own writes coming
  back (same id, same status) are skipped ([R24]).

**Push** (:func:`push`, called by the sync loop after the outbox drain):

* memberships of synced prospects in connected campaigns whose status differs from what the CRM holds get a
  :class:`CampaignMemberSync` row; due rows are claimed with a lease, checked against the CRM's existing members
  (one query call; a create is never sent twice, [R25]) and written as creates/updates through sObject Collections,
  200 records per collection, five collections per composite call;
* when the ``log_email_tasks`` setting is on, every email the send ledger marks *sent* to a synced prospect queues one
  :class:`CrmTaskLog` row (unique per ledger row) with the task frozen in it; due rows are written as completed Tasks,
  200 per collection. Each task's description carries a reference; a row claimed again after a crash or a lost answer
  first looks for its task in the CRM, so a task is written exactly once.

Everything respects the API budget ([R27]): the loop skips a blocked connector, calls are counted per run, and a
``REQUEST_LIMIT_EXCEEDED`` leaves the rows pending. Failed records go to the sync error queue ([R26]).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from loopline.campaigns import services as campaign_services
from loopline.campaigns.models import CampaignMember, Opportunity, OpportunityContactRole
from loopline.platform.queues import backoff_delay, claim_due
from loopline.prospects.models import Prospect

from .. import sharing
from ..engine import RunCounters
from ..engine.capture import Watermark, build_soql, record_key
from ..engine.errors import ErrorCategory, classify
from ..engine.model import parse_datetime
from ..models import CampaignMemberSync, Connector, CrmTaskLog, SyncError
from ..models import Watermark as WatermarkRow
from ..salesforce.client import CrmApiError
from . import budget, errors, runs
from .context import SyncContext, shared_client

logger = logging.getLogger("loopline.connector.related")

OVERLAP = dt.timedelta(seconds=60)
FIELDS: dict[str, tuple[str, ...]] = {
    "Opportunity": (
        "Id",
        "Name",
        "Amount",
        "StageName",
        "IsClosed",
        "IsWon",
        "CloseDate",
        "CreatedDate",
        "CampaignId",
        "SystemModstamp",
        "IsDeleted",
    ),
    "OpportunityContactRole": (
        "Id",
        "OpportunityId",
        "ContactId",
        "Role",
        "IsPrimary",
        "SystemModstamp",
        "IsDeleted",
    ),
    "CampaignMember": (
        "Id",
        "CampaignId",
        "LeadId",
        "ContactId",
        "Status",
        "HasResponded",
        "FirstRespondedDate",
        "CreatedDate",
        "SystemModstamp",
        "IsDeleted",
    ),
}
#: Applied in this order: a role needs its opportunity mirrored first.
RELATED_OBJECTS = tuple(FIELDS)
CAMPAIGN_FIELDS = "Id, Name, Status, Type, StartDate, EndDate, IsActive, ActualCost, BudgetedCost, ParentId"
TASK_CURSOR = "Task:email_sends"
TASK_OVERLAP = dt.timedelta(minutes=10)
COLLECTION = 200  # records per sObject Collections request
PER_CALL = 5  # collections (or queries) per composite call
CLAIM = COLLECTION * PER_CALL
LEASE_SECONDS = 300
SCAN_EVERY = 5.0  # seconds between membership scans per connector and process
TO_CRM = SyncError.Direction.TO_CRM
FROM_CRM = SyncError.Direction.FROM_CRM

CHECK_EVERY = 1.0  # seconds between looks for due rows (retries) between scans
_last_scan: dict[tuple[int, Any], float] = {}  # per connector (id, creation time) and process
_last_check: dict[tuple[int, Any], float] = {}


# --- Small helpers --------------------------------------------------------------------------------------------------


def _skip(counters: RunCounters, reason: str, n: int = 1) -> None:
    if n > 0:
        counters.skip(reason, n)


def _soql_list(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)


def _short(crm_id: str | None) -> str:
    return (crm_id or "")[:15]


def _queries(ctx: SyncContext, queries: Sequence[tuple[str, str]]) -> dict[str, list[dict]]:
    from .push import run_queries

    return run_queries(ctx, queries) if queries else {}


def _in_chunks(
    object_type: str, fields: str, column: str, ids: Iterable[str], ref: str
) -> list[tuple[str, str]]:
    ordered = sorted({i for i in ids if i})
    return [
        (
            f"{ref}_{n}",
            f"SELECT {fields} FROM {object_type} WHERE {column} IN ({_soql_list(ordered[n : n + 200])})",
        )
        for n in range(0, len(ordered), 200)
    ]


def _prospects_by_crm_id(bu_id: int, crm_ids: Iterable[str]) -> dict[str, int]:
    """CRM lead/contact id (15-char prefix) → prospect id, for synced prospects of the BU."""
    ids = {c for c in crm_ids if c}
    keys = ids | {c[:15] for c in ids}
    found: dict[str, int] = {}
    if not keys:
        return found
    for pk, lead, contact in (
        Prospect.objects.filter(bu_id=bu_id, is_deleted=False)
        .filter(Q(crm_contact_id__in=keys) | Q(crm_lead_id__in=keys))
        .values_list("pk", "crm_lead_id", "crm_contact_id")
    ):
        for value in (lead, contact):
            if value:
                found.setdefault(value[:15], pk)
    return found


# --- Pull: riders on the prospect poll ------------------------------------------------------------------------------


@dataclass
class Riders:
    """The related objects' queries riding on one poll, their watermarks and what they did."""

    ctx: SyncContext
    marks: dict[str, tuple[WatermarkRow, Watermark]]
    carried: list[str]
    left: list[str]
    counters: RunCounters = field(default_factory=RunCounters)

    def subrequests(self) -> list[dict[str, Any]]:
        return [self._subrequest(o) for o in self.carried]

    def _subrequest(self, object_type: str) -> dict[str, Any]:
        from urllib.parse import quote

        _, wm = self.marks[object_type]
        soql = build_soql(object_type, sharing.related_fields(self.ctx, object_type, FIELDS[object_type]),
                          wm.since(OVERLAP))
        return {
            "method": "GET",
            "url": f"/services/data/v{self.ctx.api_version}/queryAll?q={quote(soql, safe='')}",
            "referenceId": object_type,
        }

    def owns(self, sub: dict[str, Any]) -> bool:
        return str(sub.get("referenceId")) in self.marks

    def apply(self, sub: dict[str, Any]) -> None:
        """One composite sub-response. A failed query is noted on its watermark and never stops the prospect poll."""
        object_type = str(sub.get("referenceId"))
        row, wm = self.marks[object_type]
        status = int(sub.get("httpStatusCode") or 500)
        body = sub.get("body")
        if status >= 300:
            first = body[0] if isinstance(body, list) and body else {}
            message = f"{first.get('errorCode') or f'HTTP_{status}'}: {first.get('message') or 'poll failed'}"
            WatermarkRow.objects.filter(pk=row.pk).update(
                last_poll_at=timezone.now(), last_error=message[:500]
            )
            self.counters.fail(str(first.get("errorCode") or f"HTTP_{status}"))
            return
        try:
            page = body if isinstance(body, dict) else {}
            while True:
                wm = _apply_page(
                    self.ctx, object_type, list(page.get("records") or []), wm, row, self.counters
                )
                if page.get("done", True) or not page.get("nextRecordsUrl"):
                    break
                page = self.ctx.client.restful(
                    page["nextRecordsUrl"].split(f"/v{self.ctx.api_version}/", 1)[-1]
                )
        except CrmApiError as exc:
            # The watermark stays where the last applied page left it: the next poll replays the rest ([R25]).
            WatermarkRow.objects.filter(pk=row.pk).update(last_error=f"{exc}"[:500])
            self.counters.fail(exc.code)
            info = classify(exc.code, exc.status, exc.message)
            if info.category in (ErrorCategory.LIMIT, ErrorCategory.AUTH):
                raise
            return
        except Exception as exc:
            # Never let one bad related record stop lead/contact sync: the object waits, visibly, on its watermark.
            logger.exception(
                "applying %s changes failed for connector %s", object_type, self.ctx.connector.pk
            )
            WatermarkRow.objects.filter(pk=row.pk).update(last_error=f"{type(exc).__name__}: {exc}"[:500])
            self.counters.fail("APPLY_FAILED")
            return
        self.marks[object_type] = (row, wm)
        _save(row, wm)

    def finish(self) -> None:
        """Poll the objects that did not fit the shared composite call (one call of their own), then record a
        ``related`` run when anything happened ([R29])."""
        if self.left:
            body = {"allOrNone": False, "compositeRequest": [self._subrequest(o) for o in self.left]}
            try:
                response = self.ctx.client.restful("composite", method="POST", json=body)
            except CrmApiError as exc:
                if classify(exc.code, exc.status, exc.message).category in (
                    ErrorCategory.LIMIT,
                    ErrorCategory.AUTH,
                ):
                    raise
                WatermarkRow.objects.filter(connector=self.ctx.connector, object_type__in=self.left).update(
                    last_poll_at=timezone.now(), last_error=f"{exc}"[:500]
                )
                self.counters.fail(exc.code)
                response = {}
            for sub in response.get("compositeResponse") or ():
                if self.owns(sub):
                    self.apply(sub)
        counters = self.counters
        if counters.fetched or counters.failed:
            with runs.sync_run(self.ctx.connector, "related") as run:
                run.counters = counters


def riders(ctx: SyncContext, room: int) -> Riders:
    """The related objects' poll queries: the first ``room`` ride on the caller's composite call."""
    marks = {o: _load(ctx.connector, o) for o in RELATED_OBJECTS}
    room = max(0, room)
    return Riders(ctx, marks, list(RELATED_OBJECTS[:room]), list(RELATED_OBJECTS[room:]))


def poll(connector: Connector, *, client=None) -> RunCounters:
    """Poll the related objects on their own (one composite call): tests and manual runs."""
    ctx = SyncContext.load(connector, client)
    with runs.sync_run(connector, "related_poll", client=ctx.client):
        r = riders(ctx, 0)
        r.finish()
    return r.counters


def initial_import(connector: Connector, *, client=None) -> RunCounters:
    """Part of the explicit initial import ([R10], [R40]): the contact roles and campaign members that already exist
    in the CRM, 2,000 per page, applied with the same rules as the poll (their opportunities and campaigns come
    along). Watermarks do not move: changes since the connector's creation are the poll's."""
    ctx = SyncContext.load(connector, client)
    with runs.sync_run(connector, "related_import", client=ctx.client) as run:
        for object_type in ("OpportunityContactRole", "CampaignMember"):
            soql = f"SELECT {', '.join(FIELDS[object_type])} FROM {object_type}"
            for page in ctx.client.query_pages(soql, batch_size=2000):
                records = [r for r in page.get("records") or () if r.get("Id")]
                run.counters.fetched += len(records)
                APPLY[object_type](ctx, records, run.counters)
    return run.counters


def _load(connector: Connector, object_type: str) -> tuple[WatermarkRow, Watermark]:
    row, _ = WatermarkRow.objects.get_or_create(connector=connector, object_type=object_type)
    if row.modstamp is None:  # like leads and contacts: automatic sync starts from the connector's creation
        return row, Watermark(object_type, connector.created_at)
    return row, Watermark.from_json(
        {"object_type": object_type, "modstamp": row.modstamp.isoformat(), "recent_keys": row.recent_keys}
    )


def _save(row: WatermarkRow, wm: Watermark) -> None:
    now = timezone.now()
    row.modstamp, row.recent_keys = wm.modstamp, wm.to_json()["recent_keys"]
    row.last_poll_at = row.last_success_at = now
    row.last_error = ""
    row.save(update_fields=["modstamp", "recent_keys", "last_poll_at", "last_success_at", "last_error"])


def _apply_page(
    ctx: SyncContext,
    object_type: str,
    raw: list[dict],
    wm: Watermark,
    row: WatermarkRow,
    counters: RunCounters,
) -> Watermark:
    stamped = [(r, parse_datetime(r.get("SystemModstamp"))) for r in raw if r.get("Id")]
    counters.fetched += len(stamped)
    seen = set(wm.recent_keys)
    fresh: list[dict] = []
    pairs: list[tuple[str, dt.datetime]] = []
    for r, stamp in stamped:
        if stamp is None:
            _skip(counters, "no_modstamp")
            continue
        key = record_key(str(r["Id"]), stamp)
        pairs.append((str(r["Id"]), stamp))
        if key in seen:
            _skip(counters, "already_seen")
            continue
        seen.add(key)
        fresh.append(r)
    # No transaction around it: the apply may read from the CRM (never under the database write lock) and every step
    # is an idempotent upsert, so a crash before the watermark moves only replays the page ([R25]).
    if fresh:
        APPLY[object_type](ctx, fresh, counters)
    wm = wm.advance(pairs, overlap=OVERLAP)
    _save(row, wm)
    return wm


def _apply_opportunities(ctx: SyncContext, records: list[dict], counters: RunCounters) -> None:
    """[R40] mirror opportunities linked to this BU's prospects through a contact role (read-only)."""
    bu_id = ctx.connector.bu_id
    live = [r for r in records if not r.get("IsDeleted")]
    _skip(counters, "deleted_in_crm", len(records) - len(live))
    live = sharing.visible_opportunities(ctx, live, counters)  # [R35]
    ids = {str(r["Id"]) for r in live}
    known = set(Opportunity.objects.filter(bu_id=bu_id, crm_id__in=ids).values_list("crm_id", flat=True))
    unknown = ids - known
    roles: list[dict] = []
    if unknown:  # a new or never-mirrored deal: does one of its contacts sync with this BU?
        fields = ", ".join(FIELDS["OpportunityContactRole"])
        found = _queries(ctx, _in_chunks("OpportunityContactRole", fields, "OpportunityId", unknown, "roles"))
        roles = [r for rows in found.values() for r in rows]
        people = _prospects_by_crm_id(bu_id, [str(r.get("ContactId") or "") for r in roles])
        roles = [r for r in roles if _short(r.get("ContactId")) in people]
        wanted = {str(r["OpportunityId"]) for r in roles}
        _skip(counters, "no_synced_contact", len(unknown - wanted))
        live = [r for r in live if str(r["Id"]) in known or str(r["Id"]) in wanted]
    if live:
        result = campaign_services.upsert_opportunities(ctx.connector.bu, live)
        counters.created += len([r for r in live if str(r["Id"]) not in known])
        counters.updated += len([r for r in live if str(r["Id"]) in known])
        _skip(counters, "invalid", result.get("skipped", 0))
    if roles:
        campaign_services.upsert_contact_roles(ctx.connector.bu, roles)


def _apply_contact_roles(ctx: SyncContext, records: list[dict], counters: RunCounters) -> None:
    """[R40] contact roles of this BU's prospects; deleted roles are removed."""
    bu = ctx.connector.bu
    gone = [str(r["Id"]) for r in records if r.get("IsDeleted")]
    if gone:
        counters.updated += campaign_services.remove_contact_roles(bu, gone)
    live = [r for r in records if not r.get("IsDeleted")]
    if not live:
        return
    people = _prospects_by_crm_id(bu.pk, [str(r.get("ContactId") or "") for r in live])
    mirrored = dict(
        Opportunity.objects.filter(
            bu_id=bu.pk, crm_id__in={str(r.get("OpportunityId")) for r in live}
        ).values_list("crm_id", "pk")
    )
    known_roles = set(
        OpportunityContactRole.objects.filter(
            bu_id=bu.pk, crm_id__in=[str(r["Id"]) for r in live]
        ).values_list("crm_id", flat=True)
    )
    keep = [
        r
        for r in live
        if _short(r.get("ContactId")) in people
        or str(r["OpportunityId"]) in mirrored
        or str(r["Id"]) in known_roles
    ]
    _skip(counters, "no_synced_contact", len(live) - len(keep))
    missing = {str(r["OpportunityId"]) for r in keep} - set(mirrored)
    if missing:  # the deal did not change since the watermark: read it now
        fields = ", ".join(sharing.related_fields(ctx, "Opportunity", FIELDS["Opportunity"]))
        found = _queries(ctx, _in_chunks("Opportunity", fields, "Id", missing, "opps"))
        opps = sharing.visible_opportunities(
            ctx, [r for rows in found.values() for r in rows if not r.get("IsDeleted")], counters)
        if opps:
            campaign_services.upsert_opportunities(bu, opps)
            counters.created += len(opps)
    if keep:
        result = campaign_services.upsert_contact_roles(bu, keep)
        counters.updated += result.get("upserted", 0)
        _skip(counters, "opportunity_missing", result.get("skipped", 0))


def _apply_members(ctx: SyncContext, records: list[dict], counters: RunCounters) -> None:
    """[R38] CRM campaign members of this BU's prospects become (or update, or end) campaign memberships."""
    connector = ctx.connector
    bu = connector.bu
    gone = [r for r in records if r.get("IsDeleted")]
    if gone:
        _members_deleted(connector, gone, counters)
    live = [r for r in records if not r.get("IsDeleted")]
    if not live:
        return
    # [R24] our own write coming back: same member id, same status as we wrote.
    agreed = {
        (s.crm_id, s.synced_status)
        for s in CampaignMemberSync.objects.filter(
            connector=connector, crm_id__in=[str(r["Id"]) for r in live]
        )
    }
    echo = [r for r in live if (str(r["Id"]), str(r.get("Status") or "")) in agreed]
    _skip(counters, "echo", len(echo))
    live = [r for r in live if (str(r["Id"]), str(r.get("Status") or "")) not in agreed]
    people = _prospects_by_crm_id(bu.pk, [str(r.get("ContactId") or r.get("LeadId") or "") for r in live])
    live_people = [r for r in live if _short(r.get("ContactId") or r.get("LeadId")) in people]
    _skip(counters, "prospect_not_synced", len(live) - len(live_people))
    if not live_people:
        return
    campaign_ids = {str(r["CampaignId"]) for r in live_people if r.get("CampaignId")}
    known = {
        c[:15]
        for c in bu.campaigns.filter(
            crm_campaign_id__in=campaign_ids | {c[:15] for c in campaign_ids}
        ).values_list("crm_campaign_id", flat=True)
    }
    missing = {c for c in campaign_ids if c[:15] not in known}
    if missing:  # created in the CRM since the last metadata sync: connect them now ([R38])
        found = _queries(ctx, _in_chunks("Campaign", CAMPAIGN_FIELDS, "Id", missing, "campaigns"))
        campaign_services.upsert_campaigns(bu, [r for rows in found.values() for r in rows])
    # The services key prospects by their stored CRM ids: hand them the prospect's own form of the id.
    stored = {
        c[:15]: c
        for c in Prospect.objects.filter(pk__in=set(people.values())).values_list("crm_contact_id", flat=True)
        if c
    } | {
        c[:15]: c
        for c in Prospect.objects.filter(pk__in=set(people.values())).values_list("crm_lead_id", flat=True)
        if c
    }
    rows = []
    for r in live_people:
        row = dict(r)
        for key in ("ContactId", "LeadId"):
            if row.get(key):
                row[key] = stored.get(_short(row[key]), row[key])
        rows.append(row)
    result = campaign_services.upsert_campaign_members(bu, rows)
    counters.updated += result.get("upserted", 0)
    _skip(counters, "campaign_unknown", result.get("skipped", 0))
    by_id = {str(r["Id"]): str(r.get("Status") or "") for r in live_people}
    members = list(
        CampaignMember.objects.filter(bu_id=bu.pk, crm_id__in=list(by_id)).values_list("pk", "crm_id")
    )
    existing = {
        s.member_id: s
        for s in CampaignMemberSync.objects.filter(
            connector=connector, member_id__in=[pk for pk, _ in members]
        )
    }
    new = []
    for pk, crm_id in members:
        status = by_id[crm_id]
        sync = existing.get(pk)
        if sync is None:
            new.append(
                CampaignMemberSync(
                    connector=connector,
                    member_id=pk,
                    crm_id=crm_id,
                    synced_status=status,
                    target_status=status,
                    state=CampaignMemberSync.State.DONE,
                )
            )
        else:
            CampaignMemberSync.objects.filter(pk=sync.pk).update(
                crm_id=crm_id,
                synced_status=status,
                target_status=status,
                state=CampaignMemberSync.State.DONE,
                next_run_at=None,
                locked_until=None,
            )
    CampaignMemberSync.objects.bulk_create(new, ignore_conflicts=True)


def _members_deleted(connector: Connector, gone: list[dict], counters: RunCounters) -> None:
    """A member deleted in the CRM leaves the campaign in Loopline — unless the membership now belongs to a prospect
    that syncs with another CRM record (a CRM merge moved it to the survivor, [R32]): then it is written again for
    that record instead."""
    who = {str(r["Id"]): _short(r.get("ContactId") or r.get("LeadId")) for r in gone}
    remove: list[str] = []
    moved: list[int] = []
    for pk, crm_id, lead, contact in CampaignMember.objects.filter(
        bu_id=connector.bu_id, crm_id__in=list(who)
    ).values_list("pk", "crm_id", "prospect__crm_lead_id", "prospect__crm_contact_id"):
        if not who[crm_id] or who[crm_id] in {_short(lead), _short(contact)}:
            remove.append(crm_id)
        else:
            moved.append(pk)
    if moved:
        CampaignMember.objects.filter(pk__in=moved).update(crm_id="")
        CampaignMemberSync.objects.filter(connector=connector, member_id__in=moved).delete()
    counters.updated += campaign_services.remove_campaign_members(connector.bu, remove)


APPLY = {
    "Opportunity": _apply_opportunities,
    "OpportunityContactRole": _apply_contact_roles,
    "CampaignMember": _apply_members,
}


# --- Push: campaign members and email tasks ------------------------------------------------------------------------


def push(connector: Connector, *, client=None, force_scan: bool = False) -> dict[str, int]:
    """Queue and write what is due: campaign members ([R38]) and email Tasks ([R39]). Returns records written."""
    done = {"members": 0, "tasks": 0}
    now = time.monotonic()
    key = (connector.pk, connector.created_at)
    if force_scan or now - _last_scan.get(key, 0.0) >= SCAN_EVERY:
        _last_scan[key] = now
        queue_members(connector)
        queue_tasks(connector)
    elif now - _last_check.get(key, 0.0) < CHECK_EVERY:
        return done
    _last_check[key] = now
    due = timezone.now()
    has_members = CampaignMemberSync.objects.filter(
        connector=connector, state=CampaignMemberSync.State.PENDING, next_run_at__lte=due
    ).exists()
    has_tasks = CrmTaskLog.objects.filter(
        connector=connector, state=CrmTaskLog.State.PENDING, next_run_at__lte=due
    ).exists()
    if not (has_members or has_tasks):
        return done
    ctx = SyncContext.load(connector, client or shared_client(connector))
    if has_members:
        done["members"] = write_members(ctx)
    if has_tasks and budget.decision(connector).allows_bulk:  # [R27] at 90% of the share, logging tasks waits
        done["tasks"] = write_tasks(ctx)
    return done


def _connected_members(connector: Connector):
    return CampaignMember.objects.filter(
        bu_id=connector.bu_id,
        campaign__crm_campaign_id__gt="",
        prospect__is_deleted=False,
        prospect__do_not_sync=False,
        prospect__crm_deleted=False,
    ).filter(Q(prospect__crm_contact_id__gt="") | Q(prospect__crm_lead_id__gt=""))


def queue_members(connector: Connector, *, limit: int = 5000) -> int:
    """Memberships whose status the CRM does not hold yet get a pending row (idempotent; a row already pending or
    failed for the same status is left alone)."""
    settled = CampaignMemberSync.objects.filter(connector=connector, member=OuterRef("pk")).filter(
        Q(synced_status=OuterRef("status"))
        | Q(state=CampaignMemberSync.State.PENDING)
        | Q(state=CampaignMemberSync.State.FAILED, target_status=OuterRef("status"))
    )
    todo = list(_connected_members(connector).exclude(Exists(settled)).values_list("pk", "status")[:limit])
    if not todo:
        return 0
    now = timezone.now()
    with transaction.atomic():
        rows = dict(
            CampaignMemberSync.objects.filter(
                connector=connector, member_id__in=[pk for pk, _ in todo]
            ).values_list("member_id", "pk")
        )
        CampaignMemberSync.objects.bulk_create(
            [
                CampaignMemberSync(connector=connector, member_id=pk, target_status=status, next_run_at=now)
                for pk, status in todo
                if pk not in rows
            ],
            ignore_conflicts=True,
        )
        for pk, status in todo:
            if pk in rows:
                CampaignMemberSync.objects.filter(pk=rows[pk]).update(
                    state=CampaignMemberSync.State.PENDING, target_status=status, next_run_at=now, attempts=0
                )
    return len(todo)


@dataclass
class _Write:
    """One record to write and the durable row it belongs to."""

    row: Any
    object_type: str
    payload: dict[str, Any]
    method: str  # POST (create) | PATCH (update)
    prospect_id: int | None = None


def _send(ctx: SyncContext, writes: Sequence[_Write]) -> list[tuple[_Write, dict[str, Any]]]:
    """Send creates and updates through sObject Collections (≤200 each), five collections per composite call.
    Returns each write with its per-record result (``{"success", "id", "errors"}``)."""
    groups: list[tuple[str, list[_Write]]] = []
    for method in ("POST", "PATCH"):
        items = [w for w in writes if w.method == method]
        groups += [(method, items[i : i + COLLECTION]) for i in range(0, len(items), COLLECTION)]
    out: list[tuple[_Write, dict[str, Any]]] = []
    for start in range(0, len(groups), PER_CALL):
        chunk = groups[start : start + PER_CALL]
        body = {
            "allOrNone": False,
            "compositeRequest": [
                {
                    "method": method,
                    "url": f"/services/data/v{ctx.api_version}/composite/sobjects",
                    "referenceId": f"w{n}",
                    "body": {
                        "allOrNone": False,
                        "records": [{"attributes": {"type": w.object_type}, **w.payload} for w in items],
                    },
                }
                for n, (method, items) in enumerate(chunk)
            ],
        }
        try:
            response = ctx.client.restful("composite", method="POST", json=body)
        except CrmApiError as exc:
            info = classify(exc.code, exc.status, exc.message)
            if info.category in (ErrorCategory.LIMIT, ErrorCategory.AUTH):
                raise
            failure = {
                "success": False,
                "errors": [{"statusCode": exc.code, "message": exc.message}],
                "http_status": exc.status,
            }
            out += [(w, failure) for _, items in chunk for w in items]
            continue
        subs = {str(s.get("referenceId")): s for s in response.get("compositeResponse") or ()}
        for n, (_, items) in enumerate(chunk):
            sub = subs.get(f"w{n}") or {}
            status = int(sub.get("httpStatusCode") or 500)
            results = sub.get("body")
            if status >= 300 or not isinstance(results, list) or len(results) != len(items):
                first = (
                    results[0]
                    if isinstance(results, list) and results and isinstance(results[0], dict)
                    else {}
                )
                failure = {
                    "success": False,
                    "http_status": status,
                    "errors": [
                        {
                            "statusCode": first.get("errorCode")
                            or first.get("statusCode")
                            or f"HTTP_{status}",
                            "message": first.get("message") or "the CRM did not answer for this batch",
                        }
                    ],
                }
                out += [(w, failure) for w in items]
                continue
            out += list(zip(items, results, strict=True))
    return out


def _failure(
    ctx: SyncContext, write: _Write, result: dict[str, Any], crm_id: str, what: str
) -> dt.datetime | None:
    """Record a failed write in the error queue ([R26]). Returns when to retry (transient), or None (wait)."""
    error = (result.get("errors") or [{}])[0]
    code = str(error.get("statusCode") or error.get("errorCode") or "UNKNOWN_ERROR")
    message = f"{what}: {error.get('message') or 'no details'}"
    info = classify(code, result.get("http_status"), message)
    when = None
    if info.category is ErrorCategory.TRANSIENT:
        when = timezone.now() + dt.timedelta(
            seconds=backoff_delay(max(1, write.row.attempts), base=2.0, cap=900.0)
        )
    errors.record(
        ctx.connector,
        direction=TO_CRM,
        code=code,
        message=message,
        prospect_id=write.prospect_id,
        crm_id=crm_id,
        fields=list(error.get("fields") or ()),
        http_status=result.get("http_status"),
        next_retry_at=when,
    )
    return when


def write_members(ctx: SyncContext) -> int:
    """Write due membership rows as CampaignMember creates/updates ([R38], [R25])."""
    connector = ctx.connector
    claimed = claim_due(
        CampaignMemberSync.objects.filter(connector=connector, state=CampaignMemberSync.State.PENDING),
        limit=CLAIM,
        lease_seconds=LEASE_SECONDS,
    )
    if not claimed:
        return 0
    written = 0
    with runs.sync_run(connector, "members", client=ctx.client) as run:
        counters = run.counters
        members = {
            m.pk: m
            for m in CampaignMember.objects.filter(pk__in=[s.member_id for s in claimed]).select_related(
                "campaign", "prospect"
            )
        }
        now = timezone.now()
        ready: list[tuple[CampaignMemberSync, CampaignMember, str, str]] = []
        for sync in claimed:
            m = members.get(sync.member_id)
            p = m.prospect if m else None
            who = (p.crm_contact_id or p.crm_lead_id) if p else ""
            if (
                m is None
                or p is None
                or not who
                or not m.campaign.crm_campaign_id
                or p.is_deleted
                or p.do_not_sync
                or p.crm_deleted
            ):
                _skip(counters, "not_connected")
                _settle(sync, state=CampaignMemberSync.State.DONE)
                continue
            if sync.crm_id and sync.synced_status == m.status:
                counters.unchanged += 1
                _settle(sync, state=CampaignMemberSync.State.DONE)
                continue
            ready.append((sync, m, who, "ContactId" if p.crm_contact_id else "LeadId"))
        # A member may exist in the CRM already (added there, or our create's answer was lost): look first.
        new = [(s, m, who, key) for s, m, who, key in ready if not s.crm_id]
        existing: dict[tuple[str, str], dict] = {}
        if new:
            queries = []
            for n in range(0, len(new), COLLECTION):
                part = new[n : n + COLLECTION]
                campaigns = _soql_list({m.campaign.crm_campaign_id for _, m, _, _ in part})
                people = _soql_list({who for _, _, who, _ in part})
                queries.append(
                    (
                        f"members_{n}",
                        "SELECT Id, CampaignId, LeadId, ContactId, Status FROM CampaignMember "
                        f"WHERE CampaignId IN ({campaigns}) AND (ContactId IN ({people}) OR LeadId IN "
                        f"({people}))",
                    )
                )
            for rows in _queries(ctx, queries).values():
                for r in rows:
                    for key in ("ContactId", "LeadId"):
                        if r.get(key):
                            existing[(_short(r["CampaignId"]), _short(r[key]))] = r
        writes: list[_Write] = []
        for sync, m, who, key in ready:
            crm_id = sync.crm_id
            if not crm_id:
                found = existing.get((_short(m.campaign.crm_campaign_id), _short(who)))
                if found is not None:
                    crm_id = str(found["Id"])
                    if str(found.get("Status") or "") == m.status:
                        counters.unchanged += 1
                        _settle(sync, state=CampaignMemberSync.State.DONE, crm_id=crm_id, synced=m.status)
                        _member_crm_id(m, crm_id)
                        continue
            sync.target_status = m.status
            if crm_id:
                writes.append(
                    _Write(sync, "CampaignMember", {"Id": crm_id, "Status": m.status}, "PATCH", m.prospect_id)
                )
                sync.crm_id = crm_id
            else:
                writes.append(
                    _Write(
                        sync,
                        "CampaignMember",
                        {"CampaignId": m.campaign.crm_campaign_id, key: who, "Status": m.status},
                        "POST",
                        m.prospect_id,
                    )
                )
        for write, result in _send(ctx, writes):
            sync = write.row
            m = members[sync.member_id]
            if result.get("success"):
                crm_id = str(result.get("id") or sync.crm_id)
                _settle(
                    sync, state=CampaignMemberSync.State.DONE, crm_id=crm_id, synced=write.payload["Status"]
                )
                _member_crm_id(m, crm_id)
                if write.method == "POST":
                    counters.created += 1
                else:
                    counters.updated += 1
                written += 1
                continue
            code = str(((result.get("errors") or [{}])[0]).get("statusCode") or "")
            counters.fail(code or "UNKNOWN_ERROR")
            if code == "DUPLICATE_VALUE" and write.method == "POST" and sync.attempts < 5:
                # Added in the CRM meanwhile: the next attempt finds it and updates it instead.
                _settle(sync, state=CampaignMemberSync.State.PENDING, when=now + dt.timedelta(seconds=1))
                continue
            when = _failure(ctx, write, result, sync.crm_id, f"Campaign member of {m.campaign.name}")
            if when is not None:
                _settle(sync, state=CampaignMemberSync.State.PENDING, when=when)
            else:
                _settle(sync, state=CampaignMemberSync.State.FAILED)
    return written


def _settle(
    sync: CampaignMemberSync,
    *,
    state: str,
    crm_id: str | None = None,
    synced: str | None = None,
    when: dt.datetime | None = None,
) -> None:
    values: dict[str, Any] = {
        "state": state,
        "locked_until": None,
        "next_run_at": when,
        "target_status": sync.target_status,
    }
    if crm_id:
        values["crm_id"] = crm_id
    if synced is not None:
        values["synced_status"] = synced
    CampaignMemberSync.objects.filter(pk=sync.pk).update(**values)


def _member_crm_id(member: CampaignMember, crm_id: str) -> None:
    if member.crm_id != crm_id:
        CampaignMember.objects.filter(pk=member.pk).update(crm_id=crm_id)


# --- Email sends logged as CRM Tasks ([R39]) ------------------------------------------------------------------------


def task_reference(connector: Connector, delivery_id: int) -> str:
    """The reference a task carries in its description: stable per connector and ledger row."""
    seed = f"{connector.pk}:{connector.created_at.isoformat() if connector.created_at else ''}"
    return f"[Loopline task LLT-{hashlib.sha256(seed.encode()).hexdigest()[:10]}-{delivery_id}]"


def queue_tasks(connector: Connector, *, limit: int = 20000) -> int:
    """Queue one task row per email the send ledger marks sent to a synced prospect since the cursor (a window
    with an overlap; ledger rows that already have a task row are left out, so the overlap is harmless). Off: the
    cursor is forgotten, so turning the setting on is not retroactive. While the connector is paused the cursor
    waits: sends made meanwhile are logged after resuming ([R4])."""
    from ..services import settings_of

    row, _ = WatermarkRow.objects.get_or_create(connector=connector, object_type=TASK_CURSOR)
    if not settings_of(connector).get("log_email_tasks"):
        if row.modstamp is not None:
            WatermarkRow.objects.filter(pk=row.pk).update(modstamp=None)
        return 0
    now = timezone.now()
    if row.modstamp is None:
        WatermarkRow.objects.filter(pk=row.pk).update(modstamp=now, last_success_at=now)
        return 0
    rows = _sent_deliveries(connector, row.modstamp - TASK_OVERLAP, limit)
    subjects = _Subjects(rows)
    logs = [_task_row(connector, r, subjects, now) for r in rows]
    CrmTaskLog.objects.bulk_create(logs, ignore_conflicts=True, batch_size=1000)
    # A full batch may leave more in the window: the cursor stays, the next scan continues (done rows drop out).
    cursor = row.modstamp if len(rows) >= limit else now
    WatermarkRow.objects.filter(pk=row.pk).update(modstamp=cursor, last_success_at=now)
    return len(logs)


def _sent_deliveries(connector: Connector, since: dt.datetime, limit: int) -> list[dict[str, Any]]:
    from loopline.emails.models import Delivery, EmailSend

    sends = (
        EmailSend.objects.filter(bu_id=connector.bu_id, started_at__isnull=False)
        .exclude(kind=EmailSend.Kind.TEST)
        .filter(Q(finished_at__isnull=True) | Q(finished_at__gte=since))
    )
    logged = CrmTaskLog.objects.filter(connector=connector, delivery_id=OuterRef("pk"))
    rows: Any = (
        Delivery.objects.filter(
            send__in=sends,
            status=Delivery.Status.SENT,
            sent_at__gte=since,
            prospect__isnull=False,
            prospect__is_deleted=False,
            prospect__do_not_sync=False,
            prospect__crm_deleted=False,
        )
        .filter(Q(prospect__crm_contact_id__gt="") | Q(prospect__crm_lead_id__gt=""))
        .exclude(Exists(logged))
        .order_by("sent_at", "pk")
        .values(
            "pk",
            "sent_at",
            "address",
            "send_id",
            "prospect_id",
            "prospect__crm_contact_id",
            "prospect__crm_lead_id",
        )[:limit]
    )
    return list(rows)


class _Subjects:
    """Each send's subject as its recipients got it: one compiled template per send, prospects loaded in bulk."""

    def __init__(self, rows: Sequence[dict[str, Any]]):
        from loopline.emails.models import EmailSend

        self.snapshots = dict(
            EmailSend.objects.filter(pk__in={r["send_id"] for r in rows}).values_list("pk", "snapshot")
        )
        self.templates: dict[int, Any] = {}
        self.people: dict[int, dict[str, Any]] = {}
        merged = [
            r["prospect_id"]
            for r in rows
            if "{" in str((self.snapshots.get(r["send_id"]) or {}).get("subject"))
        ]
        for n in range(0, len(merged), 1000):
            people: Any = Prospect.objects.filter(pk__in=merged[n : n + 1000]).values()
            self.people.update({p["id"]: p for p in people})

    def name(self, send_id: int) -> str:
        return str((self.snapshots.get(send_id) or {}).get("email_name") or "email")

    def subject(self, send_id: int, prospect_id: int) -> str:
        """Empty when a merge field cannot be filled here (the caller falls back to the email's name)."""
        source = str((self.snapshots.get(send_id) or {}).get("subject") or "")
        if "{" not in source:
            return " ".join(source.split())
        from loopline.emails import rendering

        try:
            if send_id not in self.templates:
                self.templates[send_id] = rendering.TEXT_ENV.from_string(source)
            prospect = rendering.prospect_context(self.people.get(prospect_id) or {}, {})
            text = self.templates[send_id].render(
                prospect=prospect,
                account=rendering.account_context(prospect),
                user=rendering.user_context(None),
                bu={},
                dynamic=lambda key: "",
            )
        except Exception:  # any template problem: the email's name is a fine subject
            return ""
        return " ".join(text.split())


def _task_row(connector: Connector, r: dict[str, Any], subjects: _Subjects, now: dt.datetime) -> CrmTaskLog:
    from django.conf import settings
    from django.urls import reverse

    name = subjects.name(r["send_id"])
    subject = subjects.subject(r["send_id"], r["prospect_id"]) or name
    sent_at: dt.datetime = r["sent_at"]
    report = f"{settings.PUBLIC_BASE_URL}{reverse('emails:send_detail', kwargs={'pk': r['send_id']})}"
    description = (
        f'Loopline sent the email "{name}" to {r["address"]} on {sent_at:%Y-%m-%d %H:%M} UTC.\n'
        f"Email report: {report}\n\n{task_reference(connector, r['pk'])}"
    )
    return CrmTaskLog(
        connector=connector,
        delivery_id=r["pk"],
        prospect_id=r["prospect_id"],
        who_id=r["prospect__crm_contact_id"] or r["prospect__crm_lead_id"],
        subject=f"Email: {subject}"[:255],
        activity_date=sent_at.date(),
        description=description,
        next_run_at=now,
    )


def write_tasks(ctx: SyncContext) -> int:
    """Write due task rows as completed CRM Tasks, 200 per collection ([R39]); exactly once ([R25])."""
    connector = ctx.connector
    claimed = claim_due(
        CrmTaskLog.objects.filter(connector=connector, state=CrmTaskLog.State.PENDING),
        limit=CLAIM,
        lease_seconds=LEASE_SECONDS,
    )
    if not claimed:
        return 0
    written = 0
    with runs.sync_run(connector, "tasks", client=ctx.client) as run:
        counters = run.counters
        # Claimed before: the task may have reached the CRM (crash or lost answer). Find it by its reference.
        again = [t for t in claimed if t.attempts > 1]
        if again:
            since = min(t.created_at for t in again) - dt.timedelta(hours=1)
            queries = [
                (
                    f"tasks_{n}",
                    f"SELECT Id, WhoId, Description FROM Task WHERE WhoId IN "
                    f"({_soql_list({t.who_id for t in again[n : n + COLLECTION]})}) AND CreatedDate >= "
                    f"{since.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}",
                )
                for n in range(0, len(again), COLLECTION)
            ]
            found: dict[str, str] = {}
            for rows in _queries(ctx, queries).values():
                for r in rows:
                    text = str(r.get("Description") or "")
                    start = text.rfind("[Loopline task ")
                    if start >= 0:
                        found[text[start : text.find("]", start) + 1]] = str(r["Id"])
            for t in again:
                crm_id = found.get(task_reference(connector, t.delivery_id))
                if crm_id:
                    _task_done(t, crm_id)
                    counters.unchanged += 1
            claimed = [t for t in claimed if t.state == CrmTaskLog.State.PENDING]
        writes = [
            _Write(
                t,
                "Task",
                {
                    "WhoId": t.who_id,
                    "Subject": t.subject,
                    "ActivityDate": t.activity_date.isoformat(),
                    "Status": "Completed",
                    "Priority": "Normal",
                    "TaskSubtype": "Email",
                    "Description": t.description,
                },
                "POST",
                t.prospect_id,
            )
            for t in claimed
        ]
        for write, result in _send(ctx, writes):
            t = write.row
            if result.get("success"):
                _task_done(t, str(result.get("id") or ""))
                counters.created += 1
                written += 1
                continue
            counters.fail(str(((result.get("errors") or [{}])[0]).get("statusCode") or "UNKNOWN_ERROR"))
            when = _failure(ctx, write, result, t.who_id, f'Email task "{t.subject}"')
            CrmTaskLog.objects.filter(pk=t.pk).update(
                state=CrmTaskLog.State.PENDING if when else CrmTaskLog.State.FAILED,
                next_run_at=when,
                locked_until=None,
            )
    return written


def _task_done(t: CrmTaskLog, crm_id: str) -> None:
    t.state = CrmTaskLog.State.DONE
    CrmTaskLog.objects.filter(pk=t.pk).update(
        state=CrmTaskLog.State.DONE,
        crm_id=crm_id,
        next_run_at=None,
        locked_until=None,
        done_at=timezone.now(),
    )


def retry_for(connector: Connector, prospect_id: int) -> int:
    """The error queue's Retry: the prospect's failed member and task rows are due again ([R26])."""
    now = timezone.now()
    n = CampaignMemberSync.objects.filter(
        connector=connector, member__prospect_id=prospect_id, state=CampaignMemberSync.State.FAILED
    ).update(state=CampaignMemberSync.State.PENDING, next_run_at=now, attempts=0)
    n += CrmTaskLog.objects.filter(
        connector=connector, prospect_id=prospect_id, state=CrmTaskLog.State.FAILED
    ).update(state=CrmTaskLog.State.PENDING, next_run_at=now, attempts=0)
    return n


def pending_counts(connector: Connector) -> dict[str, int]:
    """Backlogs for the status page."""
    members = CampaignMemberSync.objects.filter(
        connector=connector, state=CampaignMemberSync.State.PENDING
    ).count()
    tasks = CrmTaskLog.objects.filter(connector=connector, state=CrmTaskLog.State.PENDING).count()
    return {"members": members, "tasks": tasks}
