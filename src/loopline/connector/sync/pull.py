"""CRM → Loopline ([R9], [R10], [R13], [R19], [R22], [R24], [R31]).

:func:`poll` asks one composite call for every polled object's changes since its watermark minus the overlap
(``queryAll``, so deletions arrive as ``IsDeleted``), follows ``nextRecordsUrl`` for big windows, and applies the
records chunk by chunk. After each chunk commits, the watermark advances to the last applied record — never past a
fetched record not yet applied — so a worker killed mid-poll replays at most one chunk, and the overlap keys make the
replay a no-op ([R25]).

Per record (engine design note 9): de-dup → echo check → match (or create, [R10]) → lifecycle → resolve → apply
``to_loopline`` through ``update_prospect(..., source="crm")`` (the outbox ignores CRM-sourced changes, so nothing
echoes back) and queue ``to_crm`` conflict winners in the outbox → update the ``CrmLink`` (hashes, baseline,
modstamp). New prospects are created in bulk (``bulk_upsert_prospects``, the same rules as any import, [R12]).

:func:`initial_import` is the explicit initial import ([R10]): every live Lead and Contact, 2,000 per page.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from loopline.platform.dbstats import GrowthAnalyzer
from loopline.prospects import services as prospect_services
from loopline.prospects.fields import field_specs
from loopline.prospects.models import Prospect

from .. import outbox, sharing
from ..engine import (
    CrmRecord,
    RunCounters,
    SkipReason,
    Watermark,
    decide_lifecycle,
    decide_prospect_creation,
    is_echo,
    match_prospect,
    record_hash,
    resolve,
)
from ..engine.capture import (
    OverlapCount,
    PollQuery,
    PollSettings,
    build_soql,
    next_poll_interval,
    overlap_count,
    poll_query,
    select_fields,
)
from ..engine.lifecycle import LifecycleAction
from ..engine.matching import Link, ProspectMatchOutcome
from ..engine.model import CrmObject, MatchingMode, id18, sobject_name
from ..engine.resolve import EchoVerdict
from ..metrics import SYNC_LATENCY, SYNCED_RECORDS
from ..models import Connector, CrmLink, SyncError
from ..models import Watermark as WatermarkRow
from ..salesforce.client import CrmApiError
from . import budget, deletions, errors, fastwrite, related, runs
from .context import POLLED_OBJECTS, SyncContext
from .snapshots import settle_pending_write, snapshot, split_writes, state_of

logger = logging.getLogger("loopline.connector.pull")

CHUNK = 2000
# The import's lookups (by e-mail, by CRM id) need the planner to know how big these tables have grown.
LOAD_STATS = GrowthAnalyzer(Prospect._meta.db_table, CrmLink._meta.db_table)
OVERLAP = dt.timedelta(seconds=60)
COUNT_REF = "count_"  # composite referenceId prefix of an overlap count
FROM_CRM = SyncError.Direction.FROM_CRM


# --- Watermarks ---------------------------------------------------------------------------------------------------


def load_watermark(connector: Connector, object_type: str) -> tuple[WatermarkRow, Watermark]:
    row, _ = WatermarkRow.objects.get_or_create(connector=connector, object_type=object_type)
    if row.modstamp is None:
        # Decision: automatic sync starts from the connector's creation; older records arrive through the explicit
        # initial import ([R10] "not retroactive").
        return row, Watermark(object_type, connector.created_at)
    return row, Watermark.from_json({"object_type": object_type, "modstamp": row.modstamp.isoformat(),
                                     "recent_keys": row.recent_keys})


def save_watermark(row: WatermarkRow, wm: Watermark, *, success: bool = True) -> None:
    data = wm.to_json()
    now = timezone.now()
    row.modstamp = wm.modstamp
    row.recent_keys = data["recent_keys"]
    row.last_poll_at = now
    fields = ["modstamp", "recent_keys", "last_poll_at"]
    if success:
        row.last_success_at, row.last_error = now, ""
        fields += ["last_success_at", "last_error"]
    row.save(update_fields=fields)


# --- Polling ------------------------------------------------------------------------------------------------------


def _pages(ctx: SyncContext, first: dict, object_type: str, *, precompute: bool = False
           ) -> Iterator[list[CrmRecord]]:
    """Yield result pages as records, fetching and parsing the next page in a background thread while the caller
    applies the current one: the CRM's answer time and the parsing overlap our database work. ``precompute`` also
    derives each record's new-prospect values there (:meth:`SyncContext.precompute`; the initial import, where most
    records become prospects). The background work is pure: no database access."""
    from concurrent.futures import ThreadPoolExecutor

    def prepare(raw: list[dict]) -> list[CrmRecord]:
        records = [CrmRecord.from_api(object_type, r) for r in raw]
        if precompute:
            ctx.precompute([r for r in records if not r.is_deleted])
        return records

    def fetch(url: str) -> tuple[dict, list[CrmRecord]]:
        page = ctx.client.restful(url.split(f"/v{ctx.api_version}/", 1)[-1])
        return page, prepare(page.get("records") or [])

    page, records = first, prepare(first.get("records") or [])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-page") as pool:
        while True:
            upcoming = None
            if not page.get("done", True) and page.get("nextRecordsUrl"):
                upcoming = pool.submit(fetch, page["nextRecordsUrl"])
            yield records
            if upcoming is None:
                return
            page, records = upcoming.result()


def poll(connector: Connector, *, client=None) -> RunCounters:
    """One poll of every polled object in one composite call ([R22]); returns the run's counters."""
    ctx = SyncContext.load(connector, client)
    with runs.sync_run(connector, "pull", client=ctx.client) as run:
        counters = run.counters
        sharing.recheck_if_pending(ctx, counters)  # [R36] the sharing rule changed: re-read the linked records
        marks = {o: load_watermark(connector, o) for o in ctx.polled_objects}  # [R14] person accounts when on
        own_user = connector.connector_user_id
        # Our own writes' echoes filling the overlap window are counted, not read again (see OverlapCount).
        checks: dict[str, OverlapCount] = {}
        for o, (_, wm) in marks.items():
            # A composite call holds at most five queries: an object without room for its count reads its window.
            if len(marks) + len(checks) < 5 and (
                    c := overlap_count(wm, own_user, OVERLAP, conditions=ctx.soql_filter(o))) is not None:
                checks[o] = c
        queries = [poll_query(wm, ctx.mappings, overlap=OVERLAP, recount=checks.get(o),
                              extra_fields=sharing.query_fields(ctx, o), conditions=ctx.soql_filter(o))
                   for o, (_, wm) in marks.items()]
        subrequests = [{"method": "GET", "url": q.url(ctx.api_version), "referenceId": q.object_type}
                       for q in queries]
        subrequests += [{"method": "GET", "url": c.url(ctx.api_version), "referenceId": f"{COUNT_REF}{o}"}
                        for o, c in checks.items()]
        # [R38]/[R40] campaign members, opportunities and contact roles ride on the same call (≤5 queries).
        riders = related.riders(ctx, room=5 - len(subrequests))
        body = {"allOrNone": False, "compositeRequest": subrequests + riders.subrequests()}
        started = timezone.now()
        response = ctx.client.restful("composite", method="POST", json=body)
        subs = list(response.get("compositeResponse") or ())
        counts = {str(s.get("referenceId"))[len(COUNT_REF):]: s for s in subs
                  if str(s.get("referenceId")).startswith(COUNT_REF)}
        for sub in subs:
            if riders.owns(sub):
                riders.apply(sub)
                continue
            object_type = str(sub.get("referenceId"))
            if object_type.startswith(COUNT_REF):
                continue
            row, wm = marks[object_type]
            _raise_for_status(sub, row)
            read: set[str] = set()
            for records in _pages(ctx, sub.get("body") or {}, object_type):
                read.update(r.id for r in records)
                wm = apply_page(ctx, records, wm, row, counters)
            check = checks.get(object_type)
            if check is not None and not _window_complete(check, counts.get(object_type), read):
                # One of ours committed late into the window (or the count failed): read those after all.
                fields = select_fields(object_type, ctx.mappings, sharing.query_fields(ctx, object_type))
                soql = build_soql(object_type, fields, None, conditions=check.window())
                url = PollQuery(object_type, soql, check.since).url(ctx.api_version)
                first = ctx.client.restful(url.split(f"/v{ctx.api_version}/", 1)[-1])
                for records in _pages(ctx, first, object_type):
                    wm = apply_page(ctx, records, wm, row, counters)
            # Every page read and applied: an idle object's next window no longer re-reads its last burst.
            save_watermark(row, wm.settle(started, OVERLAP))
        riders.finish()
        budget.lift_pause(connector)
        if counters.fetched == 0:
            counters.note = "no changes in the CRM since the last poll"
    return counters


