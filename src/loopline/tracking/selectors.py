"""Reads for the tracking UI: visitors and per-asset reports. Always scoped by business unit ([M1])."""

from __future__ import annotations

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
