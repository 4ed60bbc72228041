"""Reads for the tracking UI: visitors and per-asset reports. Always scoped by business unit ([M1])."""

from __future__ import annotations

import datetime as dt

from django.db.models import Count, Q, QuerySet
from django.http import Http404

from loopline.prospects.models import Activity, ActivityType, Visitor

from .models import CustomRedirect, TrackedFile


def visitors(access, *, anonymous_only: bool = False) -> QuerySet[Visitor]:
    qs = Visitor.objects.filter(bu_id=access.bu.pk).select_related("prospect")
    if not access.sees_all_prospects:
        qs = qs.filter(prospect__assigned_user_id=access.user.pk)
    if anonymous_only:
        qs = qs.filter(prospect__isnull=True)
    return qs.order_by("-last_seen_at", "-id")


def get_visitor(access, pk) -> Visitor:
    try:
        return visitors(access).get(pk=int(pk))
    except (Visitor.DoesNotExist, ValueError, TypeError):
        raise Http404("No such visitor") from None


def visitor_activity(visitor: Visitor, limit: int = 200):
    return Activity.objects.filter(visitor_id=visitor.pk).order_by("-occurred_at", "-id")[:limit]


def asset_counts(bu_id: int, asset_type: str) -> dict[int, dict[int, dict[str, int]]]:
    """{asset_id: {activity type: {"raw": n, "human": n, "prospects": distinct prospects}}}"""
    rows = (Activity.objects.filter(bu_id=bu_id, asset_type=asset_type)
            .values("asset_id", "type")
            .annotate(raw=Count("id"), human=Count("id", filter=Q(is_machine=False)),
                      prospects=Count("prospect_id", distinct=True)))
    result: dict[int, dict[int, dict[str, int]]] = {}
    for r in rows:
        if r["asset_id"] is None:
            continue
        result.setdefault(r["asset_id"], {})[r["type"]] = {"raw": r["raw"], "human": r["human"],
                                                           "prospects": r["prospects"]}
    return result


def _n(counts, asset_id, type_, key="human") -> int:
    return counts.get(asset_id, {}).get(type_, {}).get(key, 0)


def conversion_rows(bu_id: int, assets, asset_type: str, success: int, error: int, view: int | None = None):
    counts = asset_counts(bu_id, asset_type)
    rows = []
    for a in assets:
        views = _n(counts, a.pk, view) if view else None
        ok = _n(counts, a.pk, success)
        rows.append({"asset": a, "views": views, "success": ok, "errors": _n(counts, a.pk, error),
                     "prospects": _n(counts, a.pk, success, "prospects"),
                     "rate": (round(100 * ok / views, 1) if views else None)})
    return rows


def click_rows(bu_id: int, assets, asset_type: str, type_: int):
    counts = asset_counts(bu_id, asset_type)
    return [{"asset": a, "human": _n(counts, a.pk, type_), "raw": _n(counts, a.pk, type_, "raw"),
             "prospects": _n(counts, a.pk, type_, "prospects")} for a in assets]


def redirects(access):
    return CustomRedirect.objects.filter(bu_id=access.bu.pk).select_related("campaign")


def files(access):
    return TrackedFile.objects.filter(bu_id=access.bu.pk).select_related("campaign")


TRACKING_TYPES = (ActivityType.PAGE_VIEW, ActivityType.VISIT)


# --- Per-asset reports ([M5], [M9]: views, submissions, conversion rate, clicks) -------------------------------------

REPORT_PERIODS = (7, 30, 90, 365)


def report_days(value) -> int:
    try:
        days = int(value)
    except (TypeError, ValueError):
        return 30
    return days if days in REPORT_PERIODS else 30