def _raise_for_status(sub: dict, row: WatermarkRow) -> None:
    status = int(sub.get("httpStatusCode") or 500)
    if status < 300:
        return
    body_ = sub.get("body")
    first = body_[0] if isinstance(body_, list) and body_ else {}
    code = str(first.get("errorCode") or f"HTTP_{status}")
    message = str(first.get("message") or "poll failed")
    WatermarkRow.objects.filter(pk=row.pk).update(last_poll_at=timezone.now(), last_error=f"{code}: {message}"[:500])
    raise CrmApiError(code, message, status)


def _window_complete(check: OverlapCount, sub: dict | None, read_ids: Iterable[str]) -> bool:
    if sub is None or int(sub.get("httpStatusCode") or 500) >= 300:
        return False
    total = (sub.get("body") or {}).get("totalSize")
    return isinstance(total, int) and check.complete(total, read_ids)


def apply_page(ctx: SyncContext, records: Sequence[CrmRecord], wm: Watermark, row: WatermarkRow,
               counters: RunCounters, *, explicit: bool = False) -> Watermark:
    counters.fetched += len(records)
    fresh, dropped = wm.filter_new(records)
    if dropped:
        counters.skip(SkipReason.ALREADY_SEEN, dropped)
    for start in range(0, len(fresh), CHUNK):
        chunk = fresh[start:start + CHUNK]
        with transaction.atomic():
            apply_records(ctx, chunk, counters, explicit=explicit)
            wm = wm.advance(chunk, pending=fresh[start + CHUNK:], overlap=OVERLAP,
                            own_user=ctx.connector.connector_user_id)
            save_watermark(row, wm)
    if not fresh and records:
        wm = wm.advance([], overlap=OVERLAP)
    return wm


