"""The outbox is written in the prospect change's own transaction and coalesced per prospect ([R23], [R4])."""

import pytest
from django.db import transaction

from loopline.connector.models import Connector, FieldMapping, OutboxEntry
from loopline.prospects import services


@pytest.fixture
def connector(bu):
    c = Connector.objects.create(bu=bu)
    FieldMapping.objects.bulk_create([
        FieldMapping(connector=c, loopline_field="first_name", lead_field="FirstName", contact_field="FirstName"),
        FieldMapping(connector=c, loopline_field="company", lead_field="Company"),
    ])
    return c


def test_change_to_a_mapped_field_is_queued_even_while_paused(connector, bu):
    assert connector.status == Connector.Status.PAUSED  # [R2] created paused
    p = services.create_prospect(bu, {"email": "a@x.test", "first_name": "Ann"})
    entry = OutboxEntry.objects.get(prospect=p)
    assert entry.reason == "create" and "first_name" in entry.changed_fields


def test_unmapped_field_change_is_not_queued(connector, bu):
    p = services.create_prospect(bu, {"email": "a@x.test"})
    OutboxEntry.objects.all().delete()
    services.update_prospect(p, {"comments": "hello"})
    assert not OutboxEntry.objects.exists()


def test_rolled_back_change_leaves_no_outbox_row(connector, bu):
    p = services.create_prospect(bu, {"email": "a@x.test"})
    OutboxEntry.objects.all().delete()
    with pytest.raises(RuntimeError), transaction.atomic():
        services.update_prospect(p, {"company": "Acme"})
        raise RuntimeError("crash after the change")
    assert not OutboxEntry.objects.exists()
    p.refresh_from_db()
    assert p.company == ""


def test_changes_coalesce_into_the_pending_entry(connector, bu):
    p = services.create_prospect(bu, {"email": "a@x.test"})
    services.update_prospect(p, {"company": "Acme"})
    services.update_prospect(p, {"first_name": "Ann"})
    entries = list(OutboxEntry.objects.filter(prospect=p))
    assert len(entries) == 1
    assert {"company", "first_name", "email"} <= set(entries[0].changed_fields)


def test_claimed_entry_is_not_extended_a_new_one_keeps_order(connector, bu):
    from django.utils import timezone

    p = services.create_prospect(bu, {"email": "a@x.test"})
    OutboxEntry.objects.update(locked_until=timezone.now())
    services.update_prospect(p, {"company": "Acme"})
    entries = list(OutboxEntry.objects.filter(prospect=p).order_by("id"))
    assert len(entries) == 2 and entries[1].changed_fields == ["company"]


def test_changes_from_the_crm_are_not_echoed_back(connector, bu):  # [R24]
    p = services.create_prospect(bu, {"email": "a@x.test"}, source="crm")
    services.update_prospect(p, {"company": "From CRM"}, source="crm")
    assert not OutboxEntry.objects.exists()


def test_no_connector_no_outbox(bu):
    services.create_prospect(bu, {"email": "a@x.test", "company": "Acme"})
    assert not OutboxEntry.objects.exists()


def test_the_per_transaction_memo_sees_a_mapping_added_mid_transaction(connector, bu):
    # [R23] the outbox subscriber reads "connector of this BU / mapped fields" once per transaction; saving a mapping
    # clears that memo, so a field mapped a moment ago is queued at once.
    p = services.create_prospect(bu, {"email": "memo@x.test"})
    OutboxEntry.objects.all().delete()
    services.update_prospect(p, {"job_title": "CTO"})
    assert not OutboxEntry.objects.exists()  # not mapped (yet)
    FieldMapping.objects.create(connector=connector, loopline_field="job_title", lead_field="Title")
    services.update_prospect(p, {"job_title": "CEO"})
    assert OutboxEntry.objects.get(prospect=p).changed_fields == ["job_title"]


def test_a_bu_without_connector_queues_nothing_and_a_new_connector_is_seen(bu, other_bu):
    p = services.create_prospect(other_bu, {"email": "none@x.test", "first_name": "No"})
    assert not OutboxEntry.objects.exists()
    c = Connector.objects.create(bu=other_bu)
    FieldMapping.objects.create(connector=c, loopline_field="first_name", lead_field="FirstName")
    services.update_prospect(p, {"first_name": "Yes"})
    assert OutboxEntry.objects.get(prospect=p).connector_id == c.pk
