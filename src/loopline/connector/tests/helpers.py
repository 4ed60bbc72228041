"""Small helpers for the sync tests."""

from __future__ import annotations

from loopline.connector.models import Connector, OutboxEntry
from loopline.connector.sync import pull, push


def sync(connector: Connector, rounds: int = 1) -> dict:
    """Run the loop by hand: poll, then drain until the outbox has nothing due."""
    totals = {"pulled": 0, "pushed": 0}
    for _ in range(rounds):
        connector.refresh_from_db()
        counters = pull.poll(connector)
        totals["pulled"] += counters.created + counters.updated
        totals["pushed"] += drain_all(connector)
    return totals


def drain_all(connector: Connector, max_batches: int = 50) -> int:
    n = 0
    for _ in range(max_batches):
        connector.refresh_from_db()
        counters = push.drain(connector)
        if counters.note == "the outbox is empty":
            break
        n += counters.created + counters.updated
    return n


def pending(connector: Connector) -> int:
    return OutboxEntry.objects.filter(connector=connector, status=OutboxEntry.Status.PENDING).count()