def next_interval(connector: Connector, recent_counts: Sequence[int]) -> float:
    """Seconds until the next poll: adaptive ([R22]), stretched by the budget ([R27])."""
    from . import budget

    raw = ctx_settings(connector)
    base = max(1.0, float(raw["poll_interval_seconds"]))
    maximum = max(base, float(raw["max_poll_interval_seconds"]))
    settings = PollSettings(base=dt.timedelta(seconds=base), minimum=dt.timedelta(seconds=min(2.0, base)),
                            maximum=dt.timedelta(seconds=maximum))
    decision = budget.decision(connector)
    return next_poll_interval(recent_counts, settings, budget_stretch=decision.poll_stretch).total_seconds()


def ctx_settings(connector: Connector) -> dict[str, Any]:
    from ..services import settings_of

    return settings_of(connector)


# --- Applying records ---------------------------------------------------------------------------------------------


def _candidates(bu_id: int, records: Sequence[CrmRecord]) -> list[Prospect]:
    ids: set[str] = set()
    for r in records:
        ids.add(r.id)
        ids.add(r.id[:15])
        if r.converted_contact_id:
            ids.add(r.converted_contact_id)
        if r.person_contact_id:
            ids.add(r.person_contact_id)
    # Account ids (prefix 001, person accounts) are the only ones an account id column can hold; leaving the
    # clause out otherwise keeps every branch of the OR on an index.
    accounts = {i for i in ids if i.startswith("001")}
    emails = {r.email for r in records if r.email}
    pks = fastwrite.select_pks(
        Prospect, "bu_id = %b AND merged_into_id IS NULL AND (crm_lead_id = ANY(%b) OR crm_contact_id = ANY(%b)"
        + (" OR crm_account_id = ANY(%b)" if accounts else "") + " OR email = ANY(%b))",
        [bu_id, list(ids), list(ids), *([list(accounts)] if accounts else []), list(emails)])
    if pks is not None:
        if not pks:  # the usual case of an initial import: nothing to load
            return []
        found = Prospect.objects.filter(pk__in=pks)
    else:
        query = Q(crm_lead_id__in=ids) | Q(crm_contact_id__in=ids)
        if accounts:
            query |= Q(crm_account_id__in=accounts)
        if emails:
            query |= Q(email__in=emails)
        found = Prospect.objects.filter(query, bu_id=bu_id, merged_into__isnull=True)
    return list(found.select_related("source_campaign", "bu"))


