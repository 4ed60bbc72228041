"""Writes and use cases for lists ([M16]), segmentation rules ([M18]) and automation rules ([M19]).

Membership of dynamic lists and automation rules follow prospect changes incrementally (:func:`prospects_changed`,
fed by the domain events subscribed in ``apps.py``) and dynamic lists are also rebuilt set-based by
:func:`refresh_list` (periodically and on demand).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from loopline.platform import actions, audit
from loopline.prospects.models import Prospect

from . import criteria
from .models import AutomationRule, ListMembership, ProspectList, RuleLog, RuleMatch

logger = logging.getLogger("loopline.automation")

INLINE_LIMIT = 200  # more changed prospects than this at once are re-evaluated in a background task
BATCH = 1000


# --- Lists: saving ---------------------------------------------------------------------------------------------------


def _check_list_cycle(bu, list_id: int | None, tree: Mapping) -> None:
    """A dynamic list may use other lists' membership, but never (through other lists) its own."""
    if list_id is None:
        return
    graph = {pk: criteria.referenced_lists(tree_) for pk, tree_ in
             ProspectList.objects.filter(bu_id=bu.pk, kind=ProspectList.Kind.DYNAMIC).exclude(pk=list_id)
             .values_list("pk", "criteria")}
    graph[list_id] = criteria.referenced_lists(tree)
    seen: set[int] = set()
    stack = list(graph[list_id])
    while stack:
        current = stack.pop()
        if current == list_id:
            raise ValidationError("The criteria refer back to this list (directly or through another list)")
        if current in seen:
            continue
        seen.add(current)
        stack.extend(graph.get(current, ()))


@transaction.atomic
def save_list(access, data: Mapping[str, Any], instance: ProspectList | None = None) -> ProspectList:
    """Create or change a list. ``data``: name, kind, criteria (dynamic), is_public, public_name, public_description,
    campaign_id. A dynamic list is refreshed at once so counts are right when the page shows."""
    access.require("lists.edit" if instance else "lists.create")
    bu = access.bu
    pl = instance or ProspectList(bu=bu)
    before = {"name": pl.name, "kind": pl.kind, "criteria": pl.criteria, "is_public": pl.is_public} if instance else None
    name = str(data.get("name", pl.name) or "").strip()
    if not name or len(name) > 200:
        raise ValidationError({"name": "Give the list a name (at most 200 characters)"})
    clash = ProspectList.objects.filter(bu=bu, name__iexact=name)
    if instance:
        clash = clash.exclude(pk=instance.pk)
    if clash.exists():
        raise ValidationError({"name": f"A list called {name} already exists"})
    pl.name = name
    kind = data.get("kind", pl.kind)
    if kind not in ProspectList.Kind.values:
        raise ValidationError({"kind": "Choose static or dynamic"})
    pl.kind = kind
    if kind == ProspectList.Kind.DYNAMIC:
        try:
            pl.criteria = criteria.validate(bu, data.get("criteria", pl.criteria))
        except ValidationError as exc:
            raise ValidationError({"criteria": exc.messages}) from None
    elif "criteria" in data:
        pl.criteria = {}
    for flag in ("is_public",):
        if flag in data:
            setattr(pl, flag, bool(data[flag]))
    for text, limit in (("public_name", 200), ("public_description", 2000)):
        if text in data:
            value = str(data[text] or "").strip()
            if len(value) > limit:
                raise ValidationError({text: f"At most {limit} characters"})
            setattr(pl, text, value)
    if "campaign_id" in data:
        from loopline.campaigns.models import Campaign

        campaign_id = data["campaign_id"] or None
        if campaign_id and not Campaign.objects.filter(bu=bu, pk=campaign_id).exists():
            raise ValidationError({"campaign_id": "No such campaign"})
        pl.campaign_id = campaign_id
    pl.save()
    if kind == ProspectList.Kind.DYNAMIC:
        try:
            _check_list_cycle(bu, pl.pk, pl.criteria)
        except ValidationError as exc:
            raise ValidationError({"criteria": exc.messages}) from None
    invalidate_bundle(bu.pk)
    after = {"name": pl.name, "kind": pl.kind, "criteria": pl.criteria, "is_public": pl.is_public}
    audit.record("list.save", actor=access.user, bu=bu, obj=pl, summary=pl.name, before=before, after=after)
    if pl.kind == ProspectList.Kind.DYNAMIC:
        refresh_list(pl)
    return pl


def references_to_list(bu, list_id: int) -> list[str]:
    """Names of the dynamic lists and rules whose criteria use this list."""
    found = [f'list "{name}"' for name, tree in ProspectList.objects.filter(bu=bu, kind=ProspectList.Kind.DYNAMIC)
             .exclude(pk=list_id).values_list("name", "criteria") if list_id in criteria.referenced_lists(tree)]
    for rule in AutomationRule.objects.filter(bu=bu):
        uses = list_id in criteria.referenced_lists(rule.criteria) or any(
            a.get("list_id") == list_id for a in rule.actions or [])
        if uses:
            found.append(f'rule "{rule.name}"')
    return found


