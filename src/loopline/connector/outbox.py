"""Writes the connector outbox in the same transaction as the prospect change ([R23]).

Subscribed to the platform's domain events. Changes are queued even while the connector is paused, so resuming picks
them up ([R4]). Changes that came from the CRM itself are not queued (the pull applies them; [R24]).
"""

from __future__ import annotations

from django.utils import timezone

from loopline.platform import events

from .models import Connector, FieldMapping, OutboxEntry

# Fields whose change can create or update the CRM record besides the mapped ones ([R11], [R18]).
ALWAYS_RELEVANT = frozenset({"assigned_user", "score", "grade", "source_campaign", "email", "is_deleted"})
IGNORED_SOURCES = frozenset({"crm"})


def _connector_id(bu_id: int) -> int | None:
    return Connector.objects.filter(bu_id=bu_id).values_list("id", flat=True).first()


def relevant_fields(connector_id: int, changed: frozenset[str] | set[str]) -> list[str]:
    mapped = set(FieldMapping.objects.filter(connector_id=connector_id).values_list("loopline_field", flat=True))
    return sorted(f for f in changed if f in mapped or f in ALWAYS_RELEVANT)


def enqueue(connector_id: int, prospect_id: int, fields: list[str], reason: str = "change") -> None:
    """Coalesce into the prospect's pending, unclaimed entry if there is one; otherwise add a new entry."""
    now = timezone.now()
    pending = (
        OutboxEntry.objects.filter(connector_id=connector_id, prospect_id=prospect_id, status=OutboxEntry.Status.PENDING,
                                   locked_until__isnull=True)
        .order_by("-id")
        .first()
    )
    if pending is not None:
        merged = sorted(set(pending.changed_fields) | set(fields))
        if merged != pending.changed_fields:
            OutboxEntry.objects.filter(pk=pending.pk).update(changed_fields=merged)
        return
    OutboxEntry.objects.create(
        connector_id=connector_id, prospect_id=prospect_id, changed_fields=fields, reason=reason, next_run_at=now
    )


def on_prospect_changed(event: events.ProspectChanged) -> None:
    if event.source in IGNORED_SOURCES:
        return
    connector_id = _connector_id(event.bu_id)
    if connector_id is None:
        return
    fields = relevant_fields(connector_id, event.changed_fields)
    if fields:
        enqueue(connector_id, event.prospect_id, fields, reason="create" if event.created else "change")


def on_bulk_changed(event: events.ProspectsBulkChanged) -> None:
    if event.source in IGNORED_SOURCES:
        return
    connector_id = _connector_id(event.bu_id)
    if connector_id is None or not event.prospect_ids:
        return
    now = timezone.now()
    already = set(
        OutboxEntry.objects.filter(connector_id=connector_id, prospect_id__in=event.prospect_ids,
                                   status=OutboxEntry.Status.PENDING, locked_until__isnull=True)
        .values_list("prospect_id", flat=True)
    )
    OutboxEntry.objects.bulk_create(
        [OutboxEntry(connector_id=connector_id, prospect_id=pid, changed_fields=["*"], reason="import", next_run_at=now)
         for pid in event.prospect_ids if pid not in already],
        batch_size=1000,
    )
    if already:
        OutboxEntry.objects.filter(connector_id=connector_id, prospect_id__in=already,
                                   status=OutboxEntry.Status.PENDING).update(changed_fields=["*"])


def connect() -> None:
    events.subscribe(events.ProspectChanged, on_prospect_changed)
    events.subscribe(events.ProspectsBulkChanged, on_bulk_changed)