def asset_report(bu_id: int, asset_type: str, asset_id: int, series: dict[str, int], *, days: int = 30,
                 rate: tuple[str, str] | None = None, recent: int = 50) -> dict:
    """Daily human counts per series (``{"Views": ActivityType.FORM_VIEW, ...}``) over the last ``days`` days, totals
    over the period and all time, machine events counted apart, the conversion rate ``rate = (success, views)``, and
    the latest activities. One grouped query for the days, one for the totals."""
    from django.db.models.functions import TruncDate
    from django.utils import timezone

    today = timezone.now().date()
    start = today - dt.timedelta(days=days - 1)
    since = timezone.make_aware(dt.datetime.combine(start, dt.time.min), dt.UTC)
    base = Activity.objects.filter(bu_id=bu_id, asset_type=asset_type, asset_id=asset_id,
                                   type__in=list(series.values()))
    by_day = (base.filter(occurred_at__gte=since, is_machine=False).annotate(day=TruncDate("occurred_at", tzinfo=dt.UTC))
              .values("day", "type").annotate(n=Count("id")))
    labels = [start + dt.timedelta(days=i) for i in range(days)]
    index = {d: i for i, d in enumerate(labels)}
    data = {t: [0] * days for t in series.values()}
    for row in by_day:
        day = row["day"]
        if isinstance(day, str):  # SQLite returns text
            day = dt.date.fromisoformat(day)
        if day in index:
            data[row["type"]][index[day]] += row["n"]
    totals_rows = base.values("type").annotate(
        human=Count("id", filter=Q(is_machine=False)), machine=Count("id", filter=Q(is_machine=True)),
        period=Count("id", filter=Q(is_machine=False, occurred_at__gte=since)),
        prospects=Count("prospect_id", distinct=True, filter=Q(is_machine=False)))
    by_type: dict[int, dict] = {r["type"]: dict(r) for r in totals_rows}
    totals = []
    for label, type_ in series.items():
        r: dict = by_type.get(type_, {})
        totals.append({"label": label, "type": type_, "period": r.get("period", 0), "all": r.get("human", 0),
                       "machine": r.get("machine", 0), "prospects": r.get("prospects", 0)})
    conversion = None
    if rate:
        ok, views = (sum(data[series[name]]) for name in rate)
        conversion = round(100 * ok / views, 1) if views else None
    latest = list(base.select_related("prospect").order_by("-occurred_at", "-id")[:recent])
    return {
        "days": days, "periods": REPORT_PERIODS, "totals": totals, "conversion": conversion,
        "chart": {"labels": [d.isoformat() for d in labels],
                  "datasets": [{"label": name, "data": data[t]} for name, t in series.items()]},
        "recent": latest,
    }


def comparison_chart(rows, value_key: str, label: str, *, limit: int = 12) -> dict:
    """Bar-chart data comparing assets of a list page (the busiest ``limit``)."""
    top = sorted(rows, key=lambda r: r.get(value_key) or 0, reverse=True)[:limit]
    return {"labels": [str(r["asset"].name)[:40] for r in top],
            "datasets": [{"label": label, "data": [r.get(value_key) or 0 for r in top]}]}


# Second-level labels under which the registrable name is the third label (acme.co.uk).
_SECOND_LEVEL = {"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or"}
# Hostnames of access providers say nothing about the visitor's company.
_ACCESS_PROVIDER_HINTS = ("dsl", "dyn", "dial", "pool", "cable", "broadband", "mobile", "cust", "client", "static",
                          "ip-", "res.", "fiber", "fibre", "wireless", "amazonaws", "googleusercontent", "cloud")


def company_guess(hostname: str) -> str:
    """The organisation domain behind a visitor's reverse-DNS hostname ("gw1.acme-corp.com" → "acme-corp.com"), or ""
    when unknown or when it looks like an access provider's address. A guess; shown as such."""
    host = (hostname or "").strip(".").lower()
    if not host or "." not in host or any(h in host for h in _ACCESS_PROVIDER_HINTS):
        return ""
    labels = host.split(".")
    if labels[-1].isdigit():  # an IP address, not a name
        return ""
    take = 3 if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL and len(labels[-1]) == 2 else 2
    return ".".join(labels[-take:])