@transaction.atomic
def delete_list(access, pl: ProspectList) -> None:
    access.require("lists.delete")
    users = references_to_list(access.bu, pl.pk)
    if users:
        raise ValidationError(f"The list is used by {', '.join(users)}; change those first")
    audit.record("list.delete", actor=access.user, bu=access.bu, obj=pl, summary=pl.name)
    pl.delete()
    invalidate_bundle(access.bu.pk)


# --- Lists: membership -----------------------------------------------------------------------------------------------


def _live_ids(bu, prospect_ids) -> QuerySet:
    """The BU's live prospects among ``prospect_ids`` (an iterable of ids or a queryset of ids)."""
    qs = Prospect.objects.filter(bu_id=bu.pk, is_deleted=False)
    if isinstance(prospect_ids, QuerySet):
        return qs.filter(pk__in=prospect_ids).values("pk")
    return qs.filter(pk__in=list(prospect_ids)).values("pk")


def _chunks(ids: list[int], size: int = BATCH) -> Iterable[list[int]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _insert_members(pl: ProspectList, id_query: QuerySet, source: str) -> int:
    """INSERT ... SELECT the ids of ``id_query`` that are not on the list yet (opted-out rows stay as they are)."""
    sql, params = id_query.query.sql_with_params()
    now = timezone.now()
    table = ListMembership._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (prospect_list_id, prospect_id, source, opted_out, created_at) "
            f"SELECT %s, m.pk, %s, %s, %s FROM ({sql}) AS m WHERE NOT EXISTS ("
            f"SELECT 1 FROM {table} AS lm WHERE lm.prospect_list_id = %s AND lm.prospect_id = m.pk) "
            "ON CONFLICT DO NOTHING",
            [pl.pk, source, False, now, *params, pl.pk],
        )
        return max(cursor.rowcount, 0)


def add_to_list(bu, prospect_list: ProspectList, prospect_ids, source: str = ListMembership.Source.MANUAL) -> int:
    """Put prospects on a static list; returns how many were added. Prospects who unsubscribed from this list stay
    unsubscribed. ``prospect_ids``: ids or a queryset of ids (set-based, any size)."""
    if prospect_list.bu_id != bu.pk:
        raise PermissionDenied("The list belongs to another business unit")
    if prospect_list.kind == ProspectList.Kind.DYNAMIC:
        raise ValidationError("Dynamic lists follow their criteria; prospects cannot be added by hand")
    if source not in ListMembership.Source.values:
        source = ListMembership.Source.MANUAL
    with transaction.atomic():
        ids = _live_ids(bu, prospect_ids)
        added = _insert_members(prospect_list, ids.values("pk").order_by(), source)
        if added:
            ProspectList.objects.filter(pk=prospect_list.pk).update(member_count=F("member_count") + added)
        _mark_members_changed(bu.pk, prospect_list, prospect_ids)
    return added


def remove_from_list(bu, prospect_list: ProspectList, prospect_ids) -> int:
    """Take prospects off a static list (the marker of anyone who unsubscribed stays); returns how many left."""
    if prospect_list.bu_id != bu.pk:
        raise PermissionDenied("The list belongs to another business unit")
    if prospect_list.kind == ProspectList.Kind.DYNAMIC:
        raise ValidationError("Dynamic lists follow their criteria; prospects cannot be removed by hand")
    with transaction.atomic():
        rows = ListMembership.objects.filter(prospect_list=prospect_list, opted_out=False)
        if isinstance(prospect_ids, QuerySet):
            rows = rows.filter(prospect_id__in=prospect_ids)
        else:
            rows = rows.filter(prospect_id__in=list(prospect_ids))
        removed, _ = rows.delete()
        if removed:
            ProspectList.objects.filter(pk=prospect_list.pk).update(member_count=F("member_count") - removed)
        _mark_members_changed(bu.pk, prospect_list, prospect_ids)
    return removed


def _mark_members_changed(bu_id: int, pl: ProspectList, prospect_ids) -> None:
    """Lists and rules may use membership of this list: re-check the prospects concerned."""
    if not _list_is_referenced(bu_id, pl.pk):
        return
    if isinstance(prospect_ids, QuerySet):
        from . import tasks

        tasks.enqueue_refresh_dependents(bu_id, pl.pk)  # any size: the dependent lists are refreshed set-based
    else:
        prospects_changed(bu_id, list(prospect_ids))


def _list_is_referenced(bu_id: int, list_id: int) -> bool:
    trees = list(ProspectList.objects.filter(bu_id=bu_id, kind=ProspectList.Kind.DYNAMIC)
                 .values_list("criteria", flat=True))
    trees += list(AutomationRule.objects.filter(bu_id=bu_id, kind=AutomationRule.Kind.AUTOMATION,
                                                status=AutomationRule.Status.ACTIVE).values_list("criteria", flat=True))
    return any(list_id in criteria.referenced_lists(t) for t in trees)


