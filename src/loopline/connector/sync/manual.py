"""Manual sync ([R3]): "Sync with CRM" on a prospect and "Send to Loopline" for a lead/contact id. Both work while
the connector is paused ([R2]) — they are single records an admin or the CRM asked for explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from loopline.accounts.access import Access
from loopline.prospects.models import Prospect

from ..engine import RunCounters, SkipReason, sync_gate
from ..engine.model import id18
from ..models import Connector
from ..outbox import enqueue
from . import pull, push, runs
from .context import SyncContext
from .snapshots import snapshot

OBJECT_BY_PREFIX = {"00Q": "Lead", "003": "Contact"}


@dataclass
class ManualResult:
    ok: bool
    message: str
    prospect_id: int | None = None
    counters: dict = field(default_factory=dict)


def _connector(bu_id: int) -> Connector:
    connector = Connector.objects.select_related("bu").filter(bu_id=bu_id).first()
    if connector is None:
        raise ValidationError("This business unit has no CRM connector")
    if not (connector.login_url and connector.consumer_key and connector.username):
        raise ValidationError("The CRM connector is not set up yet")
    return connector


def sync_prospect_now(access: Access, prospect: Prospect) -> ManualResult:
    """Both directions for one prospect, now, paused or not ([R3]). A CRM-deleted prospect answers with a clear
    message ([R31])."""
    if prospect.bu_id != access.bu.pk or not (access.can("prospects.edit") or access.can("connector.edit")):
        raise PermissionDenied("You cannot sync this prospect")
    connector = _connector(prospect.bu_id)
    gate = sync_gate(snapshot(prospect, ()))
    if not gate.allowed:
        message = gate.message
        if gate.skip_reason is SkipReason.CRM_DELETED:  # [R31] say how to get a CRM record again
            message += ' To create a new CRM record for it, use "Allow CRM record to be recreated".'
        return ManualResult(False, message, prospect.pk)
    ctx = SyncContext.load(connector)
    counters = RunCounters()
    crm_id = prospect.crm_contact_id or prospect.crm_lead_id
    if crm_id:  # CRM → Loopline first: the newest CRM values take part in the resolution
        with runs.sync_run(connector, "manual", client=ctx.client) as run:
            records = []
            if ctx.person_accounts and prospect.crm_contact_id and prospect.crm_account_id:  # [R14]
                records = pull.fetch_records(ctx, "PersonAccount", [prospect.crm_account_id])
            if not records:
                object_type = "Contact" if prospect.crm_contact_id else "Lead"
                records = pull.fetch_records(ctx, object_type, [crm_id])
            with transaction.atomic():
                pull.apply_records(ctx, records, run.counters, explicit=True)
        counters.merge(run.counters)
    enqueue(connector.pk, prospect.pk, ["*"], reason="manual")
    counters.merge(push.drain(connector, client=ctx.client, prospect_ids=[prospect.pk]))
    prospect.refresh_from_db()
    message = "Synced with the CRM" if (prospect.crm_contact_id or prospect.crm_lead_id) else \
        "Not synced: no matching CRM record, and the prospect is not assigned (only assigned prospects create CRM records)"
    return ManualResult(True, message, prospect.pk, counters.as_dict())


def pull_record(connector: Connector, crm_id: str, *, explicit: bool = True) -> ManualResult:
    """Fetch one lead/contact by id and apply it ("Send to Loopline", error-queue retries)."""
    crm_id = (crm_id or "").strip()
    object_type = OBJECT_BY_PREFIX.get(crm_id[:3])
    if (object_type is None and crm_id[:3] != "001") or len(crm_id) not in (15, 18) or not crm_id.isalnum():
        raise ValidationError("Send a Lead (00Q…), Contact (003…) or person account (001…) id")
    ctx = SyncContext.load(connector)
    if object_type is None:  # [R14] an account id: only a person account syncs, and only when they are on
        if not ctx.person_accounts:
            raise ValidationError("Person accounts do not sync with Loopline: send a Lead (00Q…) or Contact (003…) id")
        object_type = "PersonAccount"
    with runs.sync_run(connector, "manual", client=ctx.client) as run:
        records = pull.fetch_records(ctx, object_type, [id18(crm_id)])
        if not records:
            run.counters.note = f"{object_type} {crm_id} not found in the CRM"
            return ManualResult(False, f"{object_type} {crm_id} was not found in the CRM (or the connector user "
                                       "cannot see it)")
        with transaction.atomic():
            mapped = pull.apply_records(ctx, records, run.counters, explicit=explicit)
        prospect_id = mapped.get(records[0].id)
        summary = run.counters.summary()
    if prospect_id is None:
        return ManualResult(False, f"Not sent to Loopline: {summary}", None, run.counters.as_dict())
    return ManualResult(True, f"{object_type} {records[0].id} is prospect {prospect_id}", prospect_id,
                        run.counters.as_dict())


def send_to_loopline(connector: Connector, crm_id: str) -> ManualResult:
    """[R3] the CRM-side "Send to Loopline" button: works while paused; creates the prospect if needed."""
    return pull_record(connector, crm_id, explicit=True)


# --- The "Send to Loopline" endpoint's secret ---------------------------------------------------------------------


def send_to_loopline_token(connector: Connector) -> str:
    """The per-connector secret the CRM sends in ``X-Loopline-Token`` (derived from SECRET_KEY: nothing to store;
    regenerating the connector's certificate does not change it, re-creating the connector does)."""
    import hashlib
    import hmac

    from django.conf import settings

    message = f"loopline.send-to-loopline:{connector.pk}:{connector.bu_id}:{connector.created_at.isoformat()}"
    return hmac.new(settings.SECRET_KEY.encode(), message.encode(), hashlib.sha256).hexdigest()


def check_token(connector: Connector, token: str) -> bool:
    import hmac

    return bool(token) and hmac.compare_digest(send_to_loopline_token(connector), token.strip())
