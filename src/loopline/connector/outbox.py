"""Writes the connector outbox in the same transaction as the prospect change ([R23]).

Subscribed to the platform's domain events. Changes are queued even while the connector is paused, so resuming picks
them up ([R4]). Changes that came from the CRM itself are not queued (the pull applies them; [R24]).
"""

from __future__ import annotations

import time

from django.db import connections, router
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from loopline.platform import events

from .models import Connector, FieldMapping, OutboxEntry

# Fields whose change can create or update the CRM record besides the mapped ones ([R11], [R18]).
# crm_owner_id: a CRM queue assignment ([M22]) must reach the CRM even though the owner is not a mapped field.
ALWAYS_RELEVANT = frozenset({"assigned_user", "score", "grade", "source_campaign", "email", "is_deleted",
                             "crm_owner_id"})
IGNORED_SOURCES = frozenset({"crm", "lifecycle"})  # lifecycle: stage dates set by reporting, never mapped


# Memo of "which connector serves this BU" and "which Loopline fields it maps" for the current (outermost)
# transaction: a bulk job changing thousands of prospects in one transaction would otherwise run two lookups per
# prospect. It lives on the outermost atomic block, so it never outlives a rolled-back transaction; saves of
# connectors and mappings clear it, and CACHE_SECONDS bounds it for a decorator's re-used atomic block.
CACHE_SECONDS = 2.0
_CACHE_ATTR = "_loopline_outbox_memo"


def _tx_cache() -> dict | None:
    conn = connections[router.db_for_write(Connector)]
    if not conn.in_atomic_block or not conn.atomic_blocks:
        return None
    block = conn.atomic_blocks[0]
    now = time.monotonic()
    held = getattr(block, _CACHE_ATTR, None)
    if held is None or now - held[0] > CACHE_SECONDS:
        held = (now, {})
        setattr(block, _CACHE_ATTR, held)
    return held[1]


def _memo(kind: str, key: int, load):
    cache = _tx_cache()
    if cache is None:
        return load()
    if (kind, key) not in cache:
        cache[(kind, key)] = load()
    return cache[(kind, key)]


def clear_cache(*_args, **_kwargs) -> None:
    conn = connections[router.db_for_write(Connector)]
    for block in conn.atomic_blocks:
        if getattr(block, _CACHE_ATTR, None) is not None:
            setattr(block, _CACHE_ATTR, None)


def _connector_id(bu_id: int) -> int | None:
    return _memo("connector", bu_id,
                 lambda: Connector.objects.filter(bu_id=bu_id).values_list("id", flat=True).first())


def relevant_fields(connector_id: int, changed: frozenset[str] | set[str]) -> list[str]:
    mapped = _memo("mapped", connector_id, lambda: frozenset(
        FieldMapping.objects.filter(connector_id=connector_id).values_list("loopline_field", flat=True)))
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
    for model in (Connector, FieldMapping):
        post_save.connect(clear_cache, sender=model, dispatch_uid=f"connector-outbox-cache-save-{model.__name__}")
        post_delete.connect(clear_cache, sender=model, dispatch_uid=f"connector-outbox-cache-del-{model.__name__}")