@transaction.atomic
def set_list_subscriptions(prospect: Prospect, subscriptions: Mapping[int, bool]) -> dict[int, bool]:
    """The email preference center ([M16]): subscribe to or unsubscribe from public lists of the prospect's BU.
    Unsubscribing keeps the row with ``opted_out=True`` so nothing re-adds the prospect silently; it does not opt
    the prospect out globally. Returns the resulting state per list id (non-public or unknown ids are ignored)."""
    now = timezone.now()
    lists = {pl.pk: pl for pl in ProspectList.objects.filter(bu_id=prospect.bu_id, is_public=True, is_archived=False,
                                                             pk__in=[int(k) for k in subscriptions])}
    result: dict[int, bool] = {}
    for raw_id, wanted in subscriptions.items():
        pl = lists.get(int(raw_id))
        if pl is None:
            continue
        row = ListMembership.objects.select_for_update().filter(prospect_list=pl, prospect=prospect).first()
        if wanted:
            if row is None:
                if pl.kind == ProspectList.Kind.DYNAMIC:
                    result[pl.pk] = False  # membership of a dynamic list follows its criteria
                    continue
                ListMembership.objects.create(prospect_list=pl, prospect=prospect,
                                              source=ListMembership.Source.PREFERENCE)
                ProspectList.objects.filter(pk=pl.pk).update(member_count=F("member_count") + 1)
            elif row.opted_out:
                row.opted_out, row.opted_out_at = False, None
                row.save(update_fields=["opted_out", "opted_out_at"])
                ProspectList.objects.filter(pk=pl.pk).update(member_count=F("member_count") + 1)
            result[pl.pk] = True
        else:
            if row is None:
                ListMembership.objects.create(prospect_list=pl, prospect=prospect, opted_out=True, opted_out_at=now,
                                              source=ListMembership.Source.PREFERENCE)
            elif not row.opted_out:
                row.opted_out, row.opted_out_at = True, now
                row.save(update_fields=["opted_out", "opted_out_at"])
                ProspectList.objects.filter(pk=pl.pk).update(member_count=F("member_count") - 1)
            result[pl.pk] = False
    if result:
        prospects_changed(prospect.bu_id, [prospect.pk])
    return result


def recount(pl: ProspectList) -> int:
    count = ListMembership.objects.filter(prospect_list=pl, opted_out=False, prospect__is_deleted=False).count()
    ProspectList.objects.filter(pk=pl.pk).update(member_count=count)
    pl.member_count = count
    return count


# --- Dynamic lists: full refresh --------------------------------------------------------------------------------------


def refresh_list(pl: ProspectList, *, prospect_ids: list[int] | None = None,
                 now: dt.datetime | None = None) -> tuple[int, int]:
    """Bring a dynamic list's membership in line with its criteria, set-based: insert the missing members, delete
    the extra ones (unsubscribe markers stay). ``prospect_ids`` limits the work to those prospects.
    Returns (added, removed)."""
    if pl.kind != ProspectList.Kind.DYNAMIC or not pl.criteria:
        return 0, 0
    bu = pl.bu
    now = now or timezone.now()
    with transaction.atomic():
        matching = criteria.matching_prospects(bu, pl.criteria, now=now)
        if prospect_ids is not None:
            matching = matching.filter(pk__in=prospect_ids)
        added = _insert_members(pl, matching.values("pk").order_by(), ListMembership.Source.DYNAMIC)
        still = criteria.matching_prospects(bu, pl.criteria, now=now).filter(pk=OuterRef("prospect_id"))
        extra = ListMembership.objects.filter(prospect_list=pl, opted_out=False).exclude(Exists(still))
        if prospect_ids is not None:
            extra = extra.filter(prospect_id__in=prospect_ids)
        removed, _ = extra.delete()
        if prospect_ids is None:
            count = ListMembership.objects.filter(prospect_list=pl, opted_out=False).count()
            ProspectList.objects.filter(pk=pl.pk).update(member_count=count, refreshed_at=now)
            pl.member_count, pl.refreshed_at = count, now
        elif added or removed:
            ProspectList.objects.filter(pk=pl.pk).update(member_count=F("member_count") + added - removed)
    return added, removed


def refresh_dynamic_lists(bu_id: int | None = None) -> int:
    """Refresh every dynamic list (periodic: conditions like "in the last 30 days" change with time alone)."""
    qs = ProspectList.objects.filter(kind=ProspectList.Kind.DYNAMIC, is_archived=False).select_related("bu")
    if bu_id is not None:
        qs = qs.filter(bu_id=bu_id)
    done = 0
    for pl in _dependency_order(list(qs)):
        try:
            refresh_list(pl)
            done += 1
        except Exception:  # one broken list must not stop the others
            logger.exception("refreshing dynamic list %s failed", pl.pk)
    return done


