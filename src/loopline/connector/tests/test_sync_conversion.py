"""Lead conversion against a real crmsandbox ([R13]): the prospect follows the converted contact, keeps its history
and never writes to the converted lead again."""

from __future__ import annotations

from django.db import transaction

from loopline.connector.engine import RunCounters
from loopline.connector.models import SyncError
from loopline.connector.sync import pull
from loopline.connector.sync.context import SyncContext
from loopline.prospects import services as prospects
from loopline.prospects.models import Activity, ActivityType, Prospect

from .helpers import drain_all, sync


def _seq(crm) -> int:
    return crm.request("GET", "/_sandbox/changes", params={"since": 0, "limit": 10000})["last"]


def _lead_changes(crm, since: int, lead_id: str) -> list[dict]:
    rows = crm.request("GET", "/_sandbox/changes", params={"since": since, "limit": 10000, "object": "Lead"})[
        "changes"
    ]
    return [c for c in rows if c["recordId"] == lead_id]


def _convert(crm, lead_id: str, **extra) -> dict:
    return crm.request("POST", "/_sandbox/convert-lead", json={"leadId": lead_id, **extra})


def test_converted_lead_keeps_the_prospect_and_its_history(connector, crm, bu, unique):  # [R13]
    email = f"conv.{unique}@example.test"
    lead_id = crm.create("Lead", LastName="Conv", Company="ConvCo", Email=email)
    sync(connector)
    p = Prospect.objects.get(bu=bu, email=email)
    prospects.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=p, title="Before conversion")
    converted = _convert(crm, lead_id)
    after_conversion = _seq(crm)
    sync(connector)
    p.refresh_from_db()
    assert Prospect.objects.filter(bu=bu, email=email).count() == 1  # same prospect, nothing re-created
    assert p.crm_contact_id == converted["contactId"] and p.crm_account_id == converted["accountId"]
    assert p.crm_lead_id == lead_id  # the lead stays as history
    assert Activity.objects.filter(prospect=p, title="Before conversion").exists()
    conversion = Activity.objects.get(prospect=p, type=ActivityType.CRM_SYNC, data__event="crm_converted")
    assert conversion.data["contact_id"] == converted["contactId"]
    # From now on changes go to the contact, never to the read-only lead.
    prospects.update_prospect(p, {"job_title": "After conversion"})
    sync(connector)
    assert crm.get("Contact", converted["contactId"])["Title"] == "After conversion"
    assert _lead_changes(crm, after_conversion, lead_id) == []
    assert not SyncError.objects.filter(connector=connector).exists()


def test_change_made_before_the_pull_sees_the_conversion_reaches_the_contact(
    connector, crm, bu, unique
):  # [R13]
    email = f"race.{unique}@example.test"
    lead_id = crm.create("Lead", LastName="Race", Company="RaceCo", Email=email)
    sync(connector)
    p = Prospect.objects.get(bu=bu, email=email)
    converted = _convert(crm, lead_id)
    after_conversion = _seq(crm)
    prospects.update_prospect(p, {"job_title": "Changed meanwhile"})
    drain_all(connector)  # push alone: the prospect still points at the converted lead
    assert _lead_changes(crm, after_conversion, lead_id) == []
    assert not SyncError.objects.filter(
        connector=connector
    ).exists()  # waits; no CANNOT_UPDATE_CONVERTED_LEAD
    sync(connector)  # the pull follows the conversion; the waiting change goes to the contact at once
    assert crm.get("Contact", converted["contactId"])["Title"] == "Changed meanwhile"
    assert _lead_changes(crm, after_conversion, lead_id) == []


def test_loopline_edits_made_around_the_conversion_win_over_the_contacts_copied_values(
    connector, crm, bu, unique
):  # [R13], [R17]: the contact inherits the lead's sync state, so only Loopline changed those fields
    email = f"inherit.{unique}@example.test"
    lead_id = crm.create("Lead", FirstName="Guido", LastName="Inherit", Company="Co", Email=email)
    sync(connector)
    p = Prospect.objects.get(bu=bu, email=email)
    converted = _convert(crm, lead_id)
    prospects.update_prospect(p, {"first_name": "Changed", "opted_out": True})
    crm.update("Contact", converted["contactId"], Title="Edited in the CRM")  # an unrelated CRM change
    sync(connector, rounds=2)
    p.refresh_from_db()
    contact = crm.get("Contact", converted["contactId"])
    assert (p.first_name, p.opted_out, p.job_title) == ("Changed", True, "Edited in the CRM")
    assert (contact["FirstName"], contact["HasOptedOutOfEmail"]) == ("Changed", True)


def test_conversion_into_a_contact_with_its_own_prospect_merges_them(
    connector, crm, bu, unique
):  # [R13], [R32]
    lead_id = crm.create("Lead", LastName="Lead", Company="Co", Email=f"lead.{unique}@example.test")
    contact_id = crm.create("Contact", LastName="Contact", Email=f"contact.{unique}@example.test")
    sync(connector)
    lead_prospect = Prospect.objects.get(bu=bu, crm_lead_id=lead_id)
    contact_prospect = Prospect.objects.get(bu=bu, crm_contact_id=contact_id)
    prospects.record_activity(bu.pk, ActivityType.FORM_SUCCESS, prospect=lead_prospect, title="Lead's form")
    _convert(crm, lead_id, contactId=contact_id)
    sync(connector)
    lead_prospect.refresh_from_db()
    contact_prospect.refresh_from_db()
    assert lead_prospect.merged_into_id == contact_prospect.pk and lead_prospect.is_deleted
    assert not contact_prospect.is_deleted and contact_prospect.crm_contact_id == contact_id
    assert Activity.objects.filter(prospect=contact_prospect, title="Lead's form").exists()
    assert Prospect.objects.filter(bu=bu, crm_contact_id=contact_id, is_deleted=False).count() == 1


def test_crm_id_mode_contact_arriving_first_does_not_leave_two_prospects(
    admin_access, crm, crm_app, bu, unique
):  # [R13], [R9]
    from .conftest import make_connector

    bu.allow_duplicate_emails = True
    bu.save()
    connector = make_connector(admin_access, crm, crm_app, match_by_email_when_no_crm_id=False)
    email = f"idmode.{unique}@example.test"
    lead_id = crm.create("Lead", LastName="Id", Company="IdCo", Email=email)
    sync(connector)
    first = Prospect.objects.get(bu=bu, crm_lead_id=lead_id)
    prospects.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=first, title="Lead history")
    converted = _convert(crm, lead_id)
    # The new contact is applied before the lead's conversion (it can land in an earlier page or poll): in CRM id
    # mode it gets a prospect of its own...
    ctx = SyncContext.load(connector)
    with transaction.atomic():
        pull.apply_records(ctx, pull.fetch_records(ctx, "Contact", [converted["contactId"]]), RunCounters())
    assert Prospect.objects.filter(bu=bu, email=email, is_deleted=False).count() == 2
    # ...and when the conversion arrives, the lead's prospect joins it: one person, one prospect, history kept.
    sync(connector)
    live = Prospect.objects.filter(bu=bu, email=email, is_deleted=False)
    assert live.count() == 1
    survivor = live.get()
    assert survivor.crm_contact_id == converted["contactId"]
    assert Activity.objects.filter(prospect=survivor, title="Lead history").exists()
    first.refresh_from_db()
    assert first.merged_into_id == survivor.pk
