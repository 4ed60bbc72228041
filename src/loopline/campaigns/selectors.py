"""Reads behind the reports ([M33]-[M36]). Users who see all prospects read the precomputed tables
(``AttributionDaily``, ``DailyMetric``); users limited to their assigned prospects ([M1]) get the same figures computed
live over their own prospects and the opportunities those prospects are contacts of."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.http import Http404
from django.utils import timezone

from loopline.accounts.access import Access
from loopline.prospects.models import Activity, ActivityType, Prospect, Visitor
from loopline.prospects.selectors import scoped_prospects

from . import metrics
from .models import (
    Attribution,
    AttributionDaily,
    AttributionModel,
    Campaign,
    CampaignMember,
    DailyMetric,
    Opportunity,
    OpportunityContactRole,
    ReportSettings,
)

MODELS = {m.value: m.label for m in AttributionModel}
MODEL_KEYS = {"first": AttributionModel.FIRST_TOUCH, "last": AttributionModel.LAST_TOUCH,
              "even": AttributionModel.EVEN_SPLIT}


# --- Periods ---------------------------------------------------------------------------------------------------------

PRESETS = {"30d": "Last 30 days", "90d": "Last 90 days", "365d": "Last 12 months", "this_year": "This year",
           "last_year": "Last year", "all": "All time"}


@dataclass(frozen=True)
class Period:
    start: dt.date
    end: dt.date
    preset: str = ""

    @property
    def label(self) -> str:
        return PRESETS.get(self.preset) or f"{self.start:%d %b %Y} – {self.end:%d %b %Y}"

    @property
    def start_at(self) -> dt.datetime:
        return dt.datetime.combine(self.start, dt.time(), tzinfo=dt.UTC)

    @property
    def end_at(self) -> dt.datetime:
        """Exclusive upper bound."""
        return dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)

    def query(self) -> str:
        return f"period={self.preset}" if self.preset else f"start={self.start}&end={self.end}"


def period_from(params, default: str = "90d", today: dt.date | None = None) -> tuple[Period, str]:
    """A period from ``period`` (a preset) or ``start``/``end`` (ISO dates). Returns the period and an error message
    for a bad input (the default period is used then)."""
    today = today or timezone.now().astimezone(dt.UTC).date()
    start_raw, end_raw = str(params.get("start") or "").strip(), str(params.get("end") or "").strip()
    if start_raw or end_raw:
        try:
            start = dt.date.fromisoformat(start_raw) if start_raw else dt.date(2000, 1, 1)
            end = dt.date.fromisoformat(end_raw) if end_raw else today
        except ValueError:
            return preset_period(default, today), "Dates must look like 2026-03-31; showing the default period."
        if end < start:
            return preset_period(default, today), "The end date is before the start date; showing the default period."
        return Period(start, end), ""
    preset = str(params.get("period") or default)
    if preset not in PRESETS:
        return preset_period(default, today), "Unknown period; showing the default period."
    return preset_period(preset, today), ""


def preset_period(preset: str, today: dt.date) -> Period:
    if preset == "this_year":
        return Period(dt.date(today.year, 1, 1), today, preset)
    if preset == "last_year":
        return Period(dt.date(today.year - 1, 1, 1), dt.date(today.year - 1, 12, 31), preset)
    if preset == "all":
        return Period(dt.date(2000, 1, 1), today, preset)
    days = int(preset.removesuffix("d"))
    return Period(today - dt.timedelta(days=days - 1), today, preset)


# --- Arithmetic that never divides by zero ([M35]) -------------------------------------------------------------------


@dataclass
class Figure:
    """A computed number, or the reason it cannot be computed."""

    value: float | None
    reason: str = ""

    def __str__(self) -> str:
        return self.reason if self.value is None else f"{self.value:.2f}"


def ratio(numerator: float, denominator: float | None, reason: str) -> Figure:
    if denominator is None or denominator == 0:
        return Figure(None, reason)
    return Figure(numerator / denominator)


def roi_figures(cost: Decimal | None, *, prospects: float, opportunities: float, wins: float,
                won_amount: float) -> dict[str, Figure]:
    """ROI = (won amount attributed − cost) / cost; cost per prospect / opportunity / win ([M35])."""
    if cost is None:
        missing = "not computable: no cost recorded"
        return {k: Figure(None, missing) for k in ("roi", "cost_per_prospect", "cost_per_opportunity", "cost_per_win")}
    c = float(cost)
    return {
        "roi": ratio(won_amount - c, c, "not computable: the cost is zero"),
        "cost_per_prospect": ratio(c, prospects, "no prospects in this period"),
        "cost_per_opportunity": ratio(c, opportunities, "no opportunities in this period"),
        "cost_per_win": ratio(c, wins, "no won opportunities in this period"),
    }


# --- Scope -------------------------------------------------------------------------------------------------------------


def visible_opportunities(access: Access) -> QuerySet[Opportunity]:
    """Opportunities of the BU; for users limited to their prospects, only those one of their prospects is a contact
    of ([M1])."""
    qs = Opportunity.objects.filter(bu_id=access.bu.pk)
    if not access.sees_all_prospects:
        mine = scoped_prospects(access).values("pk")
        qs = qs.filter(pk__in=OpportunityContactRole.objects.filter(prospect_id__in=mine).values("opportunity_id"))
    return qs


def get_opportunity(access: Access, pk: int) -> Opportunity:
    opp = visible_opportunities(access).filter(pk=pk).first()
    if opp is None:
        raise Http404("No such opportunity")
    return opp


def get_campaign(access: Access, pk: int) -> Campaign:
    campaign = Campaign.objects.filter(bu_id=access.bu.pk, pk=pk).first()
    if campaign is None:
        raise Http404("No such campaign")
    return campaign


def _currency_volumes(access: Access) -> dict[str, float]:
    """Opportunities per currency (first-touch rows count each opportunity once), one small aggregate."""
    return {r["currency"]: r["n"] or 0 for r in AttributionDaily.objects.filter(
        bu_id=access.bu.pk, model=AttributionModel.FIRST_TOUCH).values("currency").annotate(n=Sum("opportunities"))
        .order_by()}


def currencies(access: Access, volumes: dict[str, float] | None = None) -> list[str]:
    found = set(volumes if volumes is not None else _currency_volumes(access))
    settings_row = ReportSettings.objects.filter(bu_id=access.bu.pk).first()
    if settings_row and settings_row.default_currency:
        found.add(settings_row.default_currency)
    return sorted(found)


def default_currency(access: Access, volumes: dict[str, float] | None = None) -> str:
    settings_row = ReportSettings.objects.filter(bu_id=access.bu.pk).first()
    if settings_row and settings_row.default_currency:
        return settings_row.default_currency
    volumes = volumes if volumes is not None else _currency_volumes(access)
    return max(sorted(volumes), key=lambda c: volumes[c]) if volumes else ""


# --- ROI ([M35]) ----------------------------------------------------------------------------------------------------


@dataclass
class RoiRow:
    key: int | str
    name: str
    type: str = ""
    cost: Decimal | None = None
    prospects: int = 0
    opportunities: float = 0.0
    pipeline: float = 0.0
    wins: float = 0.0
    won: dict[int, float] = field(default_factory=lambda: {1: 0.0, 2: 0.0, 3: 0.0})
    figures: dict[str, Figure] = field(default_factory=dict)
    campaign_id: int | None = None
    costed_campaigns: int = 0
    campaigns: int = 0
    costed: RoiRow | None = None  # a group's campaigns that have a cost: ROI of a group is computed over them


@dataclass
class RoiReport:
    period: Period
    model: int
    currency: str
    rows: list[RoiRow]
    types: list[RoiRow]
    total: RoiRow
    unattributed: RoiRow
    notes: list[str]
    currencies: list[str]


def _roi_sums(access: Access, period: Period, currency: str) -> tuple[dict, dict, dict]:
    """(per campaign/model figures, prospects per campaign, notes counters) for the period and currency."""
    figures: dict[tuple[int, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counters: dict[str, float] = defaultdict(float)
    if access.sees_all_prospects:
        daily = AttributionDaily.objects.filter(bu_id=access.bu.pk, day__gte=period.start, day__lte=period.end)
        # One scan for every currency: the chosen one fills the table, the others only count in a note.
        for r in (daily.values("campaign_key", "model", "currency")
                  .annotate(o=Sum("opportunities"), p=Sum("pipeline"), w=Sum("wins"), a=Sum("won_amount"),
                            mi=Sum("missing_amounts"), ne=Sum("negative_amounts")).order_by()):
            if r["currency"] != currency:
                if r["model"] == AttributionModel.FIRST_TOUCH:
                    counters["other_currency"] += r["o"] or 0
                continue
            f = figures[(r["campaign_key"], r["model"])]
            f["opportunities"], f["pipeline"], f["wins"], f["won"] = r["o"], r["p"], r["w"], r["a"]
            if r["model"] == AttributionModel.FIRST_TOUCH:
                counters["missing"] += r["mi"]
                counters["negative"] += r["ne"]
        prospects = {r["campaign_key"]: r["n"] for r in DailyMetric.objects.filter(
            bu_id=access.bu.pk, metric="prospect", day__gte=period.start, day__lte=period.end)
            .values("campaign_key").annotate(n=Sum("count")).order_by()}
        return figures, prospects, counters
    return _roi_sums_live(access, period, currency)


def _roi_sums_live(access: Access, period: Period, currency: str, opportunities=None, prospects_qs=None):
    """The same sums from the raw tables (scoped users; and the tests' cross-check of the aggregates)."""
    figures: dict[tuple[int, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counters: dict[str, float] = defaultdict(float)
    opps = opportunities if opportunities is not None else visible_opportunities(access)
    rows = (Attribution.objects.filter(opportunity_id__in=opps.values_list("pk", flat=True))
            .values("campaign_id", "model", "weight", "created_day", "won_day", "opportunity__amount",
                    "opportunity__currency"))
    for r in rows:
        amount = r["opportunity__amount"]
        positive = float(amount) if amount is not None and amount > 0 else 0.0
        in_created = period.start <= r["created_day"] <= period.end if r["created_day"] else False
        in_won = r["won_day"] is not None and period.start <= r["won_day"] <= period.end
        if r["opportunity__currency"] != currency:
            if in_created and r["model"] == AttributionModel.FIRST_TOUCH:
                counters["other_currency"] += 1
            continue
        f = figures[(r["campaign_id"] or 0, r["model"])]
        if in_created:
            f["opportunities"] += r["weight"]
            f["pipeline"] += r["weight"] * positive
            if r["model"] == AttributionModel.FIRST_TOUCH:
                counters["missing"] += amount is None
                counters["negative"] += amount is not None and amount < 0
        if in_won:
            f["wins"] += r["weight"]
            f["won"] += r["weight"] * positive
    people = prospects_qs if prospects_qs is not None else scoped_prospects(access, include_deleted=True)
    prospects = {r["source_campaign_id"] or 0: r["n"] for r in people.filter(
        created_at__gte=period.start_at, created_at__lt=period.end_at).values("source_campaign_id")
        .annotate(n=Count("pk")).order_by()}
    return figures, prospects, counters


def roi_report(access: Access, period: Period, *, model: int = AttributionModel.EVEN_SPLIT, currency: str | None = None,
               campaign_type: str = "") -> RoiReport:
    volumes = _currency_volumes(access)
    currency = default_currency(access, volumes) if currency is None else currency
    figures, prospects, counters = _roi_sums(access, period, currency)
    campaigns = Campaign.objects.filter(bu_id=access.bu.pk).order_by("name")
    if campaign_type:
        campaigns = campaigns.filter(type=campaign_type)

    def fill(row: RoiRow, key: int) -> None:
        row.prospects += int(prospects.get(key, 0))
        for m in MODELS:
            f = figures.get((key, m))
            if f:
                row.won[m] += f["won"]
                if m == model:
                    row.opportunities += f["opportunities"]
                    row.pipeline += f["pipeline"]
                    row.wins += f["wins"]

    rows = []
    for c in campaigns:
        row = RoiRow(key=c.pk, name=c.name, type=c.type, cost=c.actual_cost, campaign_id=c.pk, campaigns=1,
                     costed_campaigns=int(c.actual_cost is not None))
        fill(row, c.pk)
        row.figures = roi_figures(row.cost, prospects=row.prospects, opportunities=row.opportunities, wins=row.wins,
                                  won_amount=row.won[model])
        rows.append(row)
    by_type: dict[str, RoiRow] = {}
    for row in rows:
        t = by_type.setdefault(row.type or "", RoiRow(key=row.type or "", name=row.type or "(no type)", type=row.type))
        _add(t, row)
    types = sorted(by_type.values(), key=lambda r: r.name.lower())
    for t in types:
        t.figures = _group_figures(t, model)
    unattributed = RoiRow(key=0, name="Unattributed (no campaign touch before close)")
    if not campaign_type:
        fill(unattributed, 0)
    total = RoiRow(key="total", name="Total")
    for row in rows:
        _add(total, row)
    total.figures = _group_figures(total, model)
    notes = []
    if counters["missing"]:
        notes.append(f"{int(counters['missing'])} opportunities have no amount: they count as opportunities, "
                     "with 0 revenue.")
    if counters["negative"]:
        notes.append(f"{int(counters['negative'])} opportunities have a negative amount: counted as 0 revenue.")
    if counters["other_currency"]:
        notes.append(f"{round(counters['other_currency'])} opportunities in other currencies are not included "
                     "— choose their currency above. Costs are taken to be in the chosen currency.")
    if not any(r.opportunities or r.wins or r.prospects for r in rows) and not unattributed.opportunities:
        notes.append("Nothing happened in this period: no new prospects and no opportunities.")
    rows.sort(key=lambda r: (-r.won[model], -r.pipeline, r.name.lower()))
    return RoiReport(period, model, currency, rows, types, total, unattributed, notes, currencies(access, volumes))


def _add(target: RoiRow, row: RoiRow) -> None:
    target.prospects += row.prospects
    target.opportunities += row.opportunities
    target.pipeline += row.pipeline
    target.wins += row.wins
    for m in MODELS:
        target.won[m] += row.won[m]
    target.campaigns += 1
    if row.cost is not None:
        target.cost = (target.cost or Decimal(0)) + row.cost
        target.costed_campaigns += 1
        if target.costed is None:
            target.costed = RoiRow(key="costed", name="")
        costed = target.costed
        costed.prospects += row.prospects
        costed.opportunities += row.opportunities
        costed.wins += row.wins
        for m in MODELS:
            costed.won[m] += row.won[m]


def _group_figures(group: RoiRow, model: int) -> dict[str, Figure]:
    """A group's ROI and costs per result count only its campaigns that have a cost (revenue of a campaign without a
    cost would make the ROI look better than it is); the page says so."""
    basis = group.costed if group.costed is not None else group
    result = roi_figures(group.cost, prospects=basis.prospects, opportunities=basis.opportunities, wins=basis.wins,
                         won_amount=basis.won[model])
    if group.cost is not None and group.costed_campaigns < group.campaigns:
        for f in result.values():
            if f.value is not None:
                f.reason = f"over the {group.costed_campaigns} of {group.campaigns} campaigns with a cost"
    return result


# --- Lifecycle ([M36]) ------------------------------------------------------------------------------------------------


@dataclass
class StageRow:
    key: str
    label: str
    count: int | None
    conversion: Figure | None = None
    mean_days: Figure | None = None


def lifecycle_report(access: Access, period: Period) -> list[StageRow]:
    """Counts per stage reached within the period, conversion from the previous stage (this stage's count over the
    previous one's) and the mean time from the previous stage to this one."""
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    if access.sees_all_prospects:
        for r in (DailyMetric.objects.filter(bu_id=access.bu.pk, day__gte=period.start, day__lte=period.end)
                  .values("metric").annotate(n=Sum("count"), s=Sum("seconds")).order_by()):
            counts[r["metric"]], seconds[r["metric"]] = int(r["n"] or 0), float(r["s"] or 0)
    else:
        people = scoped_prospects(access, include_deleted=True)
        counts["prospect"] = people.filter(created_at__gte=period.start_at, created_at__lt=period.end_at).count()
        for stage, fname in metrics.STAGE_FIELDS.items():
            previous = metrics.PREVIOUS_FIELD[stage]
            agg = people.filter(**{f"{fname}__gte": period.start_at, f"{fname}__lt": period.end_at}).aggregate(
                n=Count("pk"), s=Sum(F(fname) - Coalesce(F(previous), F(fname))))
            counts[stage] = agg["n"]
            seconds[stage] = agg["s"].total_seconds() if agg["s"] else 0.0
    labels = dict(_stage_labels())
    rows = [StageRow("visitor", labels["visitor"], counts.get("visitor", 0) if access.sees_all_prospects else None)]
    previous_count: int | None = rows[0].count
    previous_label = labels["visitor"]
    for stage in metrics.STAGE_ORDER:
        n = counts.get(stage, 0)
        row = StageRow(stage, labels[stage], n)
        if previous_count is not None:
            row.conversion = ratio(n * 100.0, previous_count, f"no {previous_label.lower()} in this period")
        if stage != "prospect":
            row.mean_days = ratio(seconds.get(stage, 0.0) / 86400.0, n, "nobody reached this stage")
        rows.append(row)
        previous_count, previous_label = n, labels[stage]
    return rows


def _stage_labels():
    from .models import LifecycleStage

    return [(s.value, s.label) for s in LifecycleStage]


def stage_prospects(access: Access, stage: str, period: Period, *, campaign_id: int | None = None) -> QuerySet[Prospect]:
    """Drill-down: the prospects behind a lifecycle count (or a campaign's new prospects)."""
    people = scoped_prospects(access, include_deleted=True)
    fname = "created_at" if stage == "prospect" else metrics.STAGE_FIELDS.get(stage)
    if fname is None:
        raise Http404("Unknown stage")
    people = people.filter(**{f"{fname}__gte": period.start_at, f"{fname}__lt": period.end_at})
    if campaign_id is not None:
        people = people.filter(source_campaign_id=campaign_id or None)
    return people.select_related("source_campaign", "assigned_user").order_by(f"-{fname}", "-pk")


def campaign_opportunities(access: Access, period: Period, *, campaign_id: int | None, model: int,
                           kind: str = "created") -> list[dict[str, Any]]:
    """Drill-down: opportunities credited to a campaign (None = unattributed) under a model in the period."""
    rows = Attribution.objects.filter(bu_id=access.bu.pk, model=model,
                                      opportunity__in=visible_opportunities(access).values("pk"))
    rows = rows.filter(campaign_id=campaign_id) if campaign_id else rows.filter(campaign__isnull=True)
    if kind == "won":
        rows = rows.filter(won_day__gte=period.start, won_day__lte=period.end)
    else:
        rows = rows.filter(created_day__gte=period.start, created_day__lte=period.end)
    result = []
    for a in rows.select_related("opportunity").order_by("-opportunity__crm_created_at")[:1000]:
        o = a.opportunity
        share = Decimal(str(round(a.weight, 6)))
        result.append({"opportunity": o, "share": a.weight,
                       "attributed": (o.amount * share).quantize(Decimal("0.01")) if o.amount and o.amount > 0 else None})
    return result


def campaign_members(access: Access, campaign_id: int) -> tuple[QuerySet[CampaignMember], dict[str, int]]:
    """A campaign's members the user may see ([M33]), newest first, with counts by status."""
    members = CampaignMember.objects.filter(bu_id=access.bu.pk, campaign_id=campaign_id)
    if not access.sees_all_prospects:
        members = members.filter(prospect_id__in=scoped_prospects(access, include_deleted=True).values("pk"))
    counts = {r["status"]: r["n"] for r in members.values("status").annotate(n=Count("pk")).order_by("status")}
    return members.select_related("prospect").order_by("-added_at", "-pk"), counts


# --- Opportunity breakdown ([M34]) -----------------------------------------------------------------------------------


def opportunity_breakdown(access: Access, opp: Opportunity) -> dict[str, Any]:
    roles = list(opp.contact_roles.select_related("prospect").order_by("-is_primary", "pk"))
    visible = set(scoped_prospects(access, include_deleted=True).filter(
        pk__in=[r.prospect_id for r in roles if r.prospect_id]).values_list("pk", flat=True))
    touches = []
    prospect_ids = [r.prospect_id for r in roles if r.prospect_id]
    for m in (CampaignMember.objects.filter(prospect_id__in=prospect_ids).select_related("campaign", "prospect")
              .order_by("added_at", "campaign_id")):
        touches.append({"member": m, "counted": opp.close_cutoff is None or m.added_at < opp.close_cutoff,
                        "visible": m.prospect_id in visible})
    models: dict[int, list[dict[str, Any]]] = {m: [] for m in MODELS}
    amount = opp.amount if opp.amount is not None and opp.amount > 0 else Decimal(0)
    for a in opp.attributions.select_related("campaign").order_by("model", "-weight", "campaign__name"):
        models[a.model].append({"campaign": a.campaign, "share": a.weight,
                                "amount": (amount * Decimal(str(round(a.weight, 6)))).quantize(Decimal("0.01"))})
    return {"roles": roles, "visible": visible, "touches": touches,
            "models": [(MODELS[m], rows) for m, rows in models.items()]}


def opportunity_list(access: Access, *, outcome: str = "", q: str = "") -> QuerySet[Opportunity]:
    qs = visible_opportunities(access)
    if outcome == "open":
        qs = qs.filter(is_closed=False)
    elif outcome == "won":
        qs = qs.filter(is_won=True)
    elif outcome == "lost":
        qs = qs.filter(is_closed=True, is_won=False)
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(crm_id=q))
    return qs.order_by("-crm_created_at", "-pk")


def top_campaigns(access: Access, period: Period, currency: str, limit: int = 5) -> list[RoiRow]:
    """The campaigns with the most won revenue (even split) in the period, with their pipeline and new prospects."""
    even = AttributionModel.EVEN_SPLIT
    if not access.sees_all_prospects:
        report = roi_report(access, period, model=even, currency=currency)
        return [r for r in report.rows if r.won[even] or r.pipeline or r.prospects][:limit]
    best = list(AttributionDaily.objects.filter(
        bu_id=access.bu.pk, model=even, currency=currency, day__gte=period.start, day__lte=period.end,
        campaign_key__gt=0).values("campaign_key").annotate(won=Sum("won_amount"), pipeline=Sum("pipeline"))
        .order_by("-won", "-pipeline")[:limit])
    names = dict(Campaign.objects.filter(bu_id=access.bu.pk, pk__in=[b["campaign_key"] for b in best])
                 .values_list("pk", "name"))
    prospects = {r["campaign_key"]: r["n"] for r in DailyMetric.objects.filter(
        bu_id=access.bu.pk, metric="prospect", day__gte=period.start, day__lte=period.end,
        campaign_key__in=list(names)).values("campaign_key").annotate(n=Sum("count")).order_by()}
    rows = []
    for b in best:
        if b["campaign_key"] not in names or not (b["won"] or b["pipeline"]):
            continue
        row = RoiRow(key=b["campaign_key"], name=names[b["campaign_key"]], campaign_id=b["campaign_key"],
                     pipeline=b["pipeline"] or 0.0, prospects=int(prospects.get(b["campaign_key"], 0)))
        row.won[even] = b["won"] or 0.0
        rows.append(row)
    return rows


# --- Dashboard ---------------------------------------------------------------------------------------------------------


def dashboard(access: Access, period: Period) -> dict[str, Any]:
    bu_id = access.bu.pk
    currency = default_currency(access)
    stages = {row.key: row for row in lifecycle_report(access, period)}
    # One pass over the opportunities for the three opportunity figures.
    is_open = Q(is_closed=False)
    won_in_period = Q(is_won=True, close_date__gte=period.start, close_date__lte=period.end)
    positive = Q(amount__gt=0)
    figures = visible_opportunities(access).filter(currency=currency).aggregate(
        open_s=Sum("amount", filter=is_open & positive), open_n=Count("pk", filter=is_open),
        won_s=Sum("amount", filter=won_in_period & positive), won_n=Count("pk", filter=won_in_period),
        created=Count("pk", filter=Q(created_day__gte=period.start, created_day__lte=period.end)))
    open_pipeline = {"s": figures["open_s"], "n": figures["open_n"]}
    won = {"s": figures["won_s"], "n": figures["won_n"]}
    created = figures["created"]
    top = top_campaigns(access, period, currency)
    # Daily series of new prospects and MQLs.
    days = (period.end - period.start).days + 1
    series_start = period.start if days <= 92 else period.end - dt.timedelta(days=91)
    series: dict[str, dict[dt.date, int]] = {"prospect": {}, "mql": {}}
    r: Any
    if access.sees_all_prospects:
        for r in (DailyMetric.objects.filter(bu_id=bu_id, metric__in=["prospect", "mql"], day__gte=series_start,
                                             day__lte=period.end)
                  .values("metric", "day").annotate(n=Sum("count")).order_by()):
            series[r["metric"]][r["day"]] = int(r["n"])
    else:
        people = scoped_prospects(access, include_deleted=True)
        start_at = dt.datetime.combine(series_start, dt.time(), tzinfo=dt.UTC)
        for key, fname in (("prospect", "created_at"), ("mql", "mql_at")):
            for r in (people.filter(**{f"{fname}__gte": start_at, f"{fname}__lt": period.end_at})
                      .annotate(day=TruncDate(fname)).values("day").annotate(n=Count("pk")).order_by()):
                series[key][r["day"]] = r["n"]
    labels = [series_start + dt.timedelta(days=i) for i in range((period.end - series_start).days + 1)]
    return {
        "currency": currency, "stages": stages,
        "new_prospects": stages["prospect"].count, "mqls": stages["mql"].count, "sqls": stages["sql"].count,
        "pipeline": open_pipeline["s"] or 0, "open_opportunities": open_pipeline["n"],
        "won_amount": won["s"] or 0, "won_count": won["n"], "opportunities_created": created,
        "top_campaigns": top,
        "chart": {"labels": [d.isoformat() for d in labels],
                  "prospects": [series["prospect"].get(d, 0) for d in labels],
                  "mqls": [series["mql"].get(d, 0) for d in labels],
                  "top_names": [r.name for r in top],
                  "top_won": [round(r.won[AttributionModel.EVEN_SPLIT], 2) for r in top]},
        "email": activity_performance(access, period, EMAIL_TYPES),
        "forms": activity_performance(access, period, FORM_TYPES),
    }


EMAIL_TYPES = (ActivityType.EMAIL_SENT, ActivityType.EMAIL_OPEN, ActivityType.EMAIL_CLICK,
               ActivityType.EMAIL_HARD_BOUNCE, ActivityType.UNSUBSCRIBE)
FORM_TYPES = (ActivityType.FORM_VIEW, ActivityType.FORM_SUCCESS, ActivityType.FORM_ERROR,
              ActivityType.LANDING_PAGE_SUCCESS)


def activity_performance(access: Access, period: Period, types) -> dict[str, Any]:
    """Email and form performance from the activity timeline (what the tracking, forms and email apps record)."""
    qs = Activity.objects.filter(bu_id=access.bu.pk, type__in=[int(t) for t in types], is_machine=False,
                                 occurred_at__gte=period.start_at, occurred_at__lt=period.end_at)
    if not access.sees_all_prospects:
        qs = qs.filter(prospect_id__in=scoped_prospects(access, include_deleted=True).values("pk"))
    counts = {r["type"]: r["n"] for r in qs.values("type").annotate(n=Count("pk")).order_by()}
    rows = [(ActivityType(t).label, counts.get(int(t), 0)) for t in types]
    first = counts.get(int(types[0]), 0)
    rates = []
    for t in types[1:]:
        rates.append((ActivityType(t).label, ratio(counts.get(int(t), 0) * 100.0, first,
                                                   f"no {ActivityType(types[0]).label.lower()}s")))
    return {"rows": rows, "rates": rates, "any": any(counts.values())}


def visitors_total(access: Access) -> int:
    return Visitor.objects.filter(bu_id=access.bu.pk).count()


# --- Read by the criteria language (automation) --------------------------------------------------------------------------


def opportunity_roles(bu_id: int, *, stage: str = "", outcome: str = "", min_amount: Decimal | None = None,
                      created_since: dt.datetime | None = None) -> QuerySet[OpportunityContactRole]:
    """Contact roles that tie a prospect to one of the BU's opportunities passing these filters ([M17] "has an
    opportunity ..."). ``outcome``: won, lost (closed, not won), open or "" (any). The stage compares without case."""
    qs = OpportunityContactRole.objects.filter(bu_id=bu_id, opportunity__bu_id=bu_id, prospect_id__isnull=False)
    if stage:
        qs = qs.filter(opportunity__stage__iexact=stage)
    if outcome == "won":
        qs = qs.filter(opportunity__is_won=True)
    elif outcome == "lost":
        qs = qs.filter(opportunity__is_closed=True, opportunity__is_won=False)
    elif outcome == "open":
        qs = qs.filter(opportunity__is_closed=False)
    if min_amount is not None:
        qs = qs.filter(opportunity__amount__gte=min_amount)
    if created_since is not None:
        qs = qs.filter(opportunity__crm_created_at__gte=created_since)
    return qs


def opportunity_stages(bu_id: int) -> list[str]:
    """The stages the BU's opportunities use, for pickers."""
    return sorted(set(Opportunity.objects.filter(bu_id=bu_id).exclude(stage="").values_list("stage", flat=True)
                      .distinct()[:200]))