def _dependency_order(lists: list[ProspectList]) -> list[ProspectList]:
    """Lists that other lists' criteria use come first."""
    by_id = {pl.pk: pl for pl in lists}
    out: list[ProspectList] = []
    state: dict[int, int] = {}

    def visit(pl: ProspectList) -> None:
        if state.get(pl.pk) == 2:
            return
        if state.get(pl.pk) == 1:  # a cycle (refused on save): break it
            return
        state[pl.pk] = 1
        for ref in criteria.referenced_lists(pl.criteria):
            if ref in by_id:
                visit(by_id[ref])
        state[pl.pk] = 2
        out.append(pl)

    for pl in lists:
        visit(pl)
    return out


# --- Incremental updates on prospect changes --------------------------------------------------------------------------

_local = threading.local()


def prospects_changed(bu_id: int, prospect_ids: Iterable[int]) -> None:
    """Re-check dynamic lists and active automation rules for these prospects once the transaction commits
    (several changes of one prospect in one transaction are checked once)."""
    pending: dict[int, dict[int, None]] = getattr(_local, "pending", None) or {}
    _local.pending = pending
    bucket = pending.setdefault(bu_id, {})
    for pk in prospect_ids:
        if pk:
            bucket[int(pk)] = None
    if getattr(_local, "flushing", False):
        return  # the running flush picks them up
    # One callback per event: the first to run empties ``pending``, the others find nothing to do. (Checking for an
    # already registered callback would miss savepoint rollbacks and nested commit captures.)
    transaction.on_commit(_flush, robust=True)


def _flush() -> None:
    if getattr(_local, "flushing", False):
        return
    _local.flushing = True
    _local.checked = set()  # BUs whose lists and rules were checked current in this flush (rounds reuse them)
    try:
        for _round in range(5):  # actions may change prospects again; bounded so rules cannot ping-pong forever
            pending = getattr(_local, "pending", None) or {}
            _local.pending = {}
            if not pending:
                break
            for bu_id, ids in pending.items():
                ids_list = list(ids)
                if len(ids_list) > INLINE_LIMIT:
                    from . import tasks

                    for chunk in _chunks(ids_list, 5000):
                        tasks.enqueue_reevaluate(bu_id, chunk)
                    continue
                reevaluate(bu_id, ids_list)
    finally:
        _local.flushing = False
        _local.pending = {}
        _local.checked = None  # outside a flush every call checks the version


_BUNDLE_TTL = 30.0  # seconds at most a process reuses a BU's lists, rules and fields (see _bundle_version)
_bundles: dict[int, tuple[float, tuple, Any]] = {}


def invalidate_bundle(bu_id: int) -> None:
    _bundles.pop(bu_id, None)


def _bundle_version(bu_id: int) -> tuple:
    """One cheap round trip that changes whenever the BU's lists, rules or custom fields change (in any process)."""
    from loopline.accounts.models import BusinessUnit
    from loopline.prospects.models import CustomField

    lists, rules = ProspectList._meta.db_table, AutomationRule._meta.db_table
    sql = (f"SELECT (SELECT COUNT(*) FROM {lists} WHERE bu_id = %s), (SELECT MAX(updated_at) FROM {lists} "
           f"WHERE bu_id = %s), (SELECT COUNT(*) FROM {rules} WHERE bu_id = %s AND status = %s), "
           f"(SELECT MAX(updated_at) FROM {rules} WHERE bu_id = %s), "
           f"(SELECT COUNT(*) FROM {CustomField._meta.db_table} WHERE bu_id = %s), "
           f"(SELECT MAX(id) FROM {CustomField._meta.db_table} WHERE bu_id = %s), "
           f"(SELECT COUNT(*) FROM {BusinessUnit._meta.db_table} WHERE id = %s)")
    with connection.cursor() as cursor:
        cursor.execute(sql, [bu_id, bu_id, bu_id, AutomationRule.Status.ACTIVE, bu_id, bu_id, bu_id, bu_id])
        row = cursor.fetchone()
    return tuple(row or ())


