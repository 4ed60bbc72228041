"""The sync error queue ([R26]).

One open row per (prospect or CRM id, direction): a repeated failure updates it (attempts, last attempt, message).
* transient errors (lock, 5xx, timeouts) are retried automatically by the outbox backoff; the row is *retrying*;
* validation/configuration errors wait: the row is *open* until the record changes again (a new outbox entry is
  drained and succeeds → *resolved*) or an admin presses Retry (one / all) or Dismiss;
* admins get a digest of new errors by email, de-duplicated by (code, message), at most one an hour
  (:func:`send_digests`, a scheduled task).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable

from django.conf import settings as django_settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from loopline.accounts.access import Access
from loopline.platform import audit

from ..engine.errors import ErrorCategory, classify
from ..metrics import SYNCED_RECORDS
from ..models import Connector, OutboxEntry, SyncError

logger = logging.getLogger("loopline.connector.errors")

LIVE = (SyncError.Status.OPEN, SyncError.Status.RETRYING)
DIGEST_EVERY = dt.timedelta(hours=1)


def record(
    connector: Connector,
    *,
    direction: str,
    code: str,
    message: str,
    prospect_id: int | None = None,
    crm_id: str = "",
    fields: Iterable[str] = (),
    http_status: int | None = None,
    next_retry_at: dt.datetime | None = None,
) -> SyncError:
    """Add the failure to the queue, or update the live row of the same record and direction."""
    info = classify(code, http_status, message)
    transient = info.category is ErrorCategory.TRANSIENT
    status = SyncError.Status.RETRYING if transient else SyncError.Status.OPEN
    key = Q(prospect_id=prospect_id) if prospect_id else Q(prospect__isnull=True, crm_id=crm_id)
    SYNCED_RECORDS.labels(direction, "failed").inc()
    with transaction.atomic():
        row = (SyncError.objects.select_for_update()
               .filter(key, connector=connector, direction=direction, status__in=LIVE).first())
        if row is None:
            return SyncError.objects.create(
                connector=connector, prospect_id=prospect_id, crm_id=crm_id or "", direction=direction, code=code,
                message=message[:2000], fields=list(fields), transient=transient, status=status,
                next_retry_at=next_retry_at)
        changed = (row.code, row.message) != (code, message[:2000])
        row.code, row.message, row.fields = code, message[:2000], list(fields)
        row.transient, row.status, row.next_retry_at = transient, status, next_retry_at
        row.attempts += 1
        row.crm_id = crm_id or row.crm_id
        if changed:
            row.notified_at = None  # a different error is news again
        row.save()
        return row


def resolve_for(connector: Connector, prospect_ids: Iterable[int], direction: str = SyncError.Direction.TO_CRM) -> int:
    ids = list(prospect_ids)
    if not ids:
        return 0
    return SyncError.objects.filter(connector=connector, prospect_id__in=ids, direction=direction,
                                    status__in=LIVE).update(status=SyncError.Status.RESOLVED, next_retry_at=None)


def resolve_crm_ids(connector: Connector, crm_ids: Iterable[str]) -> int:
    ids = list(crm_ids)
    if not ids:
        return 0
    return SyncError.objects.filter(connector=connector, crm_id__in=ids, direction=SyncError.Direction.FROM_CRM,
                                    status__in=LIVE).update(status=SyncError.Status.RESOLVED, next_retry_at=None)


def open_count(connector: Connector) -> int:
    return SyncError.objects.filter(connector=connector, status__in=LIVE).count()


# --- Admin actions ----------------------------------------------------------------------------------------------


def _require_admin(access: Access, connector: Connector) -> None:
    if not access.can("connector.edit") or connector.bu_id != access.bu.pk:  # [R5]
        raise PermissionDenied("Only administrators can manage the sync error queue")


def _retry(error: SyncError) -> None:
    from . import manual

    connector = error.connector
    if error.direction == SyncError.Direction.TO_CRM and error.prospect_id:
        OutboxEntry.objects.filter(connector=connector, prospect_id=error.prospect_id,
                                   status=OutboxEntry.Status.FAILED).update(status=OutboxEntry.Status.DONE)
        from ..outbox import enqueue

        enqueue(connector.pk, error.prospect_id, ["*"], reason="retry")
        from .related import retry_for

        retry_for(connector, error.prospect_id)  # its campaign member and email task writes too ([R38], [R39])
        SyncError.objects.filter(pk=error.pk).update(status=SyncError.Status.RETRYING, next_retry_at=timezone.now())
    elif error.crm_id:
        SyncError.objects.filter(pk=error.pk).update(status=SyncError.Status.RETRYING, next_retry_at=timezone.now())
        try:
            manual.pull_record(connector, error.crm_id)
        except Exception as exc:
            record(connector, direction=error.direction, code=getattr(exc, "code", "RETRY_FAILED"),
                   message=str(exc), prospect_id=error.prospect_id, crm_id=error.crm_id)
    else:
        raise ValidationError("This error has neither a prospect nor a CRM id to retry")


def retry_one(access: Access, error: SyncError) -> None:
    _require_admin(access, error.connector)
    _retry(error)
    audit.record("connector.error_retry", actor=access.user, bu=access.bu, obj=error.connector,
                 summary=f"{error.code} {error.crm_id or error.prospect_id}")


def retry_all(access: Access, connector: Connector) -> int:
    _require_admin(access, connector)
    rows = list(SyncError.objects.select_related("connector").filter(connector=connector, status__in=LIVE))
    for row in rows:
        _retry(row)
    audit.record("connector.error_retry_all", actor=access.user, bu=access.bu, obj=connector,
                 summary=f"{len(rows)} errors")
    return len(rows)


def dismiss(access: Access, error: SyncError) -> None:
    _require_admin(access, error.connector)
    SyncError.objects.filter(pk=error.pk).update(status=SyncError.Status.DISMISSED, next_retry_at=None)
    audit.record("connector.error_dismiss", actor=access.user, bu=access.bu, obj=error.connector,
                 summary=f"{error.code} {error.crm_id or error.prospect_id}")


# --- Digest -------------------------------------------------------------------------------------------------------


def admin_emails(connector: Connector) -> list[str]:
    from loopline.accounts.models import Membership

    members = Membership.objects.filter(bu_id=connector.bu_id, user__is_active=True).select_related("role", "user")
    return sorted({m.user.email for m in members if m.can("connector.edit") and m.user.email})


def send_digest(connector: Connector, now: dt.datetime | None = None) -> int:
    """Email the BU's administrators the new errors since the last digest (at most one an hour). Returns the number
    of errors reported (0 when nothing new or too soon)."""
    now = now or timezone.now()
    last = (SyncError.objects.filter(connector=connector, notified_at__isnull=False)
            .order_by("-notified_at").values_list("notified_at", flat=True).first())
    if last is not None and now - last < DIGEST_EVERY:
        return 0
    new = list(SyncError.objects.filter(connector=connector, status=SyncError.Status.OPEN, notified_at__isnull=True)
               .order_by("first_seen_at"))
    if not new:
        return 0
    recipients = admin_emails(connector)
    groups = Counter((e.code, e.message.split("\n")[0][:200]) for e in new)
    lines = [f"{n} × {code}: {message}" for (code, message), n in groups.most_common()]
    body = (f"{len(new)} new CRM sync error(s) for {connector.bu.name}:\n\n" + "\n".join(lines)
            + "\n\nOpen Settings → CRM connector → Sync errors to retry or dismiss them.")
    if recipients:
        send_mail(f"[Loopline] {len(new)} new CRM sync error(s)", body, django_settings.DEFAULT_FROM_EMAIL,
                  recipients)
    SyncError.objects.filter(pk__in=[e.pk for e in new]).update(notified_at=now)
    return len(new)


def send_digests() -> dict[str, int]:
    sent = {}
    for connector in Connector.objects.select_related("bu").all():
        n = send_digest(connector)
        if n:
            sent[str(connector.pk)] = n
    return sent
