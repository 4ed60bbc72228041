"""Who may create what ([R10]–[R12], [R15], [R31]).

* :func:`decide_prospect_creation` — a CRM lead/contact with no matching prospect: create one?
* :func:`decide_crm_creation` — a prospect with no matching CRM record: create a CRM record, which object, which owner?
* :func:`plan_prospect_push` — the whole prospect → CRM decision: sync gate, matching, then creation.

Imports are not a back door ([R12]): imported prospects go through exactly these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .matching import CrmMatch, Link, choose_crm_record
from .model import ConnectorSettings, CrmObject, CrmRecord, FieldMapping, ProspectSnapshot, SkipReason
from .values import normalise, to_crm_value


@dataclass(frozen=True)
class SyncGate:
    """Whether a prospect takes part in CRM sync at all."""

    allowed: bool
    skip_reason: SkipReason | None = None
    message: str = ""


def sync_gate(prospect: ProspectSnapshot) -> SyncGate:
    """Do-not-sync ([R15]), CRM-deleted ([R31]; the manual-sync message is :attr:`SyncGate.message`) and recycle bin."""
    if prospect.do_not_sync:
        return SyncGate(False, SkipReason.DO_NOT_SYNC, "This prospect is marked 'do not sync with CRM'.")
    if prospect.crm_deleted:
        return SyncGate(False, SkipReason.CRM_DELETED, "Deleted in the CRM; will not be re-synced.")
    if prospect.is_deleted:
        return SyncGate(False, SkipReason.IN_RECYCLE_BIN, "The prospect is in the recycle bin.")
    return SyncGate(True)


# --------------------------------------------------------------------------------------------------------------------
# CRM → Loopline ([R10])
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProspectCreation:
    create: bool
    reason: str
    skip_reason: SkipReason | None = None
    email: str = ""
    link: Link | None = None


def decide_prospect_creation(
    record: CrmRecord, settings: ConnectorSettings, *, explicit: bool = False
) -> ProspectCreation:
    """Whether an unmatched CRM record creates a prospect ([R10]).

    ``explicit`` is true for the initial import and "Send to Loopline" ([R3]), which create regardless of the
    *automatically create prospects* setting. A record without an email is skipped (counted as ``no_email``) and is
    created later when a change gives it one (its next ``SystemModstamp`` brings it back).
    """
    if record.is_deleted:
        return ProspectCreation(False, "record is deleted", SkipReason.CRM_DELETED)
    if record.is_lead and record.is_converted:
        return ProspectCreation(
            False, "converted lead: the contact brings the prospect [R13]", SkipReason.CONVERTED_LEAD
        )
    if not explicit and not settings.auto_create_prospects:
        return ProspectCreation(
            False, "'automatically create prospects' is off [R10]", SkipReason.AUTO_CREATE_OFF
        )
    if not record.email:
        return ProspectCreation(False, "record has no email [R10]", SkipReason.NO_EMAIL)
    return ProspectCreation(True, "new CRM record", email=record.email, link=Link.for_record(record))


# --------------------------------------------------------------------------------------------------------------------
# Loopline → CRM ([R11], [R12], [R15], [R31])
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrmCreation:
    """``owner_id`` is the ``OwnerId`` to send (``None`` with ``use_assignment_rule`` → send the
    ``Sforce-Auto-Assign: TRUE`` header and no owner)."""

    create: bool
    reason: str
    skip_reason: SkipReason | None = None
    object_type: CrmObject | None = None
    owner_id: str | None = None
    use_assignment_rule: bool = False


def decide_crm_creation(prospect: ProspectSnapshot, settings: ConnectorSettings) -> CrmCreation:
    """Whether a prospect with no matching CRM record creates one ([R11]).

    Only assigned prospects create records; the object is the BU's ``new_record_object`` (Lead by default). The owner
    is the CRM user/queue the assignment maps to; a user without a CRM mapping → the connector user; the CRM's
    assignment rule → no owner, the rule decides.
    """
    gate = sync_gate(prospect)
    if not gate.allowed:
        return CrmCreation(False, gate.message, gate.skip_reason)
    if prospect.is_linked:
        return CrmCreation(False, "prospect already has a CRM record", SkipReason.ALREADY_LINKED)
    if not prospect.assigned:
        return CrmCreation(
            False,
            "unassigned prospects sync only with a matching CRM record; none is created [R11]",
            SkipReason.UNASSIGNED,
        )
    if prospect.use_assignment_rule and not prospect.assigned_crm_owner_id:
        return CrmCreation(
            True, "assigned by the CRM's assignment rule", None, settings.new_record_object, None, True
        )
    owner = prospect.assigned_crm_owner_id or settings.connector_user_id or None
    why = (
        "assigned"
        if prospect.assigned_crm_owner_id
        else "assigned to a user with no CRM user: connector user owns it"
    )
    return CrmCreation(True, why, None, settings.new_record_object, owner)


class PushAction(StrEnum):
    UPDATE = "update"  # sync with ``match.record`` (resolve, then write ``to_crm``)
    CREATE = "create"  # create ``creation.object_type``
    SKIP = "skip"


@dataclass(frozen=True)
class PushDecision:
    action: PushAction
    reason: str
    match: CrmMatch | None = None
    creation: CrmCreation | None = None
    skip_reason: SkipReason | None = None


def plan_prospect_push(
    prospect: ProspectSnapshot, candidates: Sequence[CrmRecord], settings: ConnectorSettings
) -> PushDecision:
    """Prospect → CRM: gate ([R15], [R31]), match ([R9]; unassigned prospects sync with a match, [R11]), else create
    when assigned. ``candidates`` are the CRM records with the prospect's ids or email (the adapter queries them)."""
    gate = sync_gate(prospect)
    if not gate.allowed:
        return PushDecision(PushAction.SKIP, gate.message, skip_reason=gate.skip_reason)
    match = choose_crm_record(prospect, candidates, settings)
    if match.record is not None:
        return PushDecision(PushAction.UPDATE, match.reason, match=match)
    if prospect.is_linked:
        # The linked record is not among the candidates (not visible, deleted, or the caller did not fetch it):
        # never create a second record for a linked prospect ([R25]); lifecycle rules handle deletion.
        return PushDecision(
            PushAction.SKIP,
            f"linked record {prospect.crm_id} not found",
            match=match,
            skip_reason=SkipReason.ALREADY_LINKED,
        )
    creation = decide_crm_creation(prospect, settings)
    if creation.create:
        return PushDecision(PushAction.CREATE, creation.reason, match=match, creation=creation)
    return PushDecision(
        PushAction.SKIP, creation.reason, match=match, creation=creation, skip_reason=creation.skip_reason
    )


def creation_payload(
    prospect: ProspectSnapshot,
    mappings: Iterable[FieldMapping],
    object_type: str,
    creation: CrmCreation | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The field values of a new CRM record for ``prospect`` ([R11]): every mapped field writable on ``object_type``
    (two-way and Loopline → CRM fixed fields) with a non-blank Loopline value, plus ``OwnerId`` from ``creation``
    and ``extra`` (e.g. the person-account ``RecordTypeId``). Validate it with
    :func:`.validate.validate_payload` (``Operation.CREATE``), which adds the required fill-ins ([R20])."""
    payload: dict[str, Any] = {}
    for m in mappings:
        crm_field = m.crm_field(object_type)
        if crm_field is None or not m.crm_writable(object_type):
            continue
        value = prospect.values.get(m.loopline_field)
        if normalise(m.kind, value) is None:
            continue
        payload[crm_field] = to_crm_value(m.kind, value)
    if creation is not None and creation.owner_id:
        payload["OwnerId"] = creation.owner_id
    payload.update(extra or {})
    return payload