def _bundle(bu_id: int):
    """(bu, dynamic lists in dependency order, active automation rules, field catalogue, their fact reader) for one
    BU, reused while its version is unchanged, so that a change of one prospect costs little more than the queries
    about it."""
    import time as _time

    from loopline.accounts.models import BusinessUnit

    cached = _bundles.get(bu_id)
    checked = getattr(_local, "checked", None)
    if cached and checked is not None and bu_id in checked:
        return cached[2]  # a later round of the same flush, milliseconds later: no need to ask again
    version = _bundle_version(bu_id)
    if cached and cached[1] == version and _time.monotonic() - cached[0] < _BUNDLE_TTL:
        if checked is not None:
            checked.add(bu_id)
        return cached[2]
    bu = BusinessUnit.objects.filter(pk=bu_id).first()
    if bu is None:
        return None
    lists = _dependency_order(list(ProspectList.objects.filter(bu_id=bu_id, kind=ProspectList.Kind.DYNAMIC,
                                                               is_archived=False).only("pk", "criteria", "kind")))
    rules = list(AutomationRule.objects.filter(bu_id=bu_id, kind=AutomationRule.Kind.AUTOMATION,
                                               status=AutomationRule.Status.ACTIVE))
    for rule in rules:
        rule.bu = bu
    reader = criteria.FactReader(bu, [pl.criteria for pl in lists] + [rule.criteria for rule in rules])
    bundle = (bu, lists, rules, criteria.field_catalogue(bu) if lists or rules else {}, reader)
    _bundles[bu_id] = (_time.monotonic(), version, bundle)
    if checked is not None:
        checked.add(bu_id)
    return bundle


def reevaluate(bu_id: int, prospect_ids: list[int], *, now: dt.datetime | None = None) -> None:
    """Dynamic-list membership and automation rules for these prospects, one prospect at a time (in memory).

    Reads are shared by every list and rule: one query for the prospect rows with the answers to all the activity,
    tag and opportunity conditions the BU's lists and rules use, one for their list memberships and, only when a
    rule matches, one for those rules' earlier matches. Writes happen only where something changes."""
    bundle = _bundle(bu_id)
    if bundle is None:
        return
    bu, lists, rules, catalogue, reader = bundle
    if not lists and not rules:
        return
    now = now or timezone.now()
    people, fact_names = reader.read(prospect_ids, now)
    if not people:
        return
    memberships: dict[int, dict[int, bool]] = defaultdict(dict)
    for pid, list_id, opted_out in ListMembership.objects.filter(prospect_id__in=[p.pk for p in people]).values_list(
            "prospect_id", "prospect_list_id", "opted_out"):
        memberships[pid][list_id] = opted_out
    for prospect in people:
        try:
            # One transaction per prospect: its membership changes and rule actions commit together (one commit,
            # not one per statement), and a failure undoes only this prospect's part.
            with transaction.atomic():
                ctx = criteria.EvalContext(prospect, now=now, facts=criteria.facts_of(prospect, fact_names),
                                           _lists=memberships[prospect.pk])
                for pl in lists:
                    _update_membership(bu, pl, prospect, ctx, catalogue)
                matched = [rule for rule in rules
                           if criteria.evaluate(bu, rule.criteria, prospect, context=ctx, catalogue=catalogue)]
                for rule, seen in _maybe_eligible(matched, prospect.pk, now):
                    apply_rule(rule, prospect, now=now, matched_before=seen)
        except Exception:  # one bad prospect never stops the others
            logger.exception("re-evaluating prospect %s failed", prospect.pk)


def _maybe_eligible(rules: list[AutomationRule], prospect_id: int,
                    now: dt.datetime) -> list[tuple[AutomationRule, bool]]:
    """The matching rules whose earlier matches do not rule the prospect out, each with whether it matched before
    (one query); ``apply_rule`` still claims the match atomically, this only spares the attempts sure to fail."""
    if not rules:
        return []
    earlier = {rule_id: (times, last) for rule_id, times, last in RuleMatch.objects.filter(
        prospect_id=prospect_id, rule_id__in=[r.pk for r in rules]).values_list("rule_id", "times", "last_matched_at")}
    out = []
    for rule in rules:
        seen = earlier.get(rule.pk)
        if seen is not None:
            times, last = seen
            if not rule.repeat or last > now - dt.timedelta(days=rule.repeat_after_days):
                continue
            if rule.max_repeats is not None and times >= rule.max_repeats:
                continue
        out.append((rule, seen is not None))
    return out


def _update_membership(bu, pl: ProspectList, prospect: Prospect, ctx: criteria.EvalContext, catalogue) -> None:
    matches = criteria.evaluate(bu, pl.criteria, prospect, context=ctx, catalogue=catalogue)
    state = ctx.lists.get(pl.pk)  # None: no row, False: member, True: unsubscribed marker
    if matches and state is None:
        _, created = ListMembership.objects.get_or_create(prospect_list_id=pl.pk, prospect_id=prospect.pk,
                                                          defaults={"source": ListMembership.Source.DYNAMIC})
        if created:
            ProspectList.objects.filter(pk=pl.pk).update(member_count=F("member_count") + 1)
        ctx.set_membership(pl.pk, False)
    elif not matches and state is False:
        deleted, _ = ListMembership.objects.filter(prospect_list_id=pl.pk, prospect_id=prospect.pk,
                                                   opted_out=False).delete()
        if deleted:
            ProspectList.objects.filter(pk=pl.pk).update(member_count=F("member_count") - deleted)
        ctx.set_membership(pl.pk, None)


# --- Rules -----------------------------------------------------------------------------------------------------------


