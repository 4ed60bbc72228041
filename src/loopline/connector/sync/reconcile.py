"""Scheduled reconciliation (issue #5): compare both sides and repair the drift polling missed ([R22], [R25]).

For each polled object the CRM side is every live record's mapped fields, read as ordinary query pages; the Loopline
side is the last agreed hash of each link whose record the prospect currently syncs with (``last_read_hash`` or
``last_written_hash``). Both are summarised per key range (count + digest, ``engine.reconcile``); only ranges that
differ are compared key by key. Then:

- a record whose values differ from the agreed ones (a change polling missed) is applied as a normal pull would,
  field by field under the sync behaviours;
- a CRM record with no link, changed since the connector was set up, is offered to matching and the creation rules
  as a poll would (older ones are the initial import's job, an explicit admin action: they are only counted);
- a link whose record the query did not return is re-read with ``queryAll``: a deleted record takes the deletion path
  ([R30]); one the connector user can no longer see is reported.

The repair is ordinary sync, so it is idempotent and echo-safe; watermarks are not touched. At most ``limit`` records
are repaired per run (the rest next run); the run's note says what was compared and repaired.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F

from ..engine import RunCounters
from ..engine.capture import build_soql, select_fields
from ..engine.model import CrmObject, CrmRecord
from ..engine.reconcile import compare, differing_buckets, summarise
from ..engine.resolve import record_hash
from ..models import Connector, CrmLink
from . import runs
from .context import SyncContext
from .pull import OVERLAP, _pages, apply_records, fetch_records

logger = logging.getLogger("loopline.connector.sync")

BUCKETS = 64
REPAIR_LIMIT = 2000
FETCH_CHUNK = 200  # ids per "WHERE Id IN (…)" re-read


@dataclass
class ObjectReport:
    object_type: str
    crm_records: int = 0
    links: int = 0
    ranges: int = BUCKETS
    ranges_differing: int = 0
    changed: int = 0
    unlinked: int = 0
    deleted: int = 0
    not_visible: int = 0
    not_imported: int = 0
    repaired: int = 0
    left_for_next_run: int = 0

    def line(self) -> str:
        return (f"{self.object_type}: {self.crm_records} CRM records vs {self.links} links, "
                f"{self.ranges_differing}/{self.ranges} ranges differ; {self.changed} changed, {self.unlinked} "
                f"unlinked, {self.deleted} deleted, {self.not_visible} not visible; {self.repaired} re-applied"
                + (f", {self.left_for_next_run} left for the next run" if self.left_for_next_run else "")
                + (f" ({self.not_imported} older records never imported: the initial import brings them)"
                   if self.not_imported else ""))


@dataclass
class ReconcileReport:
    objects: list[ObjectReport] = field(default_factory=list)
    counters: RunCounters = field(default_factory=RunCounters)

    @property
    def in_sync(self) -> bool:
        return all(not (o.changed or o.unlinked or o.deleted or o.not_visible) for o in self.objects)

    def summary(self) -> str:
        head = "in sync" if self.in_sync else "drift repaired"
        return f"{head} — " + "; ".join(o.line() for o in self.objects)


def _crm_query(ctx: SyncContext, object_type: str) -> str:
    # A converted lead lives on as its contact ([R13]); its lead is history, not drift. A person contact syncs as its
    # person account ([R14]).
    conditions = [*ctx.soql_filter(object_type), *(["IsConverted = false"] if object_type == CrmObject.LEAD else [])]
    return build_soql(object_type, select_fields(object_type, ctx.mappings), None, conditions=conditions,
                      ordered=False)


def _current_links(connector: Connector, object_type: str) -> dict[str, tuple[str, str]]:
    """crm id → (last read hash, last written hash) for links whose record the prospect syncs with now."""
    links = CrmLink.objects.filter(connector=connector, crm_object=object_type, prospect__is_deleted=False,
                                   prospect__crm_deleted=False)
    if object_type == CrmObject.LEAD:
        links = links.filter(prospect__crm_lead_id=F("crm_id"), prospect__crm_contact_id="")
    elif object_type == CrmObject.CONTACT:
        links = links.filter(prospect__crm_contact_id=F("crm_id"))
    elif object_type == CrmObject.PERSON_ACCOUNT:
        links = links.filter(prospect__crm_account_id=F("crm_id"))
    return {crm_id: (read, written) for crm_id, read, written
            in links.values_list("crm_id", "last_read_hash", "last_written_hash").iterator(chunk_size=5000)}


def _apply(ctx: SyncContext, records: Sequence[CrmRecord], counters: RunCounters) -> None:
    for start in range(0, len(records), 500):
        with transaction.atomic():
            apply_records(ctx, records[start:start + 500], counters)


def reconcile(connector: Connector, *, client=None, limit: int = REPAIR_LIMIT,
              objects: Sequence[str] | None = None) -> ReconcileReport:
    ctx = SyncContext.load(connector, client)
    objects = ctx.polled_objects if objects is None else objects  # [R14] person accounts when synced
    report = ReconcileReport()
    with runs.sync_run(connector, "reconcile", client=ctx.client) as run:
        report.counters = run.counters
        budget_left = limit
        since = connector.created_at - OVERLAP
        for object_type in objects:
            rep = ObjectReport(object_type)
            report.objects.append(rep)
            agreed = _current_links(connector, object_type)
            rep.links = len(agreed)
            crm_hashes: dict[str, str] = {}
            drifted: dict[str, CrmRecord] = {}  # kept for the repair, up to the limit
            first = ctx.client.restful("query", params={"q": _crm_query(ctx, object_type)},
                                       headers={"Sforce-Query-Options": "batchSize=2000"})
            for records in _pages(ctx, first, object_type):
                for r in records:
                    if r.id not in agreed and r.system_modstamp is not None and r.system_modstamp < since:
                        rep.not_imported += 1
                        continue
                    h = record_hash(r, ctx.mappings)
                    crm_hashes[r.id] = h
                    if h not in agreed.get(r.id, ()) and len(drifted) < budget_left:
                        drifted[r.id] = r
            rep.crm_records = len(crm_hashes)
            report.counters.fetched += rep.crm_records
            # The Loopline side's hash is whichever agreed hash the CRM shows, else the last read one.
            ours = {crm_id: (written if crm_hashes.get(crm_id) == written and written else read)
                    for crm_id, (read, written) in agreed.items()}
            rep.ranges_differing = len(differing_buckets(summarise(ours, BUCKETS), summarise(crm_hashes, BUCKETS)))
            diff = compare(ours, crm_hashes, BUCKETS)
            rep.changed, rep.unlinked = len(diff.changed), len(diff.missing_in_loopline)
            repair = [drifted[i] for i in diff.to_refetch if i in drifted]
            rep.left_for_next_run = len(diff.to_refetch) - len(repair)
            missing = list(diff.missing_in_crm)[:max(0, budget_left - len(repair))]
            rep.left_for_next_run += len(diff.missing_in_crm) - len(missing)
            for start in range(0, len(missing), FETCH_CHUNK):
                found = fetch_records(ctx, object_type, missing[start:start + FETCH_CHUNK])  # queryAll: deleted too
                rep.deleted += sum(1 for r in found if r.is_deleted)
                repair.extend(found)
            seen = {r.id for r in repair}
            rep.not_visible = sum(1 for i in missing if i not in seen)
            _apply(ctx, repair, report.counters)
            rep.repaired = len(repair)
            budget_left = max(0, budget_left - len(repair))
        report.counters.note = report.summary()[:200]
    logger.info("connector %s reconciliation: %s", connector.pk, report.summary())
    return report


def reconcile_due_connectors() -> dict[str, str]:
    """The scheduled pass: every active connector that is not waiting for the API limit."""
    from django.utils import timezone

    out: dict[str, str] = {}
    now = timezone.now()
    for connector in Connector.objects.select_related("bu").filter(status=Connector.Status.ACTIVE):
        if connector.paused_until and connector.paused_until > now:
            out[str(connector.pk)] = "skipped: waiting for the API limit"
            continue
        try:
            out[str(connector.pk)] = reconcile(connector).summary()
        except Exception as exc:  # one connector's failure never stops the others
            logger.exception("reconciliation of connector %s failed", connector.pk)
            out[str(connector.pk)] = f"failed: {exc}"
    return out
