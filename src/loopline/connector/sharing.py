"""Business units and marketing data sharing ([R34]–[R37]).

Several BUs may connect to one CRM org. Each then needs *marketing data sharing* rules: per object (Lead, Contact,
Opportunity) one unmapped CRM field that must equal a value (case-sensitive); records created by the connector user
match by default. The rules live in ``Connector.settings["sharing_rules"]``::

    {"Lead": {"field": "Description", "value": "EMEA"}, "Contact": {...}, "Opportunity": {...}}

What this module does:

* :func:`set_sharing_rules` — the validated, audited change (paused connector only, [R37]);
* :func:`second_bu_problem` — why a second BU may not connect to an org yet ([R34]), used by verify and resume;
* :func:`screen` — the pull's filter: records the BU does not see are neither created nor linked, a linked record that
  stops matching sends its prospect to the recycle bin, and it comes back when it matches again ([R35], [R36]); a
  record another BU on the org already syncs is left alone ([R34]);
* :func:`screen_candidates` — the push's filter: a record found by email that the BU does not see, or that another BU
  on the org already syncs, does not exist for the push (never linked, never written); a linked record that visibly
  stops matching is not written to ([R34], [R35]);
* :func:`hidden_prospect_ids` — prospects whose CRM record, as last pulled, is not shared with their BU (emails, [R36]).

The state "not shared" is the prospect's timeline: the last of the ``crm_not_shared`` / ``crm_shared_again`` events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from loopline.platform import audit
from loopline.prospects import services as prospect_services
from loopline.prospects.models import Activity, ActivityType, Prospect

from .engine import RunCounters, SkipReason
from .engine.lifecycle import SharingRule, is_visible
from .engine.model import CrmObject, CrmRecord, id18, same_id
from .models import Connector, CrmDescribe, CrmLink, FieldMapping
from .salesforce.client import CrmApiError

if TYPE_CHECKING:
    from loopline.accounts.access import Access

    from .sync.context import SyncContext

SETTINGS_KEY = "sharing_rules"
RECHECK_KEY = "sharing_recheck"
RECHECK_CHUNK = 200  # ids per query (one API call each)
RULE_OBJECTS = ("Lead", "Contact", "Opportunity")
NOT_SHARED_REASON = "CRM record not shared with this business unit ([R36])"
EVENT_HIDDEN = "crm_not_shared"
EVENT_SHOWN = "crm_shared_again"
PEOPLE = frozenset({CrmObject.LEAD.value, CrmObject.CONTACT.value, CrmObject.PERSON_ACCOUNT.value})


# --- Reading rules --------------------------------------------------------------------------------------------------


def rules_from_settings(settings: Mapping[str, Any] | None) -> dict[str, SharingRule]:
    raw = (settings or {}).get(SETTINGS_KEY) or {}
    out: dict[str, SharingRule] = {}
    for object_type in RULE_OBJECTS:
        rule = raw.get(object_type) if isinstance(raw, Mapping) else None
        if isinstance(rule, Mapping) and rule.get("field") and rule.get("value") not in (None, ""):
            out[object_type] = SharingRule(object_type, str(rule["field"]), str(rule["value"]))
    return out


def rules_of(connector: Connector) -> dict[str, SharingRule]:
    """The connector's rules as engine :class:`SharingRule` objects, by object type."""
    return rules_from_settings(connector.settings)


def has_rules(connector: Connector) -> bool:
    """Lead and contact rules are defined (together, [R35])."""
    rules = rules_of(connector)
    return "Lead" in rules and "Contact" in rules


def extra_fields(rules: Mapping[str, SharingRule], object_type: str) -> list[str]:
    """The rule field to add to a lead/contact query ([R35]). Person accounts have no rule field of their own yet:
    for a BU with rules they are not visible (never created or linked)."""
    rule = rules.get(object_type) if object_type in (CrmObject.LEAD, CrmObject.CONTACT) else None
    return [rule.field] if rule is not None else []


def _rule_for(rules: Mapping[str, SharingRule], object_type: str) -> SharingRule | None:
    return rules.get(CrmObject.CONTACT.value if object_type == CrmObject.PERSON_ACCOUNT else object_type)


def query_fields(ctx: SyncContext, object_type: str) -> list[str]:
    """What a lead/contact query of this BU must also select: the rule field ([R35])."""
    return extra_fields(rules_from_settings(ctx.raw_settings), object_type)


