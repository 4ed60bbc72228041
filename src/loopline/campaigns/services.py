"""Campaign and reporting writes: campaigns (audited), memberships, CRM mirrors, lifecycle stages, schedules."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from loopline.accounts.access import Access
from loopline.platform import audit, events

from . import attribution, metrics
from .models import (
    Campaign,
    CampaignMember,
    Opportunity,
    OpportunityContactRole,
    ReportSettings,
    ScheduledReport,
)

logger = logging.getLogger("loopline.campaigns")

_AUDITED = ("name", "type", "status", "start_date", "end_date", "budgeted_cost", "actual_cost", "parent_id")


@transaction.atomic
def save_campaign(access: Access, campaign: Campaign) -> Campaign:
    """Save a campaign built (and validated) by a form, in the acting user's BU; a parent must not form a loop."""
    access.require("campaigns.edit" if campaign.pk else "campaigns.create")
    if campaign.pk and campaign.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")
    campaign.bu = access.bu
    parent = campaign.parent
    seen = {campaign.pk}
    while parent is not None:
        if parent.bu_id != access.bu.pk:
            raise ValidationError({"parent": "The parent campaign belongs to another business unit"})
        if parent.pk in seen:
            raise ValidationError({"parent": "A campaign can't be its own ancestor"})
        seen.add(parent.pk)
        parent = parent.parent
    before = None
    if campaign.pk:
        old = Campaign.objects.get(pk=campaign.pk)
        before = {k: getattr(old, k) for k in _AUDITED}
    if Campaign.objects.filter(bu=access.bu, name__iexact=campaign.name.strip()).exclude(pk=campaign.pk).exists():
        raise ValidationError({"name": f"A campaign named {campaign.name} already exists"})
    campaign.name = campaign.name.strip()
    campaign.save()
    after = {k: getattr(campaign, k) for k in _AUDITED}
    if before is not None:
        before, after = audit.diff(before, after)
    audit.record("campaign.save", actor=access.user, bu=access.bu, obj=campaign, before=before, after=after,
                 summary=campaign.name)
    return campaign


# --- Settings --------------------------------------------------------------------------------------------------------

GRADES = ("A+", "A", "A-", "B+", "B", "B-", "C+", "C", "C-", "D+", "D", "D-", "F")


def report_settings(bu_id: int) -> ReportSettings:
    found = ReportSettings.objects.filter(bu_id=bu_id).first()
    return found if found is not None else ReportSettings(bu_id=bu_id)


@transaction.atomic
def save_report_settings(access: Access, *, mql_score: int | None, mql_grade: str, mql_rule: str,
                         default_currency: str) -> ReportSettings:
    access.require("reports.edit")
    if mql_score is None and not mql_grade:
        raise ValidationError({"mql_score": "Set a score or a grade threshold (or both)."})
    if mql_grade and mql_grade not in GRADES:
        raise ValidationError({"mql_grade": f"Unknown grade {mql_grade}"})
    currency = default_currency.strip().upper()
    if currency and not re.fullmatch(r"[A-Z]{3}", currency):
        raise ValidationError({"default_currency": "Use a three-letter currency code such as EUR or USD."})
    settings_row, _ = ReportSettings.objects.get_or_create(bu=access.bu)
    before = {"mql_score": settings_row.mql_score, "mql_grade": settings_row.mql_grade, "mql_rule": settings_row.mql_rule,
              "default_currency": settings_row.default_currency}
    settings_row.mql_score, settings_row.mql_grade, settings_row.mql_rule = mql_score, mql_grade, mql_rule
    settings_row.default_currency = currency
    settings_row.save()
    after = {"mql_score": mql_score, "mql_grade": mql_grade, "mql_rule": mql_rule, "default_currency": currency}
    audit.record("reports.settings", actor=access.user, bu=access.bu, obj=settings_row,
                 before=before, after=after, summary="Reporting settings")
    return settings_row


def _grade_rank(grade: str) -> int:
    return GRADES.index(grade) if grade in GRADES else len(GRADES)


def is_marketing_qualified(settings_row: ReportSettings, score: int, grade: str) -> bool:
    """The BU's MQL rule ([M36]): score and/or grade at or above the thresholds."""
    checks = []
    if settings_row.mql_score is not None:
        checks.append(score >= settings_row.mql_score)
    if settings_row.mql_grade:
        checks.append(_grade_rank(grade) <= _grade_rank(settings_row.mql_grade))
    if not checks:
        return False
    return all(checks) if settings_row.mql_rule == ReportSettings.Rule.SCORE_AND_GRADE else any(checks)


def _grades_at_or_above(grade: str) -> list[str]:
    return list(GRADES[: _grade_rank(grade) + 1])


# --- Lifecycle ([M36]) -----------------------------------------------------------------------------------------------

STAGES = ("mql", "sql", "opportunity", "won")


def mark_lifecycle(bu, prospect_id: int, stage: str, at: dt.datetime | None = None) -> bool:
    """Record that a prospect reached ``stage`` ("mql" | "sql" | "opportunity" | "won") at ``at``. Monotonic: a stage
    date is set once and never moved; reaching a stage also passes the earlier ones that were skipped (same time), and
    no stage date is earlier than the one before it. Returns whether anything changed."""
    return mark_lifecycle_many(bu, stage, {prospect_id: at or timezone.now()}) > 0