def apply_records(ctx: SyncContext, records: Sequence[CrmRecord], counters: RunCounters, *,
                  explicit: bool = False) -> dict[str, int]:
    """Apply CRM records to Loopline (call inside a transaction). Returns CRM id → prospect id for the records that
    now belong to a prospect."""
    connector = ctx.connector
    result: dict[str, int] = {}
    records = sharing.screen(ctx, records, counters)  # [R34]-[R36] what this BU sees
    if not records:
        return result
    records, link_bumps, links = _skip_known(ctx, records, counters, result)
    if not records:
        _bump(link_bumps)
        return result
    prospects = {p.pk: p for p in _candidates(connector.bu_id, records)}
    snaps = {pk: snapshot(p, ctx.mappings) for pk, p in prospects.items()}
    to_create: list[CrmRecord] = []
    now = timezone.now()
    by_key: dict[str, list] = {}
    for s in snaps.values():
        for value in (s.crm_lead_id, s.crm_contact_id, s.crm_account_id):
            if value:
                by_key.setdefault(id18(value).lower(), []).append(s)
        if s.email:
            by_key.setdefault(s.email, []).append(s)
    for record in records:
        key = id18(record.id).lower()
        link = links.get(key)
        settle_pending_write(link, record, ctx.mappings)
        state = state_of(link)
        found = {id(s): s for k in (key, record.email, id18(record.person_contact_id or "").lower()) if k
                 for s in by_key.get(k, ())}
        candidates = [s for s in found.values() if s.links_to(record) or (record.email and s.email == record.email)]
        match = match_prospect(record, candidates, ctx.settings)
        echo = is_echo(record, state, ctx.settings.connector_user_id, ctx.mappings, client_id=ctx.settings.client_id)
        # Snapshots are keyed by the prospect's integer pk; the engine types ids as ``int | str``.
        matched = snaps.get(match.prospect_id) if isinstance(match.prospect_id, int) else None
        lifecycle_news = record.is_deleted or (record.is_lead and record.is_converted) or (
            matched is not None and (matched.crm_deleted or matched.is_deleted or not matched.links_to(record)))
        if echo.skip and not (lifecycle_news and echo.verdict is not EchoVerdict.ALREADY_SEEN):
            counters.skip(echo.skip_reason or SkipReason.UNCHANGED)
            if link is not None and echo.verdict is not EchoVerdict.ALREADY_SEEN:
                link.last_crm_modstamp = record.system_modstamp
                link_bumps.append(link)
            if link is not None:
                result[record.id] = link.prospect_id
            continue
        if match.outcome is ProspectMatchOutcome.IGNORED:
            counters.skip(match.skip_reason or SkipReason.LOSES_TO_OTHER_RECORD)
            continue
        if match.outcome is ProspectMatchOutcome.NO_MATCH:
            creation = decide_prospect_creation(record, ctx.settings, explicit=explicit)
            if creation.create:
                to_create.append(record)
            else:
                counters.skip(creation.skip_reason or match.skip_reason or SkipReason.UNCHANGED)
            continue
        assert match.prospect_id is not None  # MATCHED (the only outcome left) always names the prospect
        prospect = prospects[int(match.prospect_id)]
        try:
            with transaction.atomic():
                outcome = _apply_matched(ctx, prospect, snaps[prospect.pk], record, link, match.link, counters)
        except Exception as exc:
            logger.exception("applying CRM record %s failed", record.id)
            counters.fail(getattr(exc, "code", type(exc).__name__))
            errors.record(connector, direction=FROM_CRM, code=getattr(exc, "code", "APPLY_FAILED"),
                          message=str(exc), prospect_id=prospect.pk, crm_id=record.id)
            continue
        if outcome is not None:
            result[record.id] = outcome
            errors.resolve_crm_ids(connector, [record.id])
            SYNC_LATENCY.labels("from_crm").observe(max(0.0, (now - record.system_modstamp).total_seconds()))
    _bump(link_bumps)
    if to_create:
        to_create, same_email = _one_per_email(ctx, to_create)
        result.update(_create_prospects(ctx, to_create, counters))
        if same_email:
            # Several new records with one address ([R9] e-mail matching): the first made the prospect; the others
            # now meet it like any matching record (the engine decides which one the prospect syncs with).
            result.update(apply_records(ctx, same_email, counters, explicit=explicit))
    return result