def visibility(record: CrmRecord, rules: Mapping[str, SharingRule], connector_user_id: str) -> bool | None:
    """Whether the BU sees ``record`` ([R35]); ``None`` when it was read without the rule field (cannot tell)."""
    rule = _rule_for(rules, record.object_type)
    if rule is None:
        return True
    if connector_user_id and record.created_by_id and same_id(record.created_by_id, connector_user_id):
        return True  # records created by the connector user match by default
    if rule.field not in record.values:
        return None
    return is_visible(record, rules)


# --- [R34] several BUs on one org -----------------------------------------------------------------------------------


def org_connectors(connector: Connector, org_id: str = "") -> list[Connector]:
    """The other BUs' connectors on the same CRM org (any of them that ever reached the org)."""
    org = org_id or connector.org_id
    if not org:
        return []
    return list(Connector.objects.filter(org_id=org).exclude(pk=connector.pk).select_related("bu"))


def second_bu_problem(connector: Connector, org_id: str = "") -> str:
    """Why ``connector`` may not connect to / resume on its org yet ([R34]); empty when it may. Another *verified* BU
    on the same org means every BU on it (this one included) must have sharing rules first."""
    others = [c for c in org_connectors(connector, org_id) if c.last_verified_at is not None]
    if not others:
        return ""
    missing = [c.bu.name for c in (connector, *others) if not has_rules(c)]
    if not missing:
        return ""
    names = ", ".join(sorted({c.bu.name for c in others}))
    return (f"Another business unit ({names}) is already connected to this CRM org. Several business units can share "
            f"an org only with marketing data sharing rules for every one of them [R34]; rules are missing for: "
            f"{', '.join(missing)}. Define them (connector settings → Marketing data sharing, connector paused) and "
            "try again.")


# --- Changing the rules ([R35], [R37]) -----------------------------------------------------------------------------


def _describe_fields(connector: Connector, object_type: str) -> dict[str, str]:
    """Field names of ``object_type`` by lower-case name, from the stored describe data (fetched once if missing)."""
    row = CrmDescribe.objects.filter(connector=connector, object_type=object_type).first()
    if row is None:
        from . import services

        try:
            data = services.client_for(connector).describe(object_type)
        except Exception as exc:
            raise ValidationError(f"Could not read the CRM's {object_type} fields ({exc}); verify the connection "
                                  "first.") from None
        row, _ = CrmDescribe.objects.update_or_create(connector=connector, object_type=object_type,
                                                      defaults={"data": data})
    return {str(f["name"]).lower(): str(f["name"]) for f in (row.data or {}).get("fields") or ()}


def _mapped_fields(connector: Connector, object_type: str) -> set[str]:
    column = {"Lead": "lead_field", "Contact": "contact_field"}.get(object_type)
    if column is None:
        return set()  # opportunities are not mapped to prospect fields
    return {str(v).lower() for v in FieldMapping.objects.filter(connector=connector).values_list(column, flat=True)
            if v}


