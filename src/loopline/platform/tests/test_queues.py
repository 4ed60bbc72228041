"""Durable rows: claim_due leases due rows once, even with concurrent claimers on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connection, models
from django.test.utils import isolate_apps
from django.utils import timezone

from loopline.platform.queues import DueRow, claim_due, done, extend_lease, release, reschedule, retry_later


@pytest.fixture
def outbox_model(django_db_blocker):
    """A concrete DueRow model with a real table, created for the test and dropped after."""
    with isolate_apps("loopline.platform"):

        class TestOutbox(DueRow):
            payload = models.CharField(max_length=50)

            class Meta(DueRow.Meta):
                app_label = "platform"
                db_table = "platform_test_outbox"

    with django_db_blocker.unblock(), connection.schema_editor() as editor:
        editor.create_model(TestOutbox)
    yield TestOutbox
    with django_db_blocker.unblock(), connection.schema_editor() as editor:
        editor.delete_model(TestOutbox)


@pytest.mark.django_db(transaction=True)
def test_claim_due_leases_rows_once_until_the_lease_ends(outbox_model):
    now = timezone.now()
    outbox_model.objects.bulk_create(
        [outbox_model(payload=f"p{i}", next_run_at=now - dt.timedelta(seconds=i)) for i in range(5)]
    )
    outbox_model.objects.create(payload="later", next_run_at=now + dt.timedelta(hours=1))
    outbox_model.objects.create(payload="parked", next_run_at=None)

    first = claim_due(outbox_model.objects.all(), limit=3, lease_seconds=60, now=now)
    assert [r.payload for r in first] == ["p4", "p3", "p2"], "oldest due first"
    assert all(r.attempts == 1 and r.locked_until == now + dt.timedelta(seconds=60) for r in first)
    second = claim_due(outbox_model.objects.all(), limit=10, lease_seconds=60, now=now)
    assert [r.payload for r in second] == ["p1", "p0"]
    assert claim_due(outbox_model.objects.all(), limit=10, now=now) == []
    # The processor of ``first`` died: after the lease, the rows are due again.
    again = claim_due(
        outbox_model.objects.all(), limit=10, lease_seconds=60, now=now + dt.timedelta(seconds=61)
    )
    assert sorted(r.payload for r in again) == ["p0", "p1", "p2", "p3", "p4"]
    assert {r.attempts for r in again} == {2}


@pytest.mark.django_db(transaction=True)
def test_done_retry_later_reschedule_release(outbox_model):
    now = timezone.now()
    _a, _b, _c, _d = (outbox_model.objects.create(payload=x, next_run_at=now) for x in "abcd")
    claimed = {r.payload: r for r in claim_due(outbox_model.objects.all(), limit=10)}
    done(claimed["a"])
    assert retry_later(claimed["b"], ConnectionError("timeout"), max_attempts=3, base=10) is True
    reschedule(claimed["c"], now + dt.timedelta(days=1))
    release([claimed["d"]])
    assert extend_lease(claimed["d"], 30) is False, "released rows have no lease to extend"
    rows = {r.payload: r for r in outbox_model.objects.all()}
    assert rows["a"].next_run_at is None and rows["a"].locked_until is None
    assert rows["b"].last_error == "ConnectionError: timeout" and rows["b"].next_run_at > now + dt.timedelta(
        seconds=4
    )
    assert rows["c"].attempts == 0 and rows["c"].next_run_at == now + dt.timedelta(days=1)
    assert rows["d"].attempts == 0 and rows["d"].locked_until is None
    rows["b"].attempts = 3
    assert retry_later(rows["b"], "still down", max_attempts=3) is False
    assert outbox_model.objects.get(payload="b").next_run_at is None, "gave up: parked with its error"


@pytest.mark.django_db(transaction=True)
def test_extend_lease_keeps_long_work(outbox_model):
    outbox_model.objects.create(payload="x", next_run_at=timezone.now())
    (row,) = claim_due(outbox_model.objects.all(), lease_seconds=1)
    assert extend_lease(row, 120)
    later = timezone.now() + dt.timedelta(seconds=5)
    assert claim_due(outbox_model.objects.all(), now=later) == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent claimers need PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_concurrent_claimers_never_take_the_same_row(outbox_model):
    from django.db import connections

    now = timezone.now()
    outbox_model.objects.bulk_create([outbox_model(payload=str(i), next_run_at=now) for i in range(400)])
    claimed: list[list[int]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)
    errors = []

    def claimer(n: int):
        try:
            barrier.wait()
            while True:
                rows = claim_due(outbox_model.objects.all(), limit=7, lease_seconds=300)
                if not rows:
                    return
                claimed[n].extend(r.pk for r in rows)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    every = [pk for part in claimed for pk in part]
    assert len(every) == 400 and len(set(every)) == 400, "each row claimed exactly once"
    assert sum(1 for part in claimed if part) > 1, "the work was shared"
    assert set(outbox_model.objects.values_list("attempts", flat=True)) == {1}