def _one_per_email(ctx: SyncContext, records: list[CrmRecord]) -> tuple[list[CrmRecord], list[CrmRecord]]:
    """With unique e-mail addresses per BU, the first record per address (the rest for after its creation)."""
    if ctx.connector.bu.allow_duplicate_emails:
        return records, []
    first: list[CrmRecord] = []
    later: list[CrmRecord] = []
    seen: set[str] = set()
    for r in records:
        key = (r.email or "").strip().lower()
        if key and key in seen:
            later.append(r)
        else:
            seen.add(key)
            first.append(r)
    return first, later


def _bump(link_bumps: list[CrmLink]) -> None:
    if link_bumps:
        fastwrite.update(CrmLink, {link.pk: {"last_crm_modstamp": link.last_crm_modstamp} for link in link_bumps},
                       ["last_crm_modstamp"])


def _skip_known(ctx: SyncContext, records: Sequence[CrmRecord], counters: RunCounters, result: dict[str, int]
                ) -> tuple[list[CrmRecord], list[CrmLink], dict[str, CrmLink]]:
    """Echo check first, from the links alone ([R24]): our own writes coming back (e.g. right after a big push) and
    replayed overlap records are skipped without loading any prospect. Deleted/converted records and records whose
    prospect is in the recycle bin or CRM-deleted always go on to the lifecycle rules."""
    crm_ids = {r.id for r in records} | {r.id[:15] for r in records}
    pks = fastwrite.select_pks(CrmLink, "connector_id = %b AND crm_id = ANY(%b)", [ctx.connector.pk, list(crm_ids)])
    found = (CrmLink.objects.filter(connector=ctx.connector, crm_id__in=crm_ids) if pks is None
             else CrmLink.objects.filter(pk__in=pks) if pks else CrmLink.objects.none())
    links = {id18(link.crm_id).lower(): link for link in found}
    if not links:
        return list(records), [], links
    flagged = set(Prospect.objects.filter(pk__in={link.prospect_id for link in links.values()})
                  .filter(Q(is_deleted=True) | Q(crm_deleted=True)).values_list("pk", flat=True))
    rest: list[CrmRecord] = []
    bumps: list[CrmLink] = []
    for record in records:
        link = links.get(id18(record.id).lower())
        if link is None or link.prospect_id in flagged or record.is_deleted or (record.is_lead and record.is_converted):
            rest.append(record)
            continue
        settle_pending_write(link, record, ctx.mappings)
        echo = is_echo(record, state_of(link), ctx.settings.connector_user_id, ctx.mappings,
                       client_id=ctx.settings.client_id)
        if not echo.skip:
            rest.append(record)
            continue
        counters.skip(echo.skip_reason or SkipReason.UNCHANGED)
        result[record.id] = link.prospect_id
        if echo.verdict is not EchoVerdict.ALREADY_SEEN:
            link.last_crm_modstamp = record.system_modstamp
            bumps.append(link)
    return rest, bumps, links


