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


def timeline(prospect: Prospect, *, types: list[int] | None = None, limit: int = 100,
             offset: int = 0) -> QuerySet[Activity]:
    qs = Activity.objects.filter(prospect_id=prospect.pk)
    if types:
        qs = qs.filter(type__in=types)
    return qs.order_by("-occurred_at", "-id")[offset:offset + limit]


def find_by_email(bu_id: int, email: str, *, include_deleted: bool = True) -> Prospect | None:
    """Most recently updated prospect with this email in the BU."""
    qs = Prospect.objects.filter(bu_id=bu_id, email=email.strip().lower())
    if not include_deleted:
        qs = qs.filter(is_deleted=False)
    return qs.order_by("-updated_at", "-id").first()


# --- The prospect list: filters, search and sort as a pure function of the GET parameters -------------------------

# sort key -> ORDER BY; every order ends with the primary key so pages are stable. Each leading column is indexed.
SORTS: dict[str, tuple[str, ...]] = {
    "created": ("id",),
    "-created": ("-id",),
    "email": ("email", "id"),
    "-email": ("-email", "-id"),
    "name": ("_last_name_lower", "id"),
    "-name": ("-_last_name_lower", "-id"),
    "company": ("_company_lower", "id"),
    "-company": ("-_company_lower", "-id"),
    "score": ("score", "id"),
    "-score": ("-score", "-id"),
    "last_activity": ("last_activity_at", "id"),
    "-last_activity": ("-last_activity_at", "-id"),
}
DEFAULT_SORT = "-created"
GRADES = ("A+", "A", "A-", "B+", "B", "B-", "C+", "C", "C-", "D+", "D", "D-", "F")
FILTER_PARAMS = ("q", "assigned", "score_min", "score_max", "grade", "tag", "opted_out", "starred",
                 "created_from", "created_to", "sort")


def _int(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _date(value):
    import datetime as dt

    try:
        return dt.date.fromisoformat(str(value).strip())
    except (TypeError, ValueError):
        return None


def _prefix_range(qs: QuerySet, column: str, prefix: str) -> QuerySet:
    """``column`` starts with ``prefix`` as a range, so a plain b-tree index serves it under any collation."""
    return qs.filter(**{f"{column}__gte": prefix, f"{column}__lt": prefix + "\uffff"})


def filter_prospects(access: Access, params) -> QuerySet[Prospect]:
    """The prospect list's query: scoped, filtered, searched and sorted from GET-style ``params`` (a QueryDict or dict).

    Unknown or malformed parameters are ignored. Used by the list page and by export, so both select the same rows.
      q             search: an email prefix (contains "@"), else a last-name or company prefix, or "first last"
      assigned      a user id, "me" or "none"
      score_min/max integer bounds        grade    one of GRADES
      tag           tag id                 opted_out / starred   "yes" | "no"
      created_from / created_to            ISO dates (inclusive)
      sort          a key of SORTS (prefix "-" for descending)
    """
    import datetime as dt

    from django.db.models import Q
    from django.db.models.functions import Lower

    get = params.get
    qs = scoped_prospects(access).alias(_last_name_lower=Lower("last_name"), _company_lower=Lower("company"))

    q = " ".join(str(get("q") or "").split()).lower()[:200]
    if q:
        if "@" in q:
            qs = _prefix_range(qs, "email", q)
        elif " " in q:
            first, _, last = q.partition(" ")
            qs = _prefix_range(qs, "_last_name_lower", last).filter(first_name__istartswith=first)
        else:
            end = q + "\uffff"
            # Each branch is served by its own index (PostgreSQL combines them with a bitmap OR).
            qs = qs.filter(Q(_last_name_lower__gte=q, _last_name_lower__lt=end)
                           | Q(_company_lower__gte=q, _company_lower__lt=end)
                           | Q(email__gte=q, email__lt=end))

    assigned = str(get("assigned") or "").strip()
    if assigned == "me":
        qs = qs.filter(assigned_user_id=access.user.pk)
    elif assigned == "none":
        qs = qs.filter(assigned_user__isnull=True)
    elif _int(assigned) is not None:
        qs = qs.filter(assigned_user_id=_int(assigned))

    if (low := _int(get("score_min"))) is not None:
        qs = qs.filter(score__gte=low)
    if (high := _int(get("score_max"))) is not None:
        qs = qs.filter(score__lte=high)
    if (grade := str(get("grade") or "").strip().upper()) in GRADES:
        qs = qs.filter(grade=grade)
    if (tag_id := _int(get("tag"))) is not None:
        qs = qs.filter(prospecttag__tag_id=tag_id, prospecttag__tag__bu_id=access.bu.pk)
    for flag in ("opted_out", "starred"):
        value = str(get(flag) or "").strip().lower()
        if value in ("yes", "no"):
            qs = qs.filter(**{flag: value == "yes"})
    if (start := _date(get("created_from"))) is not None:
        qs = qs.filter(created_at__gte=dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC))
    if (end := _date(get("created_to"))) is not None:
        qs = qs.filter(created_at__lt=dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC))

    sort = str(get("sort") or DEFAULT_SORT)
    order = SORTS.get(sort, SORTS[DEFAULT_SORT])
    owner = access.user.pk if (not access.sees_all_prospects or assigned == "me") else _int(assigned)
    if owner is not None and _owns_few(access, owner):
        # One user's prospects are a small slice of a big BU: read them through the (bu, assigned_user) index and
        # sort that slice, rather than walk a sort index past every other owner's rows (seconds on a million rows
        # when the slice sits at the far end of the sort order). A NULLS placement that no index provides makes the
        # planner do exactly that (the sort columns are NOT NULL, except last_activity_at where "never" goes last
        # when sorting newest first, and first when sorting oldest first).
        order = tuple(_unindexed(key) for key in order)
    return qs.order_by(*order)


SMALL_SLICE = 50_000  # sorting this many rows in memory stays well under a second


def _owns_few(access: Access, owner_id: int) -> bool:
    """Whether one user owns few enough live prospects to sort them directly (a cheap, capped index-only count)."""
    owned = Prospect.objects.filter(bu_id=access.bu.pk, assigned_user_id=owner_id, is_deleted=False)
    return owned.values("pk")[: SMALL_SLICE + 1].count() <= SMALL_SLICE


def _unindexed(key: str):
    from django.db.models import F

    name = key.removeprefix("-")
    if key.startswith("-"):
        return F(name).desc(nulls_last=True)
    return F(name).asc(nulls_first=True)


def custom_value_count(bu, cf) -> int:
    """How many live or recycled prospects of the BU hold a value for this custom field."""
    return Prospect.objects.filter(bu=bu, custom__has_key=cf.api_name).count()