def mark_lifecycle_many(bu, stage: str, when: Mapping[int, dt.datetime], *,
                        rows: Mapping[int, dict] | None = None) -> int:
    """``rows``: the prospects' current stage dates (and ``created_at``) when the caller has just read them — saves a
    query on the connector's bulk pull; the dates this call sets are written back into them."""
    from loopline.prospects.models import Prospect

    if stage not in STAGES:
        raise ValueError(f"unknown lifecycle stage {stage!r}")
    bu_id = getattr(bu, "pk", bu)
    upto = STAGES.index(stage) + 1
    fields = [metrics.STAGE_FIELDS[s] for s in STAGES[:upto]]
    deltas: dict = defaultdict(lambda: [0, 0.0])
    # Prospects needing the same dates share one UPDATE: a bulk pull or import marks thousands with the same "now".
    groups: dict[tuple, list[int]] = defaultdict(list)
    waited: dict[int, list[float]] = {}  # seconds each prospect spent in the previous stage, per new stage date
    if rows is None or any(pk not in rows or any(f not in rows[pk] for f in fields) for pk in when):
        rows = {r["pk"]: r for r in Prospect.objects.filter(bu_id=bu_id, pk__in=list(when)).values(
            "pk", "created_at", *fields)}
    for pk in when:
        row = rows.get(pk)
        if row is None or row[fields[-1]] is not None:
            continue  # gone, or already there: never moves
        previous = row["created_at"]
        updates: list[tuple[str, dt.datetime]] = []
        seconds: list[float] = []
        for field in fields:
            current = row[field]
            if current is not None:
                previous = current
                continue
            value = max(when[pk], previous)
            updates.append((field, value))
            seconds.append((value - previous).total_seconds())
            previous = value
        groups[tuple(updates)].append(pk)
        waited[pk] = seconds
    changed_ids: list[int] = []
    changed_fields: set[str] = set()
    stage_of = {v: k for k, v in metrics.STAGE_FIELDS.items()}
    for dates, ids in groups.items():
        for start in range(0, len(ids), 2000):
            won = _set_stage_dates(ids[start:start + 2000], dates)
            if not won:
                continue
            changed_ids.extend(won)
            for pk in won:
                rows[pk].update(dates)
            for i, (f, value) in enumerate(dates):
                key = (stage_of[f], metrics.utc_day(value), 0)
                deltas[key][0] += len(won)
                deltas[key][1] += sum(waited[pk][i] for pk in won)
                changed_fields.add(f)
    metrics.bump(bu_id, {k: (n, sec) for k, (n, sec) in deltas.items() if n})
    if len(changed_ids) == 1:
        events.publish(events.ProspectChanged(bu_id=bu_id, prospect_id=changed_ids[0],
                                              changed_fields=frozenset(changed_fields), source=LIFECYCLE_SOURCE))
    elif changed_ids:
        events.publish(events.ProspectsBulkChanged(bu_id=bu_id, prospect_ids=tuple(changed_ids),
                                                   source=LIFECYCLE_SOURCE))
    return len(changed_ids)


def _set_stage_dates(ids: list[int], dates: tuple[tuple[str, dt.datetime], ...]) -> list[int]:
    """Set ``dates`` on the prospects ``ids`` whose dates are all still empty; returns the ids it set. The guard keeps
    dates monotonic if another writer got there first; one UPDATE … RETURNING (SQLite ≥ 3.35 and PostgreSQL)."""
    from django.db import connection

    from loopline.prospects.models import Prospect

    qn = connection.ops.quote_name
    columns: list[tuple[Any, dt.datetime]] = [(Prospect._meta.get_field(f), value) for f, value in dates]
    assignments = ", ".join(f"{qn(field.column)} = %s" for field, _ in columns)
    guard = " AND ".join(f"{qn(field.column)} IS NULL" for field, _ in columns)
    params: list[Any] = [field.get_db_prep_save(value, connection) for field, value in columns]
    if connection.vendor == "postgresql":
        where, params = "id = ANY(%s)", [*params, list(ids)]
    else:
        where, params = f"id IN ({', '.join(['%s'] * len(ids))})", [*params, *ids]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {qn(Prospect._meta.db_table)} SET {assignments} WHERE {where} AND {guard} "
                       "RETURNING id", params)
        return [row[0] for row in cursor.fetchall()]


# Stage dates are derived data: the CRM outbox, grading and this module's own handlers ignore changes from this source.
LIFECYCLE_SOURCE = "lifecycle"
LIFECYCLE_FIELDS = frozenset(metrics.STAGE_FIELDS.values())
_MQL_TRIGGERS = frozenset({"score", "grade"})
_SQL_TRIGGERS = frozenset({"assigned_user", "assigned_user_id", "crm_lead_id", "crm_contact_id"})