def _apply_matched(ctx: SyncContext, prospect: Prospect, snap, record: CrmRecord, link: CrmLink | None,
                   match_link: Link | None, counters: RunCounters) -> int | None:
    connector = ctx.connector
    now = timezone.now()
    decision = decide_lifecycle(snap, record, connector_user_id=ctx.settings.connector_user_id)
    action = decision.action
    if action is not LifecycleAction.NONE and deletions.apply_lifecycle(ctx, prospect, record, decision, counters):
        # [R13] conversion, [R31] deletion, [R32] merge: sync/deletions.py and sync/conversion.py
        _save_link(ctx, prospect, record, link, None, now)
        counters.updated += 1
        SYNCED_RECORDS.labels("from_crm", "updated").inc()
        return prospect.pk
    if action is LifecycleAction.RESTORE_UNDELETED:  # [R31] restored: resolve the record's values as usual
        snap = snapshot(prospect, ctx.mappings)
    if decision.skip_reason is not None and action is LifecycleAction.NONE:
        counters.skip(decision.skip_reason)
        _save_link(ctx, prospect, record, link, None, now)
        return prospect.pk
    resolution = resolve(snap, record, ctx.mappings, ctx.settings, state_of(link))
    if resolution.unlink:  # [R19] email changed in the CRM, "update email" off: stop syncing with this record
        prospect_services.update_prospect(prospect, {}, source="crm", extra=Link.cleared_for(record).as_dict())
        CrmLink.objects.filter(connector=connector, crm_id=record.id).delete()
        counters.skip(SkipReason.EMAIL_CHANGED_UNLINKED)
        return None
    if resolution.skip_reason is not None:
        counters.skip(resolution.skip_reason)
        return prospect.pk
    data, extra = split_writes(resolution.to_loopline)
    if "email" in data and ctx.settings.matching_mode is MatchingMode.UNIQUE_EMAIL:
        clash = Prospect.objects.filter(bu_id=connector.bu_id, email=data["email"]).exclude(pk=prospect.pk)
        if clash.exists():
            # [R19] design note 8: never take another prospect's email; the rest of the record still syncs.
            email = data.pop("email")
            errors.record(connector, direction=FROM_CRM, code="DUPLICATE_EMAIL", prospect_id=prospect.pk,
                          crm_id=record.id, message=f"The CRM changed the email to {email}, which another prospect "
                          "already has; the email was not changed.", fields=["Email"])
    link_fields = {k: v for k, v in (match_link.as_dict() if match_link else {}).items() if v is not None}
    if record.object_type == CrmObject.CONTACT and record.account_id:
        link_fields["crm_account_id"] = record.account_id
    if record.owner_id:
        extra.setdefault("crm_owner_id", record.owner_id)
    extra.update(link_fields)
    extra["crm_last_sync_at"] = now
    changed = prospect_services.update_prospect(prospect, data, source="crm", extra=extra,
                                                changed_at=resolution.loopline_changed_at)
    if resolution.to_crm:
        outbox.enqueue(connector.pk, prospect.pk, sorted(resolution.to_crm), reason="conflict")
    _save_link(ctx, prospect, record, link, resolution, now)
    if set(changed) & (set(data) | {"crm_owner_id"}):
        counters.updated += 1
        SYNCED_RECORDS.labels("from_crm", "updated").inc()
    else:
        counters.unchanged += 1
    return prospect.pk


