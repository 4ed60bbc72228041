"""Durable work as database rows: outboxes, due steps, retries. A broker is not a database; these rows are.

A row is *due* when ``next_run_at <= now`` and it is not leased (``locked_until`` empty or past). A processor claims
a batch with :func:`claim_due`, which leases the rows for ``lease_seconds``; if the processor dies, the lease runs
out and another processor claims the rows again. Nothing is lost, so processing must be idempotent.

    class CrmOutbox(DueRow):
        prospect = models.ForeignKey(...)

        class Meta(DueRow.Meta):
            pass

    for row in claim_due(CrmOutbox.objects.filter(bu=bu), limit=200, lease_seconds=120):
        try:
            push(row)
        except TransientError as exc:
            retry_later(row, exc, max_attempts=8)
        else:
            row.delete()            # or done(row) to park it

On PostgreSQL the claim uses ``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent processors never wait for or take
each other's rows. On SQLite there is one writer at a time: the project opens every transaction IMMEDIATE, so the
select-then-lease runs under the database write lock and two processors can never claim the same row either.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from typing import TypeVar

from django.db import connections, models, transaction
from django.db.models import F, Q
from django.utils import timezone

M = TypeVar("M", bound=models.Model)

MAX_ERROR_LENGTH = 2000


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 600.0, jitter: float = 0.5) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): exponential, capped, with random jitter.

    ``jitter`` is the fraction of the delay that is randomised: 0.5 gives a delay in [d/2, d] where d = base·2^(n-1)
    (capped), which spreads a thundering herd of retries while keeping the minimum wait predictable.
    """
    attempt = max(1, int(attempt))
    # Avoid float overflow for absurd attempt numbers.
    exponent = min(attempt - 1, 62)
    delay = min(cap, base * (2.0**exponent))
    jitter = min(max(jitter, 0.0), 1.0)
    return delay * (1.0 - jitter) + random.uniform(0.0, delay * jitter)


class DueRow(models.Model):
    """Abstract mixin for rows that are worked on later: outboxes, due program steps, CRM pushes.

    ``next_run_at`` empty means "not scheduled" (done or given up). Subclasses that declare their own ``Meta`` should
    inherit ``DueRow.Meta`` to keep the due index.
    """

    next_run_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    locked_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        abstract = True
        indexes = [models.Index(fields=["next_run_at"], name="%(app_label)s_%(class)s_due")]


def due_filter(now: dt.datetime | None = None) -> Q:
    now = now or timezone.now()
    return Q(next_run_at__isnull=False, next_run_at__lte=now) & (
        Q(locked_until__isnull=True) | Q(locked_until__lte=now)
    )


def claim_due[M: models.Model](
    queryset: models.QuerySet[M],
    limit: int = 100,
    lease_seconds: float = 60.0,
    *,
    now: dt.datetime | None = None,
) -> list[M]:
    """Lease up to ``limit`` due rows of ``queryset`` (a DueRow model) for ``lease_seconds`` and return them.

    Each claim increments ``attempts``. Rows come oldest due first. Safe with any number of concurrent claimers.
    """
    if limit <= 0:
        return []
    now = now or timezone.now()
    model = queryset.model
    using = queryset.db
    vendor = connections[using].vendor
    lease_until = now + dt.timedelta(seconds=lease_seconds)
    with transaction.atomic(using=using):
        due = queryset.filter(due_filter(now)).order_by("next_run_at", "pk")
        if vendor == "postgresql":
            due = due.select_for_update(skip_locked=True, of=("self",))
        elif connections[using].features.has_select_for_update:
            due = due.select_for_update()
        # On SQLite the IMMEDIATE transaction already holds the write lock: no other writer can interleave.
        rows = list(due[:limit])
        if not rows:
            return []
        ids = [row.pk for row in rows]
        model._default_manager.using(using).filter(pk__in=ids).update(
            locked_until=lease_until, attempts=F("attempts") + 1
        )
    for row in rows:
        row.locked_until = lease_until  # type: ignore[attr-defined]
        row.attempts = (row.attempts or 0) + 1  # type: ignore[attr-defined]
    return rows


def extend_lease(row: DueRow, lease_seconds: float) -> bool:
    """Keep a long piece of work leased. Returns False if the lease was lost (another claimer may have the row)."""
    now = timezone.now()
    new_until = now + dt.timedelta(seconds=lease_seconds)
    updated = (
        type(row)
        ._default_manager.filter(pk=row.pk, locked_until=row.locked_until)
        .update(locked_until=new_until)
    )
    if updated:
        row.locked_until = new_until
    return bool(updated)


def done(row: DueRow, **fields) -> None:
    """Mark a claimed row finished: no longer due, lease released, error cleared. Extra ``fields`` are saved too."""
    row.next_run_at = None
    row.locked_until = None
    row.last_error = ""
    for name, value in fields.items():
        setattr(row, name, value)
    row.save(update_fields=["next_run_at", "locked_until", "last_error", *fields])


def reschedule(row: DueRow, when: dt.datetime, *, reset_attempts: bool = True) -> None:
    """Make a row due again at ``when`` (e.g. the next step of a program), releasing its lease."""
    row.next_run_at = when
    row.locked_until = None
    fields = ["next_run_at", "locked_until"]
    if reset_attempts:
        row.attempts = 0
        fields.append("attempts")
    row.save(update_fields=fields)


def retry_later(
    row: DueRow, error: BaseException | str, *, max_attempts: int = 8, base: float = 5.0, cap: float = 3600.0
) -> bool:
    """Record a failed attempt and make the row due again after a jittered backoff.

    Returns True if another attempt is scheduled, False if the row gave up (``next_run_at`` cleared, error kept).
    """
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    row.last_error = message[:MAX_ERROR_LENGTH]
    row.locked_until = None
    if row.attempts >= max_attempts:
        row.next_run_at = None
    else:
        row.next_run_at = timezone.now() + dt.timedelta(
            seconds=backoff_delay(row.attempts, base=base, cap=cap)
        )
    row.save(update_fields=["last_error", "locked_until", "next_run_at"])
    return row.next_run_at is not None


def release(rows: Iterable[DueRow]) -> None:
    """Give leased rows back without counting the attempt (e.g. on a clean shutdown)."""
    rows = list(rows)
    if not rows:
        return
    model = type(rows[0])
    model._default_manager.filter(pk__in=[r.pk for r in rows]).update(
        locked_until=None, attempts=F("attempts") - 1
    )