def on_prospect_changed(event) -> None:
    """Count new prospects and detect MQL / SQL as prospects change (subscribed to ProspectChanged)."""
    changed = set(event.changed_fields)
    if not event.created and (not changed or changed <= LIFECYCLE_FIELDS):
        return
    wants_mql = event.created or bool(changed & _MQL_TRIGGERS)
    wants_sql = event.created or bool(changed & _SQL_TRIGGERS)
    if not (event.created or wants_mql or wants_sql):
        return
    _check_prospects(event.bu_id, [event.prospect_id], created=[event.prospect_id] if event.created else [],
                     mql=wants_mql, sql=wants_sql)


INLINE_LIFECYCLE = 200  # larger bulk changes (import pages, CRM pulls) are checked by a background task


def on_prospects_bulk_changed(event) -> None:
    if event.source == LIFECYCLE_SOURCE:
        return
    ids, created = [int(i) for i in event.prospect_ids], [int(i) for i in event.created_ids]
    if len(set(ids) | set(created)) <= INLINE_LIFECYCLE:
        check_lifecycle(event.bu_id, ids, created)
        return
    from loopline.platform.tasks import enqueue_on_commit

    from .tasks import check_lifecycle as check_later

    enqueue_on_commit(check_later, event.bu_id, ids, created)


def check_lifecycle(bu_id: int, prospect_ids: list[int], created_ids: list[int]) -> None:
    _check_prospects(bu_id, list(prospect_ids), created=list(created_ids), mql=True, sql=True)


def _check_prospects(bu_id: int, ids: list[int], *, created: list[int], mql: bool, sql: bool) -> None:
    from loopline.prospects.models import Prospect

    ids = sorted(set(ids) | set(created))
    if not ids:
        return
    settings_row = report_settings(bu_id)
    now = timezone.now()
    new_counts: dict = defaultdict(lambda: [0, 0.0])
    mql_when: dict[int, dt.datetime] = {}
    sql_when: dict[int, dt.datetime] = {}
    created_set = set(created)
    rows: dict[int, Any] = {}
    for start in range(0, len(ids), 2000):
        chunk = ids[start:start + 2000]
        for p in Prospect.objects.filter(bu_id=bu_id, pk__in=chunk).values(
                "pk", "created_at", "source_campaign_id", "score", "grade", "mql_at", "sql_at", "assigned_user_id",
                "assigned_at", "crm_lead_id", "crm_contact_id"):
            rows[p["pk"]] = p
            if p["pk"] in created_set:
                new_counts[("prospect", metrics.utc_day(p["created_at"]), p["source_campaign_id"] or 0)][0] += 1
            if mql and p["mql_at"] is None and is_marketing_qualified(settings_row, p["score"], p["grade"]):
                mql_when[p["pk"]] = now
            if sql and p["sql_at"] is None and (p["assigned_user_id"] or p["crm_lead_id"] or p["crm_contact_id"]):
                sql_when[p["pk"]] = p["assigned_at"] or now
    metrics.bump(bu_id, {k: (n, s) for k, (n, s) in new_counts.items()})
    if mql_when:
        mark_lifecycle_many(bu_id, "mql", mql_when, rows=rows)
    if sql_when:
        mark_lifecycle_many(bu_id, "sql", sql_when, rows=rows)


def sweep_lifecycle(bu_id: int, *, limit: int = 20000) -> dict[str, int]:
    """Catch MQL / SQL changes no event announced (scores moved by activities, CRM ids set by the connector's batch
    writer): prospects past the threshold without a stage date get one now."""
    from loopline.prospects.models import Prospect

    settings_row = report_settings(bu_id)
    now = timezone.now()
    live = Prospect.objects.filter(bu_id=bu_id, is_deleted=False)
    result = {"mql": 0, "sql": 0}
    conditions = []
    if settings_row.mql_score is not None:
        conditions.append(Q(score__gte=settings_row.mql_score))
    if settings_row.mql_grade:
        conditions.append(Q(grade__in=_grades_at_or_above(settings_row.mql_grade)))
    if conditions:
        combined = conditions[0]
        for c in conditions[1:]:
            combined = (combined & c) if settings_row.mql_rule == ReportSettings.Rule.SCORE_AND_GRADE else (combined | c)
        ids = list(live.filter(combined, mql_at__isnull=True).values_list("pk", flat=True)[:limit])
        result["mql"] = mark_lifecycle_many(bu_id, "mql", dict.fromkeys(ids, now))
    sql_rows = (live.filter(sql_at__isnull=True)
                .filter(Q(assigned_user__isnull=False) | ~Q(crm_lead_id="") | ~Q(crm_contact_id=""))
                .values_list("pk", "assigned_at")[:limit])
    result["sql"] = mark_lifecycle_many(bu_id, "sql", {pk: at or now for pk, at in sql_rows})
    return result


# --- Campaign membership ([M33], [R38]) -----------------------------------------------------------------------------