def _save_link(ctx: SyncContext, prospect: Prospect, record: CrmRecord, link: CrmLink | None, resolution,
               now: dt.datetime) -> None:
    baseline = dict(link.baseline or {}) if link is not None else {}
    if resolution is not None:
        new = dict(resolution.baseline_after)
        # A conflict Loopline won is not agreed yet: keep the old baseline for it until the push succeeds.
        pending = {m.loopline_field for m in ctx.mappings if m.crm_field(record.object_type) in resolution.to_crm}
        for name in pending:
            if name in baseline:
                new[name] = baseline[name]
            else:
                new.pop(name, None)
        baseline = new
    # A newer CRM state than our last write is now the reference: if a user later restores exactly the values we
    # wrote, that is their change, not our echo ([R24]; an A-B-A the written hash alone would hide).
    values = {"prospect": prospect, "crm_object": record.object_type, "last_read_hash": record_hash(record,
              ctx.mappings), "last_crm_modstamp": record.system_modstamp, "last_synced_at": now,
              "baseline": baseline, "pending_write": {}, "last_written_hash": ""}
    if link is None:
        CrmLink.objects.update_or_create(connector=ctx.connector, crm_id=record.id, defaults=values)
    else:
        for k, v in values.items():
            setattr(link, k, v)
        link.save()


def _create_prospects(ctx: SyncContext, records: Sequence[CrmRecord], counters: RunCounters) -> dict[str, int]:
    """[R10]: new prospects for unmatched CRM records, in bulk through the import service (same rules, [R12]).
    The CRM linkage fields (owner, account, last sync) go into the same INSERT; links follow in one statement."""
    connector = ctx.connector
    bu = connector.bu
    now = timezone.now()
    rows: list[dict[str, Any]] = []
    linkage: list[dict[str, Any]] = []
    derived = []
    for r in records:
        values, read_hash, baseline = ctx.crm_side(r)
        derived.append((read_hash, baseline))
        data = {k: v for k, v in values.items() if k not in ("crm_owner_id",)}
        data["email"] = r.email
        key = "crm_lead_id" if r.object_type == CrmObject.LEAD else "crm_contact_id"
        data[key] = r.person_contact_id if r.object_type == CrmObject.PERSON_ACCOUNT else r.id
        rows.append(data)
        extra: dict[str, Any] = {"crm_last_sync_at": now}
        if r.owner_id:
            extra["crm_owner_id"] = r.owner_id
        if r.object_type == CrmObject.CONTACT and r.account_id:
            extra["crm_account_id"] = r.account_id
        if r.object_type == CrmObject.PERSON_ACCOUNT:
            extra["crm_account_id"] = r.id
        linkage.append(extra)
    unique = not bu.allow_duplicate_emails
    specs = {spec.key: spec for spec in field_specs(bu.pk)}
    result = prospect_services.bulk_upsert_prospects(
        bu, rows, match="email" if unique else "crm_id", update_existing=False, specs=specs, source="crm",
        crm_fields=linkage)
    created: dict[str, int] = {}
    new_links: list[dict[str, Any]] = []
    # Created rows and ``created_ids`` come in the same (row) order; a fallback query if they ever disagree.
    created_rows = [i for i, outcome in enumerate(result.outcomes) if outcome == "created"]
    if len(created_rows) == len(result.created_ids):
        pk_of_row = dict(zip(created_rows, result.created_ids, strict=True))
    else:
        by_crm: dict[str, int] = {}
        for pk, lead, contact in Prospect.objects.filter(pk__in=result.created_ids).values_list(
                "pk", "crm_lead_id", "crm_contact_id"):
            by_crm.update({k: pk for k in (lead, contact) if k})
        pk_of_row = {i: by_crm[k] for i in created_rows
                     if (k := rows[i].get("crm_lead_id") or rows[i].get("crm_contact_id")) in by_crm}
    latency = SYNC_LATENCY.labels("from_crm")
    for i, r in enumerate(records):
        outcome = result.outcomes[i]
        if outcome == "created" and i in pk_of_row:
            pk = pk_of_row[i]
            created[r.id] = pk
            new_links.append({
                "connector_id": connector.pk, "prospect_id": pk, "crm_object": r.object_type, "crm_id": r.id,
                "last_read_hash": derived[i][0], "last_crm_modstamp": r.system_modstamp,
                "last_synced_at": now, "baseline": derived[i][1]})
            counters.created += 1
            latency.observe(max(0.0, (now - r.system_modstamp).total_seconds()))
        elif outcome == "rejected":
            problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in result.errors.get(i, {}).items())
            counters.fail("INVALID_VALUE")
            errors.record(connector, direction=FROM_CRM, code="INVALID_VALUE", crm_id=r.id,
                          message=f"{r.object_type} {r.id} could not create a prospect: {problems}")
        else:
            counters.skip(SkipReason.ALREADY_LINKED)
    fastwrite.insert(CrmLink, new_links, ignore_conflicts=True)
    SYNCED_RECORDS.labels("from_crm", "created").inc(len(created))
    return created


