"""Record lifecycle decisions: conversion ([R13]), deletion/undeletion ([R31]), merge ([R32]), marketing data
sharing visibility ([R35], [R36]).

These run before :func:`.resolve.resolve` for every incoming record the prospect is linked to: when the decision is
not ``NONE`` the Django layer applies it (relink, recycle bin, merge) instead of — or before — resolving fields.
Loopline never deletes a CRM record ([R30]): nothing here produces a CRM delete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from .matching import Link
from .model import CrmObject, CrmRecord, ProspectSnapshot, SkipReason, same_id


class LifecycleAction(StrEnum):
    NONE = "none"
    FOLLOW_CONVERSION = "follow_conversion"  # relink to the converted contact; keep the lead id as history
    RECYCLE_CRM_DELETED = "recycle_crm_deleted"  # send to the recycle bin, flag crm_deleted ([R31])
    MERGED_INTO = "merged_into"  # merge loser: copy to the winner's prospect, recycle this one ([R32])
    RESTORE_UNDELETED = "restore_undeleted"  # the CRM record is back: restore the prospect, clear crm_deleted
    RECYCLE_NOT_VISIBLE = "recycle_not_visible"  # stopped matching the BU's sharing rule ([R36])


@dataclass(frozen=True)
class LifecycleDecision:
    action: LifecycleAction
    reason: str
    link: Link | None = None
    merged_into_crm_id: str | None = None
    skip_reason: SkipReason | None = None


@dataclass(frozen=True)
class SharingRule:
    """A marketing data sharing rule ([R35]): ``field`` on ``object_type`` equals ``value`` (case-sensitive)."""

    object_type: str
    field: str
    value: str


def is_visible(
    record: CrmRecord,
    rules: Sequence[SharingRule] | Mapping[str, SharingRule],
    connector_user_id: str = "",
) -> bool:
    """Whether a BU with these sharing rules sees ``record`` ([R35]). No rule for the object → visible. Records created
    by the connector user match by default. Lead and contact rules are defined together; person accounts use the
    contact rule."""
    by_object = dict(rules) if isinstance(rules, Mapping) else {r.object_type: r for r in rules}
    key = CrmObject.CONTACT.value if record.object_type == CrmObject.PERSON_ACCOUNT else record.object_type
    rule = by_object.get(key)
    if rule is None:
        return True
    if connector_user_id and record.created_by_id == connector_user_id:
        return True
    value = record.values.get(rule.field)
    return value is not None and str(value) == rule.value


def decide_lifecycle(
    prospect: ProspectSnapshot,
    record: CrmRecord,
    *,
    rules: Sequence[SharingRule] | Mapping[str, SharingRule] = (),
    connector_user_id: str = "",
) -> LifecycleDecision:
    """What happens to ``prospect`` given the latest state of the record it is linked to."""
    current = is_current_record(prospect, record)
    if record.is_deleted:
        if not current:
            # A record the prospect no longer syncs with (the lead of a converted prospect, a lead a contact took
            # over): its deletion is history, not the prospect's fate.
            return LifecycleDecision(
                LifecycleAction.NONE,
                f"{record.object_type} {record.id} deleted in the CRM; the prospect syncs with {prospect.crm_id}",
                skip_reason=SkipReason.CRM_DELETED,
            )
        if record.master_record_id:
            return LifecycleDecision(
                LifecycleAction.MERGED_INTO,
                f"merged into {record.master_record_id} in the CRM [R32]",
                merged_into_crm_id=record.master_record_id,
                skip_reason=SkipReason.CRM_DELETED,
            )
        if prospect.crm_deleted:
            return LifecycleDecision(
                LifecycleAction.NONE, "already flagged CRM-deleted", skip_reason=SkipReason.CRM_DELETED
            )
        return LifecycleDecision(
            LifecycleAction.RECYCLE_CRM_DELETED,
            f"{record.object_type} {record.id} deleted in the CRM [R31]",
            skip_reason=SkipReason.CRM_DELETED,
        )
    if rules and not is_visible(record, rules, connector_user_id):
        return LifecycleDecision(
            LifecycleAction.RECYCLE_NOT_VISIBLE,
            "record no longer matches the marketing data sharing rule [R36]",
            skip_reason=SkipReason.NOT_VISIBLE,
        )
    if prospect.crm_deleted and current:
        return LifecycleDecision(
            LifecycleAction.RESTORE_UNDELETED,
            f"{record.object_type} {record.id} undeleted in the CRM [R31]",
            link=Link.for_record(record),
        )
    if record.is_lead and record.is_converted:
        if (
            current
            and record.converted_contact_id
            and not _same(prospect.crm_contact_id, record.converted_contact_id)
        ):
            return LifecycleDecision(
                LifecycleAction.FOLLOW_CONVERSION,
                f"lead {record.id} converted to contact {record.converted_contact_id} [R13]",
                link=Link(
                    crm_contact_id=record.converted_contact_id, crm_account_id=record.converted_account_id
                ),
                skip_reason=SkipReason.CONVERTED_LEAD,
            )
        return LifecycleDecision(
            LifecycleAction.NONE,
            "converted lead; the contact is synced [R13]",
            skip_reason=SkipReason.CONVERTED_LEAD,
        )
    return LifecycleDecision(LifecycleAction.NONE, "active record")


def is_current_record(prospect: ProspectSnapshot, record: CrmRecord) -> bool:
    """Whether ``record`` is the one the prospect syncs with now: its contact when it has one, else its lead
    ([R13]); for a person account, the account or its person contact ([R14]). An unlinked prospect has none."""
    if not prospect.crm_id:
        return False
    if _same(prospect.crm_id, record.id):
        return True
    if record.person_contact_id and _same(prospect.crm_contact_id, record.person_contact_id):
        return True
    return record.object_type == CrmObject.PERSON_ACCOUNT and _same(prospect.crm_account_id, record.id)


def _same(a: str, b: str) -> bool:
    return same_id(a, b)