def add_member(bu, campaign_id: int, prospect_id: int, *, status: str = "Responded", responded: bool = True,
               at: dt.datetime | None = None, source: str = "loopline") -> CampaignMember:
    """Make the prospect a member of the campaign (once); a response sets ``first_responded_at`` once. The first
    campaign that touches a prospect becomes its source campaign."""
    from loopline.prospects import services as prospect_services
    from loopline.prospects.models import Prospect

    bu_id = getattr(bu, "pk", bu)
    campaign = Campaign.objects.get(bu_id=bu_id, pk=campaign_id)
    prospect = Prospect.objects.get(bu_id=bu_id, pk=prospect_id)
    when = at or timezone.now()
    member, created = CampaignMember.objects.get_or_create(
        campaign=campaign, prospect=prospect,
        defaults={"bu_id": bu_id, "status": status[:40], "has_responded": responded,
                  "first_responded_at": when if responded else None, "added_at": when, "source": source})
    if not created and responded and not member.has_responded:
        member.has_responded, member.first_responded_at, member.status = True, when, status[:40]
        member.save(update_fields=["has_responded", "first_responded_at", "status"])
    if created:
        if not prospect.source_campaign_id:
            prospect_services.update_prospect(prospect, {}, extra={"source_campaign_id": campaign.pk}, source="system")
        refresh_opportunities_for_prospects(bu_id, [prospect.pk])
    return member


def on_prospects_merged(event) -> None:
    """[R32] the survivor takes the loser's campaign memberships: moved where it had none for that campaign, else
    folded into its own (the earlier join and first response win, for attribution)."""
    mine = {m.campaign_id: m for m in CampaignMember.objects.filter(prospect_id=event.survivor_id)}
    for theirs in CampaignMember.objects.filter(prospect_id=event.loser_id):
        own = mine.get(theirs.campaign_id)
        if own is None:
            CampaignMember.objects.filter(pk=theirs.pk).update(prospect_id=event.survivor_id)
            continue
        changed = []
        if theirs.added_at < own.added_at:
            own.added_at = theirs.added_at
            changed.append("added_at")
        if theirs.has_responded:
            times = [t for t in (own.first_responded_at, theirs.first_responded_at) if t is not None]
            first = min(times) if times else None
            if not own.has_responded or first != own.first_responded_at:
                own.has_responded, own.first_responded_at = True, first
                changed += ["has_responded", "first_responded_at"]
        if not own.crm_id and theirs.crm_id:
            own.crm_id = theirs.crm_id
            changed.append("crm_id")
        if changed:
            own.save(update_fields=changed)
        theirs.delete()
    refresh_opportunities_for_prospects(event.bu_id, [event.survivor_id])


def _validate_campaign_action(bu, params):
    from loopline.platform.actions import _int_param

    campaign_id = _int_param(params, "campaign_id", low=1, high=2**62)
    if not Campaign.objects.filter(bu_id=bu.pk, pk=campaign_id).exists():
        raise ValidationError("no such campaign in this business unit")
    status = str(params.get("status", "") or "Responded").strip()[:40]
    return {"campaign_id": campaign_id, "status": status}


def _run_campaign_action(ctx, params) -> str:
    member = add_member(ctx.bu, params["campaign_id"], ctx.prospect.pk, status=params.get("status") or "Responded",
                        source="action")
    return f"member of {member.campaign.name} ({member.status})"


def register_actions() -> None:
    from loopline.platform import actions

    actions.register(actions.ActionType("add_to_campaign", "Add to campaign", _validate_campaign_action,
                                        _run_campaign_action))


_TOUCH_TYPES = None


def on_activity_recorded(event) -> None:
    """A tracked touch with a campaign (click, form, file, landing page) makes the prospect a responded member."""
    global _TOUCH_TYPES
    from loopline.prospects.models import Activity, ActivityType

    if _TOUCH_TYPES is None:
        _TOUCH_TYPES = {ActivityType.VISIT, ActivityType.CUSTOM_REDIRECT_CLICK, ActivityType.FILE_ACCESS,
                        ActivityType.FORM_SUCCESS, ActivityType.FORM_HANDLER_SUCCESS, ActivityType.LANDING_PAGE_SUCCESS,
                        ActivityType.EMAIL_CLICK}
    if event.is_machine or not event.prospect_id or event.type not in _TOUCH_TYPES:
        return
    row = Activity.objects.filter(pk=event.activity_id).values("campaign_id", "occurred_at").first()
    if not row or not row["campaign_id"]:
        return
    if CampaignMember.objects.filter(campaign_id=row["campaign_id"], prospect_id=event.prospect_id,
                                     has_responded=True).exists():
        return
    add_member(event.bu_id, row["campaign_id"], event.prospect_id, at=row["occurred_at"], source="tracking")


# --- CRM mirrors ([R38], [R40]) -------------------------------------------------------------------------------------

_CRM_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")