@transaction.atomic
def save_rule(access, data: Mapping[str, Any], instance: AutomationRule | None = None) -> AutomationRule:
    """Create (paused, [M19]) or change a rule. ``data``: name, kind, criteria, actions, repeat, repeat_after_days,
    max_repeats."""
    access.require("automation.edit" if instance else "automation.create")
    bu = access.bu
    rule = instance or AutomationRule(bu=bu, created_by=access.user)
    errors: dict[str, list[str]] = {}
    name = str(data.get("name", rule.name) or "").strip()
    if not name or len(name) > 200:
        errors["name"] = ["Give the rule a name (at most 200 characters)"]
    kind = data.get("kind", rule.kind)
    if kind not in AutomationRule.Kind.values:
        errors["kind"] = ["Choose automation or segmentation"]
    elif name:
        clash = AutomationRule.objects.filter(bu=bu, kind=kind, name__iexact=name)
        if instance:
            clash = clash.exclude(pk=instance.pk)
        if clash.exists():
            errors["name"] = [f"A rule called {name} already exists"]
    try:
        rule.criteria = criteria.validate(bu, data.get("criteria", rule.criteria))
    except ValidationError as exc:
        errors["criteria"] = exc.messages
    try:
        rule.actions = actions.validate_actions(bu, data.get("actions", rule.actions))
        if not rule.actions:
            errors["actions"] = ["Add at least one action"]
    except ValidationError as exc:
        errors["actions"] = exc.messages
    rule.repeat = bool(data.get("repeat", rule.repeat))
    try:
        days = int(data.get("repeat_after_days", rule.repeat_after_days) or 0)
        if rule.repeat and not 1 <= days <= 3650:
            raise ValueError
        rule.repeat_after_days = max(days, 1)
    except (TypeError, ValueError):
        errors["repeat_after_days"] = ["Days before eligible again: a whole number from 1 to 3650"]
    raw_max = data.get("max_repeats", rule.max_repeats)
    try:
        rule.max_repeats = int(raw_max) if raw_max not in (None, "") else None
        if rule.max_repeats is not None and not 1 <= rule.max_repeats <= 10_000:
            raise ValueError
    except (TypeError, ValueError):
        errors["max_repeats"] = ["Maximum matches: a whole number from 1 to 10000, or empty for no limit"]
    if errors:
        raise ValidationError(errors)
    rule.name, rule.kind = name, kind
    if instance is None:
        rule.status = AutomationRule.Status.PAUSED
    rule.save()
    invalidate_bundle(bu.pk)
    audit.record("rule.save", actor=access.user, bu=bu, obj=rule, summary=rule.name,
                 after={"criteria": rule.criteria, "actions": rule.actions, "repeat": rule.repeat})
    return rule


@transaction.atomic
def resume_rule(access, rule: AutomationRule):
    """Start a rule: an automation rule evaluates every prospect in the background, then follows changes; a
    segmentation rule runs once over the current prospects. Returns the progress job."""
    from loopline.platform.tasks import create_job, enqueue_on_commit

    from . import tasks

    access.require("automation.edit")
    rule = AutomationRule.objects.select_for_update().get(pk=rule.pk, bu=access.bu)
    if rule.kind == AutomationRule.Kind.SEGMENTATION and rule.status in (AutomationRule.Status.RUNNING,
                                                                         AutomationRule.Status.COMPLETED):
        raise ValidationError("A segmentation rule runs once")
    if rule.kind == AutomationRule.Kind.AUTOMATION and rule.status == AutomationRule.Status.ACTIVE:
        return rule.job
    criteria.validate(rule.bu, rule.criteria)  # fields or lists may have gone since it was saved
    job = create_job(access.bu, "automation.rule", title=f"Evaluating {rule.name}", created_by=access.user,
                     params={"rule_id": rule.pk})
    rule.job = job
    rule.resumed_at = timezone.now()
    rule.status = (AutomationRule.Status.ACTIVE if rule.kind == AutomationRule.Kind.AUTOMATION
                   else AutomationRule.Status.RUNNING)
    rule.save(update_fields=["job", "resumed_at", "status", "updated_at"])
    invalidate_bundle(access.bu.pk)
    audit.record("rule.resume", actor=access.user, bu=access.bu, obj=rule, summary=rule.name)
    enqueue_on_commit(tasks.run_rule, rule.pk, job.pk)
    return job


@transaction.atomic
def pause_rule(access, rule: AutomationRule) -> None:
    access.require("automation.edit")
    if rule.kind == AutomationRule.Kind.AUTOMATION:
        AutomationRule.objects.filter(pk=rule.pk).update(status=AutomationRule.Status.PAUSED, updated_at=timezone.now())
        rule.status = AutomationRule.Status.PAUSED
        invalidate_bundle(access.bu.pk)
        audit.record("rule.pause", actor=access.user, bu=access.bu, obj=rule, summary=rule.name)


