"""Reads of lists and rules. Every query is scoped by business unit."""

from __future__ import annotations

from django.db.models import Exists, OuterRef, QuerySet

from loopline.prospects.models import Prospect

from .models import AutomationRule, ListMembership, ProspectList, RuleLog


def lists(bu, *, kind: str | None = None, include_archived: bool = False) -> QuerySet[ProspectList]:
    qs = ProspectList.objects.filter(bu_id=bu.pk)
    if kind:
        qs = qs.filter(kind=kind)
    if not include_archived:
        qs = qs.filter(is_archived=False)
    return qs.order_by("name", "id")


def get_list(bu, list_id) -> ProspectList:
    from django.http import Http404

    try:
        pk = int(list_id)
    except (TypeError, ValueError):
        raise Http404("No such list") from None
    pl = ProspectList.objects.filter(bu_id=bu.pk, pk=pk).first()
    if pl is None:
        raise Http404("No such list")
    return pl


def list_recipient_ids(bu, include_list_ids, exclude_list_ids=()) -> QuerySet:
    """Ids of live prospects on any include list (not unsubscribed from it), minus members of any exclude
    (suppression) list — one query, for list emails and program recipients ([M16], [M20], [M25])."""
    include = [int(i) for i in include_list_ids]
    exclude = [int(i) for i in exclude_list_ids or ()]
    members = ListMembership.objects.filter(prospect_id=OuterRef("pk"), prospect_list_id__in=include,
                                            prospect_list__bu_id=bu.pk, opted_out=False)
    qs = Prospect.objects.filter(bu_id=bu.pk, is_deleted=False).filter(Exists(members))
    if exclude:
        suppressed = ListMembership.objects.filter(prospect_id=OuterRef("pk"), prospect_list_id__in=exclude,
                                                   prospect_list__bu_id=bu.pk, opted_out=False)
        qs = qs.exclude(Exists(suppressed))
    return qs.values_list("pk", flat=True)


def public_lists(bu) -> QuerySet[ProspectList]:
    """Lists shown in the email preference center."""
    return ProspectList.objects.filter(bu_id=bu.pk, is_public=True, is_archived=False).order_by("name", "id")


def lists_for_prospect(prospect) -> QuerySet[ProspectList]:
    """Lists the prospect has a row on, each annotated ``subscribed`` (False: unsubscribed from that list)."""
    rows = ListMembership.objects.filter(prospect_list_id=OuterRef("pk"), prospect_id=prospect.pk)
    return (ProspectList.objects.filter(bu_id=prospect.bu_id).filter(Exists(rows))
            .annotate(subscribed=Exists(rows.filter(opted_out=False))).order_by("name", "id"))


def members(access, pl: ProspectList) -> QuerySet[Prospect]:
    """Members of a list as the acting user may see them (Sales: own prospects only)."""
    from loopline.prospects.selectors import scoped_prospects

    rows = ListMembership.objects.filter(prospect_list_id=pl.pk, prospect_id=OuterRef("pk"), opted_out=False)
    return scoped_prospects(access).filter(Exists(rows)).select_related("assigned_user").order_by("-id")


def unsubscribed(access, pl: ProspectList) -> QuerySet[Prospect]:
    from loopline.prospects.selectors import scoped_prospects

    rows = ListMembership.objects.filter(prospect_list_id=pl.pk, prospect_id=OuterRef("pk"), opted_out=True)
    return scoped_prospects(access).filter(Exists(rows)).order_by("-id")


def rules(bu, kind: str) -> QuerySet[AutomationRule]:
    return AutomationRule.objects.filter(bu_id=bu.pk, kind=kind).select_related("job").order_by("name", "id")


def get_rule(bu, rule_id) -> AutomationRule:
    from django.http import Http404

    try:
        pk = int(rule_id)
    except (TypeError, ValueError):
        raise Http404("No such rule") from None
    rule = AutomationRule.objects.filter(bu_id=bu.pk, pk=pk).select_related("job").first()
    if rule is None:
        raise Http404("No such rule")
    return rule


def rule_log(rule: AutomationRule, *, failed_only: bool = False, limit: int = 200) -> QuerySet[RuleLog]:
    qs = RuleLog.objects.filter(rule=rule)
    if failed_only:
        qs = qs.filter(ok=False)
    return qs.order_by("-at", "-id")[:limit]


def static_lists_for_picker(bu) -> QuerySet[ProspectList]:
    return ProspectList.objects.filter(bu_id=bu.pk, kind=ProspectList.Kind.STATIC, is_archived=False).order_by("name")


def rules_using(bu, list_id: int) -> list[AutomationRule]:
    from . import criteria

    return [r for r in AutomationRule.objects.filter(bu_id=bu.pk)
            if list_id in criteria.referenced_lists(r.criteria) or any(
                a.get("list_id") == list_id for a in r.actions or [])]

