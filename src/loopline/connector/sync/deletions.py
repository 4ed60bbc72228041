"""CRM deletion, undeletion and merge on the Loopline side ([R30]–[R33]).

The pull decides with :func:`..engine.lifecycle.decide_lifecycle` and hands the decision to :func:`apply_lifecycle`
(inside its transaction):

* deleted in the CRM → the prospect goes to the recycle bin, flagged *CRM-deleted*: it no longer syncs and is never
  re-created in the CRM ([R31]);
* undeleted in the CRM → the prospect leaves the recycle bin and the flag is cleared ([R31]);
* merged in the CRM (loser deleted with ``MasterRecordId``) → the loser's prospect is merged into the prospect of the
  winning record: activities, visitors, tags, list memberships and campaign memberships move, the loser goes to the
  recycle bin ([R32]). When no prospect syncs with the winner, the loser's prospect follows the winner instead;
* converted lead → :mod:`.conversion` ([R13]).

:func:`allow_recreate` is the "allow CRM record to be recreated" action ([R31]). Nothing here (nor anywhere in the
connector) ever deletes a CRM record ([R30]).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q
from django.utils import timezone

from loopline.platform import audit
from loopline.prospects import services as prospect_services
from loopline.prospects.models import ActivityType, Prospect

from .. import outbox, sharing
from ..engine import RunCounters
from ..engine.lifecycle import LifecycleAction, LifecycleDecision
from ..engine.model import CrmObject, CrmRecord, id18
from ..models import Connector, OutboxEntry

if TYPE_CHECKING:
    from loopline.accounts.access import Access

    from .context import SyncContext

OBJECT_BY_PREFIX = {"00Q": CrmObject.LEAD.value, "003": CrmObject.CONTACT.value}


def apply_lifecycle(
    ctx: SyncContext,
    prospect: Prospect,
    record: CrmRecord,
    decision: LifecycleDecision,
    counters: RunCounters | None = None,
) -> bool:
    """Apply ``decision`` to ``prospect``. True: the record is handled (the caller records the link and stops);
    False: go on resolving fields (after a restore the caller takes a fresh snapshot)."""
    from . import conversion

    action = decision.action
    if action is LifecycleAction.RECYCLE_CRM_DELETED:
        recycle_crm_deleted(prospect, record, decision.reason)
        return True
    if action is LifecycleAction.MERGED_INTO and decision.merged_into_crm_id:
        apply_crm_merge(ctx, prospect, record, decision.merged_into_crm_id, counters)
        return True
    if action is LifecycleAction.RESTORE_UNDELETED:
        restore_undeleted(prospect, record)
        return False
    if action is LifecycleAction.FOLLOW_CONVERSION:
        conversion.follow_conversion(ctx, prospect, record, decision)
        return True
    return False


def requeue(connector_id: int, prospect_id: int, reason: str) -> None:
    """A full sync of the prospect, due now: its CRM record changed identity (conversion, merge, recreate allowed),
    so changes waiting for the old record (push retries it while the pull catches up) go out right away."""
    outbox.enqueue(connector_id, prospect_id, ["*"], reason=reason)
    OutboxEntry.objects.filter(
        connector_id=connector_id,
        prospect_id=prospect_id,
        status=OutboxEntry.Status.PENDING,
        locked_until__isnull=True,
    ).update(next_run_at=timezone.now())


def _timeline(prospect: Prospect, title: str, **data: Any) -> None:
    prospect_services.record_activity(
        prospect.bu_id, ActivityType.CRM_SYNC, prospect=prospect, title=title, data=data
    )


def recycle_crm_deleted(prospect: Prospect, record: CrmRecord, reason: str = "") -> None:
    """[R31]: recycle bin + CRM-deleted flag. The flag, not the recycle bin, is what stops syncing: restoring the
    prospect in Loopline does not make the connector re-create the record."""
    prospect_services.update_prospect(
        prospect, {}, source="crm", extra={"crm_deleted": True, "crm_last_sync_at": timezone.now()}
    )
    prospect_services.move_to_recycle_bin(
        prospect, reason=reason or f"{record.object_type} deleted in the CRM"
    )
    _timeline(
        prospect,
        f"{record.object_type} {record.id} deleted in the CRM; moved to the recycle bin",
        event="crm_deleted",
        crm_id=record.id,
    )


def restore_undeleted(prospect: Prospect, record: CrmRecord) -> None:
    """[R31]: the CRM record is back (undeleted from the CRM's recycle bin): so is the prospect."""
    prospect_services.undelete(prospect, source="crm")  # no echo: the CRM is where the restore came from
    prospect_services.update_prospect(prospect, {}, source="crm", extra={"crm_deleted": False})
    _timeline(
        prospect,
        f"{record.object_type} {record.id} undeleted in the CRM; restored",
        event="crm_undeleted",
        crm_id=record.id,
    )


def prospect_for_crm_id(connector: Connector, crm_id: str, *, exclude: int | None = None) -> Prospect | None:
    """The prospect syncing with lead/contact ``crm_id`` in the connector's BU (not a merged-away one): a live
    prospect first, else one in the recycle bin. A lead kept as history after conversion does not count."""
    forms = {crm_id, id18(crm_id), id18(crm_id)[:15]}
    found = (
        Prospect.objects.filter(bu_id=connector.bu_id, merged_into__isnull=True)
        .filter(Q(crm_lead_id__in=forms) | Q(crm_contact_id__in=forms))
        .order_by("is_deleted", "-updated_at")
    )
    if exclude is not None:
        found = found.exclude(pk=exclude)
    for candidate in found:
        if _same(candidate.crm_id, crm_id):
            return candidate
    return None


def _same(a: str, b: str) -> bool:
    return bool(a and b) and id18(a).lower() == id18(b).lower()


def merge_into(survivor: Prospect, loser: Prospect) -> Prospect:
    """Merge ``loser`` into the prospect of a live CRM record ([R32]); if that prospect sat in the recycle bin while
    the loser was live, the survivor comes back out: its CRM record is alive and so was one of the two."""
    revive = survivor.is_deleted and not loser.is_deleted and not survivor.crm_deleted
    if revive and sharing.hidden_prospect_ids(None, [survivor.pk]):
        revive = False  # [R36] recycled because its record does not match the BU's sharing rule: it stays there
    merged = prospect_services.merge_prospects(survivor, loser)
    if revive:
        prospect_services.undelete(merged, source="crm")
    return merged


def apply_crm_merge(
    ctx: SyncContext, loser: Prospect, record: CrmRecord, master_id: str, counters: RunCounters | None = None
) -> Prospect:
    """[R32]: ``record`` (the prospect's CRM record) was merged into ``master_id``. Returns the surviving prospect."""
    connector = ctx.connector
    winner = prospect_for_crm_id(connector, master_id, exclude=loser.pk)
    if winner is None:
        # The winner may not have a prospect *yet* (it can be later in this very page, or only now match the rules):
        # apply it first, so the usual rules (matching, [R10] creation) decide whether it gets one.
        from . import pull

        master = None
        for _ in range(3):  # the winner merged again meanwhile: follow the chain to the live record
            object_type = OBJECT_BY_PREFIX.get(master_id[:3])
            if object_type is None:  # not a lead/contact (person account merges are not polled yet)
                break
            fetched = pull.fetch_records(ctx, object_type, [master_id])
            master = fetched[0] if fetched else None
            if master is None or not (master.is_deleted and master.master_record_id):
                break
            master_id = master.master_record_id
            winner = prospect_for_crm_id(connector, master_id, exclude=loser.pk)
            if winner is not None:
                break
        if winner is None and (master is None or master.is_deleted):
            # The winner is gone too (or not visible): nothing to follow; this is a plain CRM deletion.
            recycle_crm_deleted(
                loser, record, f"{record.object_type} {record.id} merged into a deleted record"
            )
            return loser
        if winner is None and master is not None:
            pull.apply_records(ctx, [master], counters if counters is not None else RunCounters())
            winner = prospect_for_crm_id(connector, master_id, exclude=loser.pk)
    if winner is None:
        # Decision: no prospect syncs with the winning record, so this prospect becomes its prospect (the person is
        # alive in the CRM; recycling them would lose a live record's marketing history).
        key = (
            "crm_lead_id" if OBJECT_BY_PREFIX.get(master_id[:3]) == CrmObject.LEAD.value else "crm_contact_id"
        )
        prospect_services.update_prospect(
            loser, {}, source="crm", extra={key: master_id, "crm_last_sync_at": timezone.now()}
        )
        _timeline(
            loser,
            f"{record.object_type} {record.id} merged into {master_id} in the CRM; now syncs with "
            f"{master_id}",
            event="crm_merged",
            crm_id=record.id,
            master_id=master_id,
        )
        # A full sync settles both sides with the winner's values now.
        requeue(connector.pk, loser.pk, "crm_merge")
        return loser
    survivor = merge_into(winner, loser)
    # The loser stays linked to its deleted record as history; the flag keeps it from ever re-creating it.
    Prospect.objects.filter(pk=loser.pk).update(crm_deleted=True)
    loser.crm_deleted = True
    _timeline(
        survivor,
        f"{record.object_type} {record.id} merged into {master_id} in the CRM; prospect "
        f"{loser.pk} merged into this one",
        event="crm_merged",
        crm_id=record.id,
        master_id=master_id,
        merged_prospect_id=loser.pk,
    )
    return survivor


# --- "Allow CRM record to be recreated" ([R31]) -------------------------------------------------------------------


def allow_recreate(prospect: Prospect, *, actor=None) -> bool:
    """Clear the CRM-deleted flag so the prospect may create a new CRM record (once assigned, [R11]). The ids of the
    deleted record are cleared too (the prospect would otherwise keep looking for it); they stay on the timeline and
    in the connector's link history. Returns False when the prospect was not CRM-deleted."""
    prospect.refresh_from_db()  # in place: callers (e.g. the next action of a list) keep using this instance
    if not prospect.crm_deleted:
        return False
    old = {
        k: getattr(prospect, k)
        for k in ("crm_lead_id", "crm_contact_id", "crm_account_id")
        if getattr(prospect, k)
    }
    prospect_services.update_prospect(
        prospect,
        {},
        actor=actor,
        source="system",
        extra={"crm_deleted": False, "crm_lead_id": "", "crm_contact_id": "", "crm_account_id": ""},
    )
    _timeline(
        prospect,
        "CRM record may be recreated" + (f" (was {', '.join(old.values())})" if old else ""),
        event="crm_recreate_allowed",
        **old,
    )
    connector_id = Connector.objects.filter(bu_id=prospect.bu_id).values_list("pk", flat=True).first()
    if connector_id is not None:
        requeue(connector_id, prospect.pk, "recreate_allowed")
    return True


def allow_recreate_for(access: Access, prospect: Prospect) -> bool:
    """The prospect page's button: same ability as "Sync with CRM"; audited."""
    if prospect.bu_id != access.bu.pk or not (access.can("prospects.edit") or access.can("connector.edit")):
        raise PermissionDenied("You cannot change this prospect's CRM sync")
    if not prospect.crm_deleted:
        raise ValidationError("This prospect is not flagged as deleted in the CRM")
    done = allow_recreate(prospect, actor=access.user)
    audit.record(
        "connector.allow_recreate",
        actor=access.user,
        bu=access.bu,
        obj=prospect,
        summary=f"Allowed the CRM record of {prospect} to be recreated",
    )
    return done


def _validate_no_params(bu, params) -> dict:
    return {}


def _run_allow_recreate(ctx, params) -> str:
    if allow_recreate(ctx.prospect, actor=ctx.actor):
        return "CRM record may be recreated"
    return "not CRM-deleted; nothing to do"


def register_actions() -> None:
    """The automation/completion action ([R31])."""
    from loopline.platform import actions

    actions.register(
        actions.ActionType(
            "allow_crm_recreate", "Allow CRM record to be recreated", _validate_no_params, _run_allow_recreate
        )
    )