@transaction.atomic
def delete_rule(access, rule: AutomationRule) -> None:
    access.require("automation.delete")
    audit.record("rule.delete", actor=access.user, bu=access.bu, obj=rule, summary=rule.name)
    rule.delete()
    invalidate_bundle(access.bu.pk)


def _claim_match(rule: AutomationRule, prospect_id: int, now: dt.datetime, matched_before: bool | None = None) -> bool:
    """Record a match if the prospect is eligible; exactly one caller wins, also across workers ([M19], [M21]).
    ``matched_before=False`` (just read) skips looking for an earlier match to renew."""
    if rule.repeat and matched_before is not False:
        cutoff = now - dt.timedelta(days=rule.repeat_after_days)
        eligible = RuleMatch.objects.filter(rule=rule, prospect_id=prospect_id, last_matched_at__lte=cutoff)
        if rule.max_repeats is not None:
            eligible = eligible.filter(times__lt=rule.max_repeats)
        if eligible.update(times=F("times") + 1, last_matched_at=now):
            return True
    # INSERT ... ON CONFLICT DO NOTHING: the unique (rule, prospect) key decides who wins, without a savepoint.
    qn = connection.ops.quote_name
    when = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {qn(RuleMatch._meta.db_table)} ({qn('rule_id')}, {qn('prospect_id')}, {qn('times')}, "
            f"{qn('first_matched_at')}, {qn('last_matched_at')}) VALUES (%s, %s, 1, %s, %s) "
            f"ON CONFLICT DO NOTHING RETURNING {qn('id')}", [rule.pk, prospect_id, when, when])
        return cursor.fetchone() is not None


def apply_rule(rule: AutomationRule, prospect: Prospect, *, now: dt.datetime | None = None,
               matched_before: bool | None = None) -> bool:
    """Run the rule's actions on a matching prospect if eligible (match once / repeat); log what happened."""
    now = now or timezone.now()
    # No savepoint of its own inside a caller's transaction (re-evaluation runs one per prospect): a failure here
    # undoes that caller's unit of work, which is what it catches.
    with transaction.atomic(savepoint=False):
        if not _claim_match(rule, prospect.pk, now, matched_before):
            return False
        outcomes = actions.run_actions(rule.actions, actions.ActionContext(
            bu=rule.bu, prospect=prospect, source="automation_rule" if rule.kind == AutomationRule.Kind.AUTOMATION
            else "segmentation_rule", source_id=rule.pk))
        RuleLog.objects.create(rule=rule, prospect=prospect, prospect_label=(prospect.email or str(prospect))[:255],
                               at=now, ok=all(o.ok for o in outcomes),
                               outcomes=[{"type": o.type, "ok": o.ok, "detail": o.detail} for o in outcomes])
        AutomationRule.objects.filter(pk=rule.pk).update(matched_total=F("matched_total") + 1)
    return True


def _ineligible(rule: AutomationRule, now: dt.datetime) -> Q:
    """Prospects the rule must skip now (already matched, not yet eligible again or at the maximum)."""
    matches = RuleMatch.objects.filter(rule=rule, prospect_id=OuterRef("pk"))
    if rule.repeat:
        blocked = Q(last_matched_at__gt=now - dt.timedelta(days=rule.repeat_after_days))
        if rule.max_repeats is not None:
            blocked |= Q(times__gte=rule.max_repeats)
        matches = matches.filter(blocked)
    return Q(Exists(matches))


def run_rule(rule_id: int, job_id: int | None = None) -> int:
    """Retroactive evaluation ([M19]) / the one run of a segmentation rule ([M18]), in batches with progress.
    Idempotent: a repeated run skips prospects already matched. Stops when the rule is paused."""
    from loopline.platform import tasks as platform_tasks

    rule = AutomationRule.objects.select_related("bu").filter(pk=rule_id).first()
    if rule is None or rule.status not in (AutomationRule.Status.ACTIVE, AutomationRule.Status.RUNNING):
        if job_id:
            platform_tasks.finish_job(job_id, result={"matched": 0, "note": "rule not running"})
        return 0
    now = timezone.now()
    try:
        base = criteria.matching_prospects(rule.bu, rule.criteria, now=now).exclude(_ineligible(rule, now))
    except Exception as exc:
        if job_id:
            platform_tasks.fail_job(job_id, exc)
        raise
    total = base.count()
    if job_id:
        platform_tasks.start_job(job_id, total=total)
    applied = failed = 0
    last = 0
    while True:
        batch = list(base.filter(pk__gt=last).order_by("pk")[:500])
        if not batch:
            break
        last = batch[-1].pk
        done_here = 0
        for prospect in batch:
            try:
                if apply_rule(rule, prospect, now=now):
                    applied += 1
                done_here += 1
            except Exception:
                logger.exception("rule %s failed for prospect %s", rule.pk, prospect.pk)
                failed += 1
        if job_id:
            platform_tasks.advance(job_id, done_here, failed=len(batch) - done_here)
        status = AutomationRule.objects.filter(pk=rule.pk).values_list("status", flat=True).first()
        if status not in (AutomationRule.Status.ACTIVE, AutomationRule.Status.RUNNING):
            break
        if job_id and platform_tasks.is_cancelled(job_id):
            break
    if rule.kind == AutomationRule.Kind.SEGMENTATION:
        AutomationRule.objects.filter(pk=rule.pk, status=AutomationRule.Status.RUNNING).update(
            status=AutomationRule.Status.COMPLETED, updated_at=timezone.now())
    if job_id:
        platform_tasks.finish_job(job_id, result={"matched": applied, "failed": failed})
    return applied