def clean_rules(connector: Connector, rules: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Validate ``rules`` (object → ``{"field", "value"}`` or empty) for ``connector``; returns what to store."""
    unknown = set(rules) - set(RULE_OBJECTS)
    if unknown:
        raise ValidationError(f"Sharing rules exist for Lead, Contact and Opportunity only (not {', '.join(unknown)})")
    cleaned: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for object_type in RULE_OBJECTS:
        rule = rules.get(object_type) or {}
        field = str(rule.get("field") or "").strip()
        value = str(rule.get("value") or "")
        if not field and not value.strip():
            continue
        if not field:
            problems.append(f"{object_type}: choose the CRM field the rule checks")
            continue
        if not value.strip():
            problems.append(f"{object_type}: enter the value {field} must equal (it cannot be empty)")
            continue
        known = _describe_fields(connector, object_type)
        if field.lower() not in known:
            problems.append(f"{object_type}: the CRM has no field {field}")
            continue
        field = known[field.lower()]
        if field.lower() in _mapped_fields(connector, object_type):
            problems.append(f"{object_type}: {field} is mapped to a prospect field; a sharing rule needs an unmapped "
                            "field [R35]")
            continue
        cleaned[object_type] = {"field": field, "value": value}
    if not problems and ("Lead" in cleaned) != ("Contact" in cleaned):
        problems.append("Lead and contact rules are defined together: give both or neither [R35]")
    if problems:
        raise ValidationError(problems)
    for other in org_connectors(connector):
        theirs = rules_of(other)
        for object_type, rule in cleaned.items():
            same = theirs.get(object_type)
            if same is not None and same.field.lower() == rule["field"].lower() and same.value == rule["value"]:
                problems.append(f"{object_type}: business unit {other.bu.name} on the same CRM org already uses "
                                f"{rule['field']} = {rule['value']!r}; rules must be unique across business units "
                                "[R35]")
    if problems:
        raise ValidationError(problems)
    return cleaned


@transaction.atomic
def set_sharing_rules(connector: Connector, rules: Mapping[str, Any], actor: Access) -> Connector:
    """Replace the connector's sharing rules (admin only, connector paused [R37]); audited."""
    if not actor.can("connector.edit") or connector.bu_id != actor.bu.pk:  # [R5]
        raise PermissionDenied("Only administrators can manage the CRM connector")
    given, connector = connector, Connector.objects.select_for_update().get(pk=connector.pk)
    if connector.status == Connector.Status.ACTIVE:
        raise ValidationError("Pause the connector first: marketing data sharing rules can only be changed while "
                              "the connector is paused [R37]")
    cleaned = clean_rules(connector, rules)
    before = dict((connector.settings or {}).get(SETTINGS_KEY) or {})
    connector.settings = {**(connector.settings or {}), SETTINGS_KEY: cleaned}
    if cleaned != before and CrmLink.objects.filter(connector=connector).exists():
        connector.settings[RECHECK_KEY] = True  # [R36] "or the rule changed": the next poll re-reads linked records
    connector.save(update_fields=["settings", "updated_at"])
    given.settings = connector.settings  # the caller's instance sees the new rules too
    audit.record("connector.update_sharing_rules", actor=actor.user, bu=actor.bu, obj=connector,
                 before={SETTINGS_KEY: before}, after={SETTINGS_KEY: cleaned})
    return connector


# --- Pull ([R35], [R36]) -------------------------------------------------------------------------------------------


def _forms(crm_ids: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for i in crm_ids:
        if i:
            out |= {i, id18(i), id18(i)[:15]}
    return out


def screen(ctx: SyncContext, records: Sequence[CrmRecord], counters: RunCounters) -> list[CrmRecord]:
    """The records of a pulled chunk this BU may apply (call inside the chunk's transaction). Not-visible records are
    counted and dropped; their prospects go to the recycle bin; prospects whose record is visible again come back;
    records another BU on the org already syncs are dropped ([R34])."""
    connector = ctx.connector
    rules = rules_from_settings(ctx.raw_settings)
    others = [c.pk for c in org_connectors(connector)]
    if not rules and not others:
        return list(records)
    if rules:
        records = _with_rule_values(ctx, records, rules)
    people = [r for r in records if r.object_type in PEOPLE]
    links = {id18(link.crm_id).lower(): link for link in CrmLink.objects.filter(
        connector=connector, crm_id__in=_forms(r.id for r in people))}
    cuid = ctx.settings.connector_user_id
    keep: list[CrmRecord] = []
    unlinked: list[CrmRecord] = []
    hide: list[tuple[CrmLink, CrmRecord]] = []
    show: list[tuple[CrmLink, CrmRecord]] = []
    for record in records:
        if record.object_type not in PEOPLE or record.is_deleted or (record.is_lead and record.is_converted):
            keep.append(record)  # deletion and conversion follow their own rules ([R13], [R31])
            continue
        link = links.get(id18(record.id).lower())
        seen = visibility(record, rules, cuid)
        if seen is False or (seen is None and link is None):
            counters.skip(SkipReason.NOT_VISIBLE)
            if link is not None and seen is False:
                hide.append((link, record))
            continue
        if link is None:
            unlinked.append(record)
        elif rules:
            show.append((link, record))
        keep.append(record)
    if others and unlinked:
        taken = {id18(i).lower() for i in CrmLink.objects.filter(
            connector_id__in=others, crm_id__in=_forms(r.id for r in unlinked)).values_list("crm_id", flat=True)}
        if taken:
            elsewhere = {r.id for r in unlinked if id18(r.id).lower() in taken}
            counters.skip(SkipReason.ALREADY_LINKED, len(elsewhere))
            keep = [r for r in keep if r.id not in elsewhere]
    if hide or show:
        _apply_visibility(hide, show)
    return keep


def screen_candidates(ctx: SyncContext, snaps: Sequence[Any], candidates: Mapping[Any, list[CrmRecord]]
                      ) -> tuple[dict[Any, list[CrmRecord]], set[Any]]:
    """The push's filter ([R34], [R35]): per prospect id, the candidate records the push may match and write to, and
    the prospects whose own linked record visibly does not match the rule (write nothing to it).

    A record found *by email* must be visible and not synced by another BU on the org; otherwise it is dropped, as if it
    did not exist: the creation rules then apply, and the new record is created by the connector user, so it matches
    this BU by default. A linked record read without the rule field (person accounts) is kept, like the pull keeps it.
    """
    rules = rules_from_settings(ctx.raw_settings)
    others = [c.pk for c in org_connectors(ctx.connector)] if candidates else []
    if not rules and not others:
        return dict(candidates), set()
    cuid = ctx.settings.connector_user_id
    by_pid = {s.id: s for s in snaps}
    found = [(s, r) for pid, records in candidates.items() if (s := by_pid.get(pid)) is not None for r in records]
    taken: set[str] = set()
    if others:
        by_email = {r.id for s, r in found if not s.links_to(r)}
        taken = {id18(i).lower() for i in CrmLink.objects.filter(
            connector_id__in=others, crm_id__in=_forms(by_email)).values_list("crm_id", flat=True)}
    out: dict[Any, list[CrmRecord]] = {pid: [] for pid in candidates}
    dropped: set[Any] = set()
    for snap, record in found:
        seen = visibility(record, rules, cuid)
        if snap.links_to(record):
            if seen is False:
                dropped.add(snap.id)
            else:
                out[snap.id].append(record)
        elif seen is True and id18(record.id).lower() not in taken:
            out[snap.id].append(record)
    # Hidden only when no linked record is left (a person account read without the rule field still counts).
    hidden = {pid for pid in dropped if not any(by_pid[pid].links_to(r) for r in out[pid])}
    return out, hidden


def _with_rule_values(ctx: SyncContext, records: Sequence[CrmRecord], rules: Mapping[str, SharingRule]
                      ) -> Sequence[CrmRecord]:
    """Records read without the rule field (the Bulk API import, reconciliation) get it from one small query per 200
    records, so they are judged like polled ones."""
    cuid = ctx.settings.connector_user_id
    missing: dict[str, list[str]] = {}
    for r in records:
        rule = _rule_for(rules, r.object_type)
        if (r.object_type in (CrmObject.LEAD, CrmObject.CONTACT) and rule is not None and not r.is_deleted
                and rule.field not in r.values and visibility(r, rules, cuid) is None):
            missing.setdefault(r.object_type, []).append(r.id)
    if not missing:
        return records
    found: dict[str, Any] = {}
    for object_type, ids in missing.items():
        field = rules[object_type].field
        for start in range(0, len(ids), RECHECK_CHUNK):
            quoted = ", ".join(f"'{i}'" for i in ids[start:start + RECHECK_CHUNK])
            try:
                rows = ctx.client.query(f"SELECT Id, {field} FROM {object_type} WHERE Id IN ({quoted})")
            except CrmApiError:
                continue  # unknown stays unknown: never created or linked
            found.update({id18(str(row["Id"])).lower(): row.get(field) for row in rows})
    return [replace(r, values={**r.values, rules[r.object_type].field: found[id18(r.id).lower()]})
            if r.object_type in missing and id18(r.id).lower() in found else r for r in records]


def _apply_visibility(hide: list[tuple[CrmLink, CrmRecord]], show: list[tuple[CrmLink, CrmRecord]]) -> None:
    pids = {link.prospect_id for link, _ in (*hide, *show)}
    prospects = {p.pk: p for p in Prospect.objects.filter(pk__in=pids, merged_into__isnull=True)}
    hidden = hidden_prospect_ids(None, pids)
    for link, record in hide:
        prospect = prospects.get(link.prospect_id)
        # Only the record the prospect syncs with now decides (not the lead kept as history after conversion).
        if prospect is None or prospect.pk in hidden or not same_id(prospect.crm_id or "", record.id):
            continue
        hidden.add(prospect.pk)
        if prospect.crm_deleted:  # undeleted in the CRM since (a hidden record is never a deleted one): say so
            from .sync.deletions import restore_undeleted

            restore_undeleted(prospect, record)
        prospect_services.move_to_recycle_bin(prospect, reason=NOT_SHARED_REASON)
        _timeline(prospect, f"{record.object_type} {record.id} no longer matches this business unit's marketing "
                  "data sharing rule; moved to the recycle bin", EVENT_HIDDEN, record.id)
    for link, record in show:
        prospect = prospects.get(link.prospect_id)
        if prospect is None or prospect.pk not in hidden or not same_id(prospect.crm_id or "", record.id):
            continue
        hidden.discard(prospect.pk)
        prospect_services.undelete(prospect, source="crm")  # like a CRM undelete: nothing echoes back ([R31])
        # Apply the record in full now, even if only the rule field changed (the echo check would skip it as
        # unchanged): Loopline changes held while it was hidden are resolved against the baseline and pushed.
        CrmLink.objects.filter(pk=link.pk).update(last_read_hash="", last_written_hash="")
        _timeline(prospect, f"{record.object_type} {record.id} matches this business unit's marketing data sharing "
                  "rule again; restored", EVENT_SHOWN, record.id)


def recheck_if_pending(ctx: SyncContext, counters: RunCounters) -> int:
    """After a rule change ([R36]): read every linked lead/contact again (rule field included) and apply them, so
    records that stopped — or started — matching are handled without waiting for their next change. Runs in the first
    poll after the change (one API call per 200 links); returns the records read."""
    if not (ctx.raw_settings or {}).get(RECHECK_KEY):
        return 0
    from .sync import pull

    read = 0
    if not rules_from_settings(ctx.raw_settings):
        _restore_all(ctx.connector)  # no rules any more: every record is shared again
    links = CrmLink.objects.filter(connector=ctx.connector, crm_object__in=["Lead", "Contact"])
    for object_type in ("Lead", "Contact"):
        ids = list(links.filter(crm_object=object_type).order_by("pk").values_list("crm_id", flat=True))
        for start in range(0, len(ids), RECHECK_CHUNK):
            records = pull.fetch_records(ctx, object_type, ids[start:start + RECHECK_CHUNK])
            read += len(records)
            with transaction.atomic():
                pull.apply_records(ctx, [r for r in records if not r.is_deleted], counters)
    with transaction.atomic():
        connector = Connector.objects.select_for_update().get(pk=ctx.connector.pk)
        settings = dict(connector.settings or {})
        settings.pop(RECHECK_KEY, None)
        Connector.objects.filter(pk=connector.pk).update(settings=settings)
        ctx.connector.settings = settings
    ctx.raw_settings.pop(RECHECK_KEY, None)
    return read


def _restore_all(connector: Connector) -> None:
    pids = Activity.objects.filter(bu_id=connector.bu_id, type=ActivityType.CRM_SYNC, data__event=EVENT_HIDDEN
                                   ).values_list("prospect_id", flat=True).distinct()
    for prospect in Prospect.objects.filter(pk__in=hidden_prospect_ids(connector.bu_id, set(pids))):
        prospect_services.undelete(prospect, source="crm")
        _timeline(prospect, "The business unit's marketing data sharing rules were removed; restored", EVENT_SHOWN,
                  prospect.crm_id or "")


def _timeline(prospect: Prospect, title: str, event: str, crm_id: str) -> None:
    prospect_services.record_activity(prospect.bu_id, ActivityType.CRM_SYNC, prospect=prospect, title=title,
                                      data={"event": event, "crm_id": crm_id})


def hidden_prospect_ids(bu_id: int | None, prospect_ids: Iterable[int]) -> set[int]:
    """Prospects whose CRM record, as last pulled, does not match their BU's sharing rule ([R36])."""
    ids = list(prospect_ids)
    if not ids:
        return set()
    found = Activity.objects.filter(prospect_id__in=ids, type=ActivityType.CRM_SYNC,
                                    data__event__in=[EVENT_HIDDEN, EVENT_SHOWN])
    if bu_id is not None:
        found = found.filter(bu_id=bu_id)
    last: dict[int, str] = {}
    for pid, data in found.order_by("occurred_at", "id").values_list("prospect_id", "data"):
        last[pid] = (data or {}).get("event", "")
    return {pid for pid, event in last.items() if event == EVENT_HIDDEN}


# --- Opportunities ([R35]) -----------------------------------------------------------------------------------------


def related_fields(ctx: SyncContext, object_type: str, fields: Sequence[str]) -> tuple[str, ...]:
    """``fields`` plus, for opportunities of a BU with an Opportunity rule, the rule field and ``CreatedById``."""
    rule = rules_from_settings(ctx.raw_settings).get("Opportunity") if object_type == "Opportunity" else None
    if rule is None:
        return tuple(fields)
    lower = {f.lower() for f in fields}
    return (*fields, *(f for f in (rule.field, "CreatedById") if f.lower() not in lower))


def visible_opportunities(ctx: SyncContext, records: list[dict], counters: RunCounters) -> list[dict]:
    """The opportunities this BU sees ([R35]); the others are counted as not visible."""
    rules = rules_from_settings(ctx.raw_settings)
    if "Opportunity" not in rules:
        return records
    rule, cuid = rules["Opportunity"], ctx.settings.connector_user_id
    keep = [r for r in records if (cuid and r.get("CreatedById") and same_id(str(r["CreatedById"]), cuid))
            or (r.get(rule.field) is not None and str(r.get(rule.field)) == rule.value)]
    if len(keep) < len(records):
        counters.skip(SkipReason.NOT_VISIBLE, len(records) - len(keep))
    return keep
