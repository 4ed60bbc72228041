"""Lead conversion on the Loopline side ([R13]).

When the lead a prospect syncs with is converted, the prospect follows ``ConvertedContactId``: the contact (and its
account) become the prospect's CRM record, the lead id stays on the prospect as history, and the connector never
writes to the (read-only) converted lead again — push picks the contact whenever the prospect has one, and the engine
never resolves a converted lead. Nothing is re-created: the prospect keeps its id, activities and memberships.

If the contact already has a prospect of its own (the lead was converted into an existing contact, or the new contact
arrived first), the two prospects are one person: the lead's prospect is merged into the contact's ([R32] rules, so
the history moves to the survivor).

A lead converted into a person account ([R14]) is the same move: ``ConvertedContactId`` is the person contact and
``ConvertedAccountId`` the person account, which become the prospect's contact and account ids. From then on the push
reads and writes the person account (it looks the account up by the prospect's account id) and the poll brings it as
a ``PersonAccount`` record that carries those ids; its person contact never syncs as a contact of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.utils import timezone

from loopline.prospects import services as prospect_services
from loopline.prospects.models import ActivityType, Prospect

from ..engine.lifecycle import LifecycleDecision
from ..engine.model import CrmRecord

if TYPE_CHECKING:
    from .context import SyncContext


def follow_conversion(
    ctx: SyncContext, prospect: Prospect, record: CrmRecord, decision: LifecycleDecision
) -> Prospect:
    """Relink ``prospect`` from the converted lead ``record`` to its contact; returns the prospect that now syncs with
    the contact."""
    from .deletions import merge_into, prospect_for_crm_id, requeue

    contact_id = record.converted_contact_id or ""
    if not contact_id:
        return prospect
    other = prospect_for_crm_id(ctx.connector, contact_id, exclude=prospect.pk)
    if other is not None:
        survivor = merge_into(other, prospect)
        prospect_services.record_activity(
            survivor.bu_id,
            ActivityType.CRM_SYNC,
            prospect=survivor,
            title=f"Lead {record.id} converted to contact {contact_id} in the CRM; prospect {prospect.pk} merged "
            "into this one",
            data={
                "event": "crm_converted",
                "lead_id": record.id,
                "contact_id": contact_id,
                "merged_prospect_id": prospect.pk,
            },
        )
        return survivor
    link = decision.link.as_dict() if decision.link is not None else {"crm_contact_id": contact_id}
    extra: dict[str, Any] = {k: v for k, v in link.items() if v}
    extra["crm_last_sync_at"] = timezone.now()
    prospect_services.update_prospect(prospect, {}, source="crm", extra=extra)  # crm_lead_id stays: history
    _inherit_sync_state(ctx, prospect, lead_id=record.id, contact_id=contact_id)
    prospect_services.record_activity(
        prospect.bu_id,
        ActivityType.CRM_SYNC,
        prospect=prospect,
        title=f"Lead {record.id} converted to contact {contact_id} in the CRM; now syncs with the contact",
        data={
            "event": "crm_converted",
            "lead_id": record.id,
            "contact_id": contact_id,
            "account_id": record.converted_account_id or "",
        },
    )
    # The contact may be an existing record whose values did not change: a full sync settles both sides with it
    # (push reads the contact in its batched candidate query; a new contact coming in the same poll is a no-op).
    requeue(ctx.connector.pk, prospect.pk, "conversion")
    return prospect


def _inherit_sync_state(ctx: SyncContext, prospect: Prospect, *, lead_id: str, contact_id: str) -> None:
    """The contact starts from what the lead last agreed on with the prospect: conversion copies the lead's values
    into the contact, so a field changed in Loopline since then is Loopline's change, not a conflict the contact's
    old value would win ([R16], [R17])."""
    from ..models import CrmLink

    lead_link = CrmLink.objects.filter(connector=ctx.connector, crm_id=lead_id).first()
    if lead_link is None or not lead_link.baseline:
        return
    CrmLink.objects.get_or_create(
        connector=ctx.connector, crm_id=contact_id,
        defaults={"prospect": prospect, "crm_object": "Contact", "baseline": lead_link.baseline,
                  "last_synced_at": timezone.now()})