# --- Single records and the initial import ------------------------------------------------------------------------

PREFIX_OBJECT = {"00Q": "Lead", "003": "Contact", "001": "Account"}


def fetch_records(ctx: SyncContext, object_type: str, ids: Iterable[str]) -> list[CrmRecord]:
    ids = [i for i in ids if i]
    if not ids:
        return []
    fields = select_fields(object_type, ctx.mappings, sharing.query_fields(ctx, object_type))
    quoted = ", ".join(f"'{i}'" for i in ids)
    where = [*ctx.soql_filter(object_type), f"Id IN ({quoted})"]
    if object_type == CrmObject.PERSON_ACCOUNT:  # [R14] an Account, and only a person account
        where.insert(0, "IsPersonAccount = true")
    soql = f"SELECT {', '.join(fields)} FROM {sobject_name(object_type)} WHERE {' AND '.join(where)}"
    raw = ctx.client.query(soql, include_deleted=True)
    return [CrmRecord.from_api(object_type, r) for r in raw]


def initial_import(connector: Connector, job=None, *, client=None, objects: Sequence[str] | None = None
                   ) -> RunCounters:
    """Every live Lead and Contact (and person account, [R14]), 2,000 per page; creates prospects regardless of
    "automatically create" ([R10]). Watermarks move to the newest record seen, so polling continues from there."""
    from loopline.platform import tasks as platform_tasks

    ctx = SyncContext.load(connector, client)
    every_object = objects is None or tuple(objects) == POLLED_OBJECTS
    objects = ctx.polled_objects if objects is None else objects
    with runs.sync_run(connector, "initial_import", client=ctx.client) as run:
        counters = run.counters
        # A job started by import_from_crm already holds the total of every object; otherwise it grows per object.
        preset_total, planned = bool(getattr(job, "total", 0)), 0
        for object_type in objects:
            row, wm = load_watermark(connector, object_type)
            fields = select_fields(object_type, ctx.mappings, sharing.query_fields(ctx, object_type))
            soql = build_soql(object_type, fields, None, conditions=ctx.soql_filter(object_type))
            first_page = ctx.client.restful("query", params={"q": soql},
                                            headers={"Sforce-Query-Options": "batchSize=2000"})
            planned += int(first_page.get("totalSize") or 0)
            if job is not None and not preset_total:
                platform_tasks.advance(job, 0, total=planned)
            for parsed in _pages(ctx, first_page, object_type, precompute=True):
                # Apply without the overlap filter: the import is explicit and idempotent by matching.
                before = counters.created + counters.updated + counters.unchanged + counters.skipped_total
                failed_before = counters.failed
                with transaction.atomic():
                    counters.fetched += len(parsed)
                    apply_records(ctx, [r for r in parsed if not r.is_deleted], counters, explicit=True)
                    if parsed:
                        newest = max(parsed, key=lambda r: r.system_modstamp)
                        if wm.modstamp is None or newest.system_modstamp > wm.modstamp:
                            wm = Watermark(object_type, newest.system_modstamp, wm.recent_keys, wm.settled, wm.own)
                        save_watermark(row, wm)
                ctx.forget_precomputed(parsed)
                LOAD_STATS.added(len(parsed))
                if job is not None:
                    done = counters.created + counters.updated + counters.unchanged + counters.skipped_total
                    platform_tasks.advance(job, done - before, failed=counters.failed - failed_before)
    if every_object:  # then the existing contact roles, deals and campaign members ([R38], [R40])
        related.initial_import(connector, client=ctx.client)
    return counters