# --- Actions: add_to_list / remove_from_list ---------------------------------------------------------------------------


def validate_list_action(bu, params: Mapping[str, Any]) -> dict:
    """``list_id`` (or a list name typed in the action editor) of a static list of this BU."""
    raw = str(params.get("list_id", "") or "").strip()
    qs = ProspectList.objects.filter(bu_id=bu.pk)
    pl = qs.filter(pk=int(raw)).first() if raw.isdigit() else qs.filter(name__iexact=raw).first() if raw else None
    if pl is None:
        raise ValidationError("choose a list of this business unit")
    if pl.kind == ProspectList.Kind.DYNAMIC:
        raise ValidationError(f'"{pl.name}" is a dynamic list: its criteria decide who is on it')
    return {"list_id": pl.pk}


def run_add_to_list(ctx: actions.ActionContext, params: Mapping[str, Any]) -> str:
    pl = ProspectList.objects.filter(bu_id=ctx.bu.pk, pk=params["list_id"]).first()
    if pl is None:
        raise ValidationError("the list no longer exists")
    source = ListMembership.Source.ACTION
    added = add_to_list(ctx.bu, pl, [ctx.prospect.pk], source)
    return f"added to {pl.name}" if added else f"already on {pl.name}"


def run_remove_from_list(ctx: actions.ActionContext, params: Mapping[str, Any]) -> str:
    pl = ProspectList.objects.filter(bu_id=ctx.bu.pk, pk=params["list_id"]).first()
    if pl is None:
        raise ValidationError("the list no longer exists")
    removed = remove_from_list(ctx.bu, pl, [ctx.prospect.pk])
    return f"removed from {pl.name}" if removed else f"was not on {pl.name}"


def register_actions() -> None:
    actions.register(actions.ActionType("add_to_list", "Add to list", validate_list_action, run_add_to_list))
    actions.register(actions.ActionType("remove_from_list", "Remove from list", validate_list_action,
                                        run_remove_from_list))


# --- Event handlers (subscribed in apps.py) ----------------------------------------------------------------------------


def on_prospect_changed(event) -> None:
    if "is_deleted" in event.changed_fields and not event.created:  # back from the recycle bin
        list_ids = list(ListMembership.objects.filter(prospect_id=event.prospect_id, opted_out=False)
                        .values_list("prospect_list_id", flat=True))
        ProspectList.objects.filter(pk__in=list_ids).update(member_count=F("member_count") + 1)
    prospects_changed(event.bu_id, [event.prospect_id])


def on_prospects_bulk_changed(event) -> None:
    prospects_changed(event.bu_id, event.prospect_ids)


def on_activity_recorded(event) -> None:
    if event.prospect_id and not event.is_machine:
        prospects_changed(event.bu_id, [event.prospect_id])


def on_prospect_deleted(event) -> None:
    """Counts leave out prospects in the recycle bin (a permanent delete takes the rows with it)."""
    if event.permanent:
        return
    list_ids = list(ListMembership.objects.filter(prospect_id=event.prospect_id, opted_out=False)
                    .values_list("prospect_list_id", flat=True))
    ProspectList.objects.filter(pk__in=list_ids).update(member_count=F("member_count") - 1)


def on_prospects_merged(event) -> None:
    """The survivor gets the loser's static memberships (the loser goes to the recycle bin)."""
    rows = ListMembership.objects.filter(prospect_id=event.loser_id, prospect_list__kind=ProspectList.Kind.STATIC)
    for row in rows.select_related("prospect_list"):
        if row.opted_out:
            ListMembership.objects.get_or_create(prospect_list_id=row.prospect_list_id, prospect_id=event.survivor_id,
                                                 defaults={"opted_out": True, "opted_out_at": row.opted_out_at,
                                                           "source": row.source})
        elif not ListMembership.objects.filter(prospect_list_id=row.prospect_list_id,
                                               prospect_id=event.survivor_id).exists():
            ListMembership.objects.create(prospect_list_id=row.prospect_list_id, prospect_id=event.survivor_id,
                                          source=row.source)
            ProspectList.objects.filter(pk=row.prospect_list_id).update(member_count=F("member_count") + 1)
    prospects_changed(event.bu_id, [event.survivor_id])
