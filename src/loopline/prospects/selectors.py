"""Reads of prospects. ``scoped_prospects`` is the one place BU and role scoping is applied ([M1])."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from loopline.accounts.access import Access

from .models import Activity, Prospect


def scoped_prospects(access: Access, *, include_deleted: bool = False, only_deleted: bool = False) -> QuerySet[Prospect]:
    """Every prospect query starts here: the acting user's BU, and for Sales only prospects assigned to them."""
    qs = Prospect.objects.filter(bu_id=access.bu.pk)
    if not access.sees_all_prospects:
        qs = qs.filter(assigned_user_id=access.user.pk)
    if only_deleted:
        return qs.filter(is_deleted=True)
    if not include_deleted:
        qs = qs.filter(is_deleted=False)
    return qs


def get_prospect(access: Access, prospect_id: int | str, *, include_deleted: bool = False) -> Prospect:
    """A prospect the user may see, or 404 — also for ids in another BU or not assigned to a Sales user."""
    try:
        pk = int(prospect_id)
    except (TypeError, ValueError):
        raise Http404("No such prospect") from None
    prospect = scoped_prospects(access, include_deleted=include_deleted).filter(pk=pk).first()
    if prospect is None:
        raise Http404("No such prospect")
    return prospect


def timeline(prospect: Prospect, *, types: list[int] | None = None, limit: int = 100) -> QuerySet[Activity]:
    qs = Activity.objects.filter(prospect_id=prospect.pk)
    if types:
        qs = qs.filter(type__in=types)
    return qs.order_by("-occurred_at", "-id")[:limit]


def find_by_email(bu_id: int, email: str, *, include_deleted: bool = True) -> Prospect | None:
    """Most recently updated prospect with this email in the BU."""
    qs = Prospect.objects.filter(bu_id=bu_id, email=email.strip().lower())
    if not include_deleted:
        qs = qs.filter(is_deleted=False)
    return qs.order_by("-updated_at", "-id").first()