def _pick(row: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    return None


def _crm_id(value: Any) -> str:
    text = str(value or "").strip()
    return text if _CRM_ID.match(text) else ""


def _decimal(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number.quantize(Decimal("0.01")) if number.is_finite() and abs(number) < Decimal("1e15") else None


def _date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


def _datetime(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time(), tzinfo=dt.UTC)
    if not value:
        return None
    text = str(value).strip().replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]  # Salesforce writes +0000
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _bool(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def _campaigns_by_crm_id(bu_id: int, crm_ids) -> dict[str, int]:
    ids = {c for c in crm_ids if c}
    found = {}
    for pk, crm in Campaign.objects.filter(bu_id=bu_id, crm_campaign_id__in=ids).values_list("pk", "crm_campaign_id"):
        found[crm] = pk
    # Salesforce ids come in 15- and 18-character forms; match on the case-sensitive 15-character prefix too.
    short = {c[:15]: c for c in ids}
    for pk, crm in Campaign.objects.filter(bu_id=bu_id, crm_campaign_id__in=list(short)).values_list(
            "pk", "crm_campaign_id"):
        found.setdefault(short[crm], pk)
    return found


def _prospects_by_crm_id(bu_id: int, crm_ids) -> dict[str, int]:
    from loopline.prospects.models import Prospect

    ids = [c for c in set(crm_ids) if c]
    found: dict[str, int] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        for pk, contact, lead in Prospect.objects.filter(bu_id=bu_id, is_deleted=False).filter(
                Q(crm_contact_id__in=chunk) | Q(crm_lead_id__in=chunk)).values_list("pk", "crm_contact_id", "crm_lead_id"):
            for key in (contact, lead):
                if key:
                    found.setdefault(key, pk)
    return found


@transaction.atomic
def upsert_campaigns(bu, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Connected CRM campaigns ([R38]): create or update Loopline campaigns by CRM id (Id, Name, Type, Status,
    StartDate, EndDate, BudgetedCost, ActualCost, ParentId)."""
    bu_id = getattr(bu, "pk", bu)
    result = {"created": 0, "updated": 0, "skipped": 0}
    status_map = {"planned": "planned", "in progress": "in_progress", "completed": "completed", "aborted": "aborted"}
    existing = _campaigns_by_crm_id(bu_id, [_crm_id(_pick(r, "Id", "crm_id")) for r in rows])
    parents: list[tuple[int, str]] = []
    for row in rows:
        crm = _crm_id(_pick(row, "Id", "crm_id"))
        name = str(_pick(row, "Name", "name") or "").strip()[:200]
        if not crm or not name:
            result["skipped"] += 1
            continue
        actual = _decimal(_pick(row, "ActualCost", "actual_cost"))
        values: dict[str, Any] = {"type": str(_pick(row, "Type", "type") or "")[:60],
                  "status": status_map.get(str(_pick(row, "Status", "status") or "").lower(), "planned"),
                  "start_date": _date(_pick(row, "StartDate", "start_date")),
                  "end_date": _date(_pick(row, "EndDate", "end_date")),
                  "budgeted_cost": _decimal(_pick(row, "BudgetedCost", "budgeted_cost")),
                  "actual_cost": actual if actual is not None and actual >= 0 else None}
        pk = existing.get(crm)
        if pk is None:
            clash = Campaign.objects.filter(bu_id=bu_id, name__iexact=name).first()
            if clash is not None and not clash.crm_campaign_id:
                pk = clash.pk  # a Loopline campaign of the same name gets connected
        if pk is None:
            taken = Campaign.objects.filter(bu_id=bu_id, name__iexact=name).exists()
            campaign = Campaign.objects.create(bu_id=bu_id, name=f"{name} ({crm})" if taken else name,
                                               crm_campaign_id=crm, **values)
            result["created"] += 1
            pk = campaign.pk
        else:
            Campaign.objects.filter(pk=pk).update(crm_campaign_id=crm, **values)
            result["updated"] += 1
        existing[crm] = pk
        parent = _crm_id(_pick(row, "ParentId", "parent_id"))
        if parent:
            parents.append((pk, parent))
    for pk, parent in parents:
        parent_pk = existing.get(parent) or _campaigns_by_crm_id(bu_id, [parent]).get(parent)
        if parent_pk and parent_pk != pk:
            Campaign.objects.filter(pk=pk).update(parent_id=parent_pk)
    return result


@transaction.atomic
def upsert_campaign_members(bu, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """CampaignMember rows from the CRM ([R38]): Id, CampaignId, LeadId | ContactId, Status, HasResponded,
    FirstRespondedDate, CreatedDate. Rows whose campaign or prospect is not known here are skipped (counted)."""
    bu_id = getattr(bu, "pk", bu)
    campaigns = _campaigns_by_crm_id(bu_id, [_crm_id(_pick(r, "CampaignId", "campaign_id")) for r in rows])
    people = _prospects_by_crm_id(bu_id, [_crm_id(_pick(r, "ContactId", "contact_id")) or
                                          _crm_id(_pick(r, "LeadId", "lead_id")) for r in rows])
    now = timezone.now()
    objs: dict[tuple[int, int], CampaignMember] = {}
    skipped = 0
    for row in rows:
        campaign_pk = campaigns.get(_crm_id(_pick(row, "CampaignId", "campaign_id")))
        person = _crm_id(_pick(row, "ContactId", "contact_id")) or _crm_id(_pick(row, "LeadId", "lead_id"))
        prospect_pk = people.get(person)
        if not campaign_pk or not prospect_pk:
            skipped += 1
            continue
        responded = _bool(_pick(row, "HasResponded", "has_responded"))
        first = _datetime(_pick(row, "FirstRespondedDate", "first_responded_date")) if responded else None
        objs[(campaign_pk, prospect_pk)] = CampaignMember(
            bu_id=bu_id, campaign_id=campaign_pk, prospect_id=prospect_pk,
            status=str(_pick(row, "Status", "status") or "Sent")[:40], has_responded=responded,
            first_responded_at=first, added_at=_datetime(_pick(row, "CreatedDate", "created_at")) or now,
            crm_id=_crm_id(_pick(row, "Id", "crm_id")), source="crm")
    if objs:
        CampaignMember.objects.bulk_create(
            list(objs.values()), update_conflicts=True, unique_fields=["campaign", "prospect"],
            # ``added_at`` is kept: a membership's join time never moves (attribution orders touches by it, [M34]).
            update_fields=["status", "has_responded", "first_responded_at", "crm_id"], batch_size=1000)
        refresh_opportunities_for_prospects(bu_id, {p for _, p in objs})
    return {"upserted": len(objs), "skipped": skipped}


@transaction.atomic
def remove_campaign_members(bu, crm_ids: Sequence[str]) -> int:
    """CampaignMember rows deleted in the CRM ([R38]): the prospects leave those campaigns."""
    bu_id = getattr(bu, "pk", bu)
    ids = [c for c in crm_ids if c]
    if not ids:
        return 0
    rows = list(CampaignMember.objects.filter(bu_id=bu_id, crm_id__in=ids).values_list("pk", "prospect_id"))
    CampaignMember.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
    if rows:
        refresh_opportunities_for_prospects(bu_id, {p for _, p in rows})
    return len(rows)


@transaction.atomic
def upsert_opportunities(bu, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Read-only opportunity mirrors ([R40]): Id, Name, Amount, CurrencyIsoCode, StageName, IsClosed, IsWon,
    CloseDate, CreatedDate, CampaignId. A missing or unreadable amount is kept as missing (never 0); reports count it."""
    bu_id = getattr(bu, "pk", bu)
    campaigns = _campaigns_by_crm_id(bu_id, [_crm_id(_pick(r, "CampaignId", "campaign_id")) for r in rows])
    settings_row = report_settings(bu_id)
    now = timezone.now()
    objs: dict[str, Opportunity] = {}
    skipped = 0
    for row in rows:
        crm = _crm_id(_pick(row, "Id", "crm_id"))
        if not crm:
            skipped += 1
            continue
        created = _datetime(_pick(row, "CreatedDate", "created_at")) or now
        is_won = _bool(_pick(row, "IsWon", "is_won"))
        is_closed = _bool(_pick(row, "IsClosed", "is_closed")) or is_won
        close_date = _date(_pick(row, "CloseDate", "close_date"))
        cutoff = (dt.datetime.combine(close_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
                  if is_closed and close_date else None)
        currency = str(_pick(row, "CurrencyIsoCode", "currency") or settings_row.default_currency or "").upper()[:3]
        crm_campaign = _crm_id(_pick(row, "CampaignId", "campaign_id"))
        objs[crm] = Opportunity(
            bu_id=bu_id, crm_id=crm, name=str(_pick(row, "Name", "name") or "")[:255],
            amount=_decimal(_pick(row, "Amount", "amount")), currency=currency if currency.isalpha() else "",
            stage=str(_pick(row, "StageName", "stage") or "")[:80], is_closed=is_closed, is_won=is_won,
            close_date=close_date, crm_created_at=created, created_day=metrics.utc_day(created), close_cutoff=cutoff,
            campaign_id=campaigns.get(crm_campaign), crm_campaign_id=crm_campaign, synced_at=now)
    if not objs:
        return {"upserted": 0, "skipped": skipped}
    Opportunity.objects.bulk_create(
        list(objs.values()), update_conflicts=True, unique_fields=["bu", "crm_id"],
        update_fields=["name", "amount", "currency", "stage", "is_closed", "is_won", "close_date", "crm_created_at",
                       "created_day", "close_cutoff", "campaign", "crm_campaign_id", "synced_at"], batch_size=1000)
    ids = list(Opportunity.objects.filter(bu_id=bu_id, crm_id__in=list(objs)).values_list("pk", flat=True))
    _opportunities_changed(bu_id, ids)
    return {"upserted": len(objs), "skipped": skipped}


@transaction.atomic
def upsert_contact_roles(bu, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """OpportunityContactRole rows ([R40]): Id, OpportunityId, ContactId, Role, IsPrimary. The contact is linked to
    the prospect with that CRM contact id (now, or later when the prospect syncs)."""
    bu_id = getattr(bu, "pk", bu)
    opp_ids = dict(Opportunity.objects.filter(
        bu_id=bu_id, crm_id__in=[_crm_id(_pick(r, "OpportunityId", "opportunity_id")) for r in rows]
    ).values_list("crm_id", "pk"))
    people = _prospects_by_crm_id(bu_id, [_crm_id(_pick(r, "ContactId", "contact_id")) for r in rows])
    objs: dict[tuple[int, str], OpportunityContactRole] = {}
    skipped = 0
    for row in rows:
        opp_pk = opp_ids.get(_crm_id(_pick(row, "OpportunityId", "opportunity_id")))
        contact = _crm_id(_pick(row, "ContactId", "contact_id"))
        if not opp_pk or not contact:
            skipped += 1
            continue
        objs[(opp_pk, contact)] = OpportunityContactRole(
            bu_id=bu_id, opportunity_id=opp_pk, crm_contact_id=contact, prospect_id=people.get(contact),
            crm_id=_crm_id(_pick(row, "Id", "crm_id")), role=str(_pick(row, "Role", "role") or "")[:80],
            is_primary=_bool(_pick(row, "IsPrimary", "is_primary")))
    if objs:
        OpportunityContactRole.objects.bulk_create(
            list(objs.values()), update_conflicts=True, unique_fields=["opportunity", "crm_contact_id"],
            update_fields=["prospect", "crm_id", "role", "is_primary"], batch_size=1000)
        _opportunities_changed(bu_id, {o for o, _ in objs})
    return {"upserted": len(objs), "skipped": skipped}


@transaction.atomic
def remove_contact_roles(bu, crm_ids: Sequence[str]) -> int:
    """Contact roles deleted in the CRM."""
    bu_id = getattr(bu, "pk", bu)
    roles = OpportunityContactRole.objects.filter(bu_id=bu_id, crm_id__in=[c for c in crm_ids if c])
    opp_ids = set(roles.values_list("opportunity_id", flat=True))
    deleted, _ = roles.delete()
    _opportunities_changed(bu_id, opp_ids, timeline=False)
    return deleted


def link_contact_roles(bu_id: int) -> int:
    """Contact roles whose contact was not a prospect yet: link them once the prospect has that CRM contact id."""
    from loopline.prospects.models import Prospect

    pending = OpportunityContactRole.objects.filter(bu_id=bu_id, prospect__isnull=True)
    contacts = list(pending.values_list("crm_contact_id", flat=True).distinct()[:5000])
    if not contacts:
        return 0
    found = dict(Prospect.objects.filter(bu_id=bu_id, crm_contact_id__in=contacts, is_deleted=False)
                 .values_list("crm_contact_id", "pk"))
    opp_ids: set[int] = set()
    for contact, pk in found.items():
        rows = pending.filter(crm_contact_id=contact)
        opp_ids |= set(rows.values_list("opportunity_id", flat=True))
        rows.update(prospect_id=pk)
    if opp_ids:
        _opportunities_changed(bu_id, opp_ids)
    return len(found)


def refresh_opportunities_for_prospects(bu_id: int, prospect_ids) -> None:
    """A prospect's memberships changed: re-attribute the opportunities it is a contact of."""
    opp_ids = set(OpportunityContactRole.objects.filter(bu_id=bu_id, prospect_id__in=list(prospect_ids))
                  .values_list("opportunity_id", flat=True))
    if opp_ids:
        attribution.recompute(bu_id, opp_ids)


def recompute_attribution(bu, opportunity_ids=None) -> dict:
    """Recompute first touch, last touch and even split ([M34]) set-based for the whole BU, or some opportunities."""
    return attribution.recompute(getattr(bu, "pk", bu), opportunity_ids)


def _opportunities_changed(bu_id: int, opp_ids, *, timeline: bool = True) -> None:
    opp_ids = sorted(set(opp_ids))
    if not opp_ids:
        return
    attribution.recompute(bu_id, opp_ids)
    if timeline:
        _opportunity_timeline_and_lifecycle(bu_id, opp_ids)


def _opportunity_timeline_and_lifecycle(bu_id: int, opp_ids: list[int]) -> None:
    """Opportunity created / won / lost on each contact's timeline (once each), and the opportunity and won stage
    dates ([M36])."""
    from loopline.prospects import services as prospect_services
    from loopline.prospects.models import ActivityType, Prospect

    roles = (OpportunityContactRole.objects.filter(bu_id=bu_id, opportunity_id__in=opp_ids, prospect__isnull=False)
             .select_related("opportunity"))
    opportunity_at: dict[int, dt.datetime] = {}
    won_at: dict[int, dt.datetime] = {}
    for role in roles:
        opp = role.opportunity
        pid = role.prospect_id
        if pid is None:
            continue
        prospect = Prospect(pk=pid, bu_id=bu_id)
        title = opp.name or opp.crm_id
        fields = []
        if not role.announced_created:
            prospect_services.record_activity(bu_id, ActivityType.OPPORTUNITY_CREATED, prospect=prospect,
                                              occurred_at=opp.crm_created_at, title=title, asset_type="opportunity",
                                              asset_id=opp.pk, data={"amount": str(opp.amount), "stage": opp.stage})
            role.announced_created = True
            fields.append("announced_created")
        outcome = opp.outcome
        if outcome in ("won", "lost") and role.announced_outcome != outcome:
            when = (dt.datetime.combine(opp.close_date, dt.time(12), tzinfo=dt.UTC) if opp.close_date
                    else timezone.now())
            kind = ActivityType.OPPORTUNITY_WON if outcome == "won" else ActivityType.OPPORTUNITY_LOST
            prospect_services.record_activity(bu_id, kind, prospect=prospect, occurred_at=when, title=title,
                                              asset_type="opportunity", asset_id=opp.pk,
                                              data={"amount": str(opp.amount), "stage": opp.stage})
            role.announced_outcome = outcome
            fields.append("announced_outcome")
            if outcome == "won":
                won_at[pid] = min(when, won_at.get(pid, when))
        if fields:
            role.save(update_fields=fields)
        opportunity_at[pid] = min(opp.crm_created_at, opportunity_at.get(pid, opp.crm_created_at))
    if opportunity_at:
        mark_lifecycle_many(bu_id, "opportunity", opportunity_at)
    if won_at:
        mark_lifecycle_many(bu_id, "won", won_at)


# --- Scheduled delivery ---------------------------------------------------------------------------------------------


def _next_run(frequency: str, after: dt.datetime) -> dt.datetime:
    base = after.astimezone(dt.UTC).replace(hour=6, minute=0, second=0, microsecond=0)
    if frequency == ScheduledReport.Frequency.DAILY:
        return base + dt.timedelta(days=1) if base <= after else base
    if frequency == ScheduledReport.Frequency.WEEKLY:
        days = (7 - base.weekday()) % 7 or (7 if base <= after else 0)
        return base + dt.timedelta(days=days)
    first = base.replace(day=1)
    if first <= after:
        first = (first + dt.timedelta(days=32)).replace(day=1)
    return first


_EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")


def parse_recipients(text: str) -> list[str]:
    items = [p.strip() for p in re.split(r"[\s,;]+", text or "") if p.strip()]
    bad = [p for p in items if not _EMAIL.match(p)]
    if bad:
        raise ValidationError({"recipients": f"Not an email address: {', '.join(bad[:3])}"})
    if not items:
        raise ValidationError({"recipients": "Add at least one email address."})
    if len(items) > 20:
        raise ValidationError({"recipients": "At most 20 recipients."})
    return items


@transaction.atomic
def save_scheduled_report(access: Access, *, report: str, frequency: str, recipients: str, params: dict,
                          instance: ScheduledReport | None = None) -> ScheduledReport:
    access.require("reports.report")
    if report not in ScheduledReport.Report.values:
        raise ValidationError({"report": "Unknown report"})
    if frequency not in ScheduledReport.Frequency.values:
        raise ValidationError({"frequency": "Unknown frequency"})
    emails = parse_recipients(recipients)
    row = instance or ScheduledReport(bu=access.bu, owner=access.user)
    if row.pk and row.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")
    row.report, row.frequency, row.recipients = report, frequency, "\n".join(emails)
    row.params = {k: str(v)[:40] for k, v in (params or {}).items() if k in ("period", "model", "currency", "type")}
    row.next_run_at = _next_run(frequency, timezone.now())
    row.save()
    audit.record("reports.schedule", actor=access.user, bu=access.bu, obj=row,
                 summary=f"{row.get_report_display()} {row.get_frequency_display().lower()} to {', '.join(emails)}")
    return row


@transaction.atomic
def delete_scheduled_report(access: Access, row: ScheduledReport) -> None:
    access.require("reports.report")
    if row.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")
    audit.record("reports.schedule_delete", actor=access.user, bu=access.bu, obj=row, summary=row.get_report_display())
    row.delete()


def send_due_reports(now: dt.datetime | None = None) -> int:
    """Send every scheduled report that is due. Each row is claimed by moving its due time first (compare-and-set),
    so two runners never send the same slot."""
    from . import delivery

    now = now or timezone.now()
    sent = 0
    for row in ScheduledReport.objects.filter(next_run_at__lte=now).select_related("bu", "owner")[:200]:
        claimed = ScheduledReport.objects.filter(pk=row.pk, next_run_at=row.next_run_at).update(
            next_run_at=_next_run(row.frequency, now))
        if not claimed:
            continue
        try:
            delivery.send_report(row)
        except Exception as exc:  # keep the schedule: the next slot tries again
            logger.exception("scheduled report %s failed", row.pk)
            ScheduledReport.objects.filter(pk=row.pk).update(last_error=str(exc)[:300])
        else:
            ScheduledReport.objects.filter(pk=row.pk).update(last_sent_at=now, last_error="")
            sent += 1
    return sent


def refresh_all() -> dict[str, int]:
    """Periodic housekeeping for every BU with reporting data: link contact roles, catch MQL/SQL, rebuild counters."""
    from loopline.accounts.models import BusinessUnit

    totals = {"linked": 0, "mql": 0, "sql": 0, "counters": 0}
    for bu_id in BusinessUnit.objects.values_list("pk", flat=True):
        totals["linked"] += link_contact_roles(bu_id)
        swept = sweep_lifecycle(bu_id)
        totals["mql"] += swept["mql"]
        totals["sql"] += swept["sql"]
        totals["counters"] += metrics.rebuild(bu_id)
    return totals
