"""Person accounts end to end against a real crmsandbox ([R8], [R9], [R11], [R13], [R14], [R19]).

A person account is an ``Account`` with ``IsPersonAccount = true`` and one *person contact*. The prospect syncs with
the account (email ``PersonEmail``, owner the account's owner) and carries the person contact id as its contact id;
the person contact never syncs as a contact of its own.
"""

from __future__ import annotations

import pytest

from loopline.connector.models import CrmLink, SyncError
from loopline.prospects import services as prospects
from loopline.prospects.models import Activity, ActivityType, Prospect

from .conftest import make_connector
from .helpers import drain_all, sync


@pytest.fixture
def pa_connector(admin_access, crm, crm_app):
    return make_connector(admin_access, crm, crm_app, sync_person_accounts=True)


def _person(crm, email: str, **values) -> tuple[str, dict]:
    account_id = crm.create("Account", FirstName="Pat", LastName="Person", PersonEmail=email, **values)
    return account_id, crm.get("Account", account_id)


def _user(crm, prefix: str) -> str:
    return crm.query(f"SELECT Id FROM User WHERE Username LIKE '{prefix}%'")[0]["Id"]


def _seq(crm) -> int:
    return crm.request("GET", "/_sandbox/changes", params={"since": 0, "limit": 10000})["last"]


def _changes(crm, since: int, record_id: str) -> list[dict]:
    rows = crm.request("GET", "/_sandbox/changes", params={"since": since, "limit": 10000})["changes"]
    return [c for c in rows if c["recordId"] == record_id]


# --- CRM → Loopline ----------------------------------------------------------------------------------------------


def test_person_account_created_in_the_crm_becomes_one_prospect(
    pa_connector, crm, bu, unique
):  # [R14], [R10]
    email = f"person.{unique}@example.test"
    owner = _user(crm, "user1")
    account_id, account = _person(crm, email.upper(), PersonTitle="Vet", OwnerId=owner)
    sync(pa_connector)
    p = Prospect.objects.get(bu=bu, email=email)  # email from PersonEmail (case-insensitive)
    assert (p.first_name, p.last_name, p.job_title) == ("Pat", "Person", "Vet")
    assert p.crm_owner_id == owner  # the account's owner is the prospect's owner
    assert (
        p.crm_contact_id == account["PersonContactId"]
        and p.crm_account_id == account_id
        and not p.crm_lead_id
    )
    link = CrmLink.objects.get(connector=pa_connector, crm_id=account_id)
    assert link.prospect_id == p.pk and link.crm_object == "PersonAccount"
    # The person contact is not a second record of its own: no link, no second prospect.
    assert not CrmLink.objects.filter(connector=pa_connector, crm_id=account["PersonContactId"]).exists()
    assert Prospect.objects.filter(bu=bu, email=email).count() == 1

    other = _user(crm, "user2")
    crm.update("Account", account_id, PersonTitle="Head vet", OwnerId=other, FirstName="Patricia")
    sync(pa_connector)
    p.refresh_from_db()
    assert (p.first_name, p.job_title, p.crm_owner_id) == ("Patricia", "Head vet", other)
    assert not SyncError.objects.filter(connector=pa_connector).exists()


def test_without_the_setting_person_contacts_sync_as_contacts(connector, crm, bu, unique):  # [R14] opt-in
    email = f"off.{unique}@example.test"
    account_id, account = _person(crm, email)
    sync(connector)
    p = Prospect.objects.get(bu=bu, email=email)
    assert p.crm_contact_id == account["PersonContactId"]
    assert not CrmLink.objects.filter(connector=connector, crm_id=account_id).exists()


def test_prospect_matches_a_new_person_account_by_email(pa_connector, crm, bu, unique):  # [R9]
    email = f"match.{unique}@example.test"
    p = prospects.create_prospect(bu, {"email": email, "last_name": "Person", "job_title": "Groomer"})
    account_id, account = _person(crm, email)
    sync(pa_connector)
    p.refresh_from_db()
    assert Prospect.objects.filter(bu=bu, email=email).count() == 1
    assert p.crm_account_id == account_id and p.crm_contact_id == account["PersonContactId"]
    assert crm.get("Account", account_id)["PersonTitle"] == "Groomer"  # blank CRM field filled [R17]


def test_unassigned_prospect_push_finds_the_person_account_by_email(
    pa_connector, crm, bu, unique
):  # [R9], [R11]
    email = f"pushmatch.{unique}@example.test"
    account_id, account = _person(crm, email)
    p = prospects.create_prospect(bu, {"email": email.upper(), "job_title": "Trainer"})
    drain_all(pa_connector)  # push only: the CRM record is found by PersonEmail, nothing is created
    p.refresh_from_db()
    assert p.crm_account_id == account_id and p.crm_contact_id == account["PersonContactId"]
    assert crm.get("Account", account_id)["PersonTitle"] == "Trainer"
    assert crm.query(f"SELECT Id FROM Lead WHERE Email = '{email}'") == []
    assert len(crm.query(f"SELECT Id FROM Contact WHERE Email = '{email}'")) == 1  # only the person contact


def test_person_account_email_change_updates_the_prospect(pa_connector, crm, bu, unique):  # [R19]
    email = f"old.{unique}@example.test"
    account_id, _ = _person(crm, email)
    sync(pa_connector)
    p = Prospect.objects.get(bu=bu, email=email)
    new = f"new.{unique}@example.test"
    crm.update("Account", account_id, PersonEmail=new)
    sync(pa_connector)
    p.refresh_from_db()
    assert p.email == new
    assert Prospect.objects.filter(bu=bu, email__in=[email, new]).count() == 1
    # And the other way: Loopline's email change reaches PersonEmail.
    newer = f"newer.{unique}@example.test"
    prospects.update_prospect(p, {"email": newer})
    sync(pa_connector)
    assert crm.get("Account", account_id)["PersonEmail"] == newer


# --- Loopline → CRM ----------------------------------------------------------------------------------------------


def test_assigned_prospect_creates_a_person_account(
    admin_access, crm, crm_app, bu, admin_user, unique
):  # [R11]
    connector = make_connector(admin_access, crm, crm_app, new_record_object="PersonAccount")
    email = f"newpa.{unique}@example.test"
    p = prospects.create_prospect(bu, {"email": email, "first_name": "Nia", "last_name": "Novak"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_account_id.startswith("001") and not p.crm_lead_id
    account = crm.get("Account", p.crm_account_id)
    assert account["IsPersonAccount"] and account["PersonEmail"] == email
    assert (account["FirstName"], account["LastName"]) == ("Nia", "Novak")
    assert (
        account["OwnerId"] == connector.connector_user_id
    )  # assigned user without CRM user → connector user
    assert p.crm_contact_id == account["PersonContactId"]  # [R14] the person contact id is the contact id
    link = CrmLink.objects.get(connector=connector, crm_id=p.crm_account_id)
    assert link.prospect_id == p.pk and link.crm_object == "PersonAccount"
    assert crm.query(f"SELECT Id FROM Lead WHERE Email = '{email}'") == []
    # Loopline's edits reach the person account; the next poll sees only our own write come back.
    prospects.update_prospect(p, {"job_title": "Breeder", "last_name": "Novak-Lee"})
    sync(connector)
    account = crm.get("Account", p.crm_account_id)
    assert (account["PersonTitle"], account["LastName"]) == ("Breeder", "Novak-Lee")
    assert Prospect.objects.filter(bu=bu, email=email).count() == 1
    assert not SyncError.objects.filter(connector=connector).exists()


def test_assigned_prospect_creates_a_contact_when_set(
    admin_access, crm, crm_app, bu, admin_user, unique
):  # [R11]
    connector = make_connector(admin_access, crm, crm_app, new_record_object="Contact")
    email = f"newcontact.{unique}@example.test"
    p = prospects.create_prospect(bu, {"email": email, "last_name": "Cole"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_contact_id.startswith("003") and not p.crm_lead_id
    contact = crm.get("Contact", p.crm_contact_id)
    assert contact["Email"] == email and contact["LastName"] == "Cole" and not contact["IsPersonAccount"]
    assert CrmLink.objects.get(connector=connector, crm_id=p.crm_contact_id).crm_object == "Contact"
    prospects.update_prospect(p, {"job_title": "Buyer"})
    sync(connector)
    assert crm.get("Contact", p.crm_contact_id)["Title"] == "Buyer"


# --- Opt-out ([R16] most recently updated field) -----------------------------------------------------------------


def test_person_account_opt_out_flows_both_ways(pa_connector, crm, bu, unique):  # [R14], [R16]
    email = f"optout.{unique}@example.test"
    account_id, _ = _person(crm, email)
    sync(pa_connector)
    p = Prospect.objects.get(bu=bu, email=email)
    assert not p.opted_out
    crm.update("Account", account_id, PersonHasOptedOutOfEmail=True)
    sync(pa_connector)
    p.refresh_from_db()
    assert p.opted_out
    prospects.update_prospect(p, {"opted_out": False})
    sync(pa_connector)
    assert crm.get("Account", account_id)["PersonHasOptedOutOfEmail"] is False
    p.refresh_from_db()
    assert not p.opted_out


# --- Lead conversion into a person account ([R13]) ---------------------------------------------------------------


def test_lead_converted_into_a_person_account_keeps_the_prospect(
    pa_connector, crm, bu, unique
):  # [R13], [R14]
    email = f"convpa.{unique}@example.test"
    lead_id = crm.create("Lead", FirstName="Lou", LastName="Lead", Company="Self", Email=email)
    sync(pa_connector)
    p = Prospect.objects.get(bu=bu, email=email)
    prospects.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=p, title="Before conversion")
    converted = crm.request("POST", "/_sandbox/convert-lead", json={"leadId": lead_id, "personAccount": True})
    account = crm.get("Account", converted["accountId"])
    assert account["IsPersonAccount"] and converted["contactId"] == account["PersonContactId"]
    after_conversion = _seq(crm)
    sync(pa_connector)
    p.refresh_from_db()
    assert Prospect.objects.filter(bu=bu, email=email, is_deleted=False).count() == 1  # nothing re-created
    assert p.crm_contact_id == converted["contactId"] and p.crm_account_id == converted["accountId"]
    assert p.crm_lead_id == lead_id  # history
    assert Activity.objects.filter(prospect=p, title="Before conversion").exists()
    assert Activity.objects.filter(
        prospect=p, type=ActivityType.CRM_SYNC, data__event="crm_converted"
    ).exists()
    assert CrmLink.objects.get(connector=pa_connector, crm_id=converted["accountId"]).prospect_id == p.pk
    # From now on Loopline writes the person account, never the converted lead.
    prospects.update_prospect(p, {"job_title": "Owner"})
    sync(pa_connector)
    assert crm.get("Account", converted["accountId"])["PersonTitle"] == "Owner"
    assert _changes(crm, after_conversion, lead_id) == []
    assert not SyncError.objects.filter(connector=pa_connector).exists()


def test_lead_converted_into_an_existing_person_account_merges_prospects(
    pa_connector, crm, bu, unique
):  # [R13], [R32]
    lead_id = crm.create("Lead", LastName="Lead", Company="Co", Email=f"lead.{unique}@example.test")
    account_id, account = _person(crm, f"pa.{unique}@example.test")
    sync(pa_connector)
    lead_prospect = Prospect.objects.get(bu=bu, crm_lead_id=lead_id)
    person_prospect = Prospect.objects.get(bu=bu, crm_account_id=account_id)
    prospects.record_activity(bu.pk, ActivityType.FORM_SUCCESS, prospect=lead_prospect, title="Lead's form")
    converted = crm.request(
        "POST", "/_sandbox/convert-lead", json={"leadId": lead_id, "accountId": account_id}
    )
    assert converted["contactId"] == account["PersonContactId"]
    sync(pa_connector)
    lead_prospect.refresh_from_db()
    person_prospect.refresh_from_db()
    assert lead_prospect.merged_into_id == person_prospect.pk and lead_prospect.is_deleted
    assert not person_prospect.is_deleted and person_prospect.crm_account_id == account_id
    assert Activity.objects.filter(prospect=person_prospect, title="Lead's form").exists()


# --- Initial import and single records ([R10], [R3]) -------------------------------------------------------------


def test_initial_import_brings_person_accounts_once(admin_access, crm, crm_app, bu, unique):  # [R10], [R14]
    from loopline.connector.sync import pull

    email = f"imported.{unique}@example.test"
    account_id, account = _person(crm, email)  # exists before the connector: only the import brings it
    connector = make_connector(admin_access, crm, crm_app, sync_person_accounts=True)
    pull.initial_import(connector)
    p = Prospect.objects.get(bu=bu, email=email)
    assert p.crm_account_id == account_id and p.crm_contact_id == account["PersonContactId"]
    assert CrmLink.objects.get(connector=connector, crm_id=account_id).crm_object == "PersonAccount"
    assert not CrmLink.objects.filter(connector=connector, crm_id=account["PersonContactId"]).exists()


def test_the_bulk_import_brings_person_accounts_once_and_their_contacts_not_as_contacts(
    admin_access, crm, crm_app, bu, unique
):  # [R10], [R14], [R23] the Bulk API 2.0 path of the initial import
    from loopline.connector.sync import bulk

    email = f"bulk.{unique}@example.test"
    account_id, account = _person(crm, email)
    connector = make_connector(admin_access, crm, crm_app, sync_person_accounts=True)
    counters = bulk.bulk_initial_import(connector)
    p = Prospect.objects.get(bu=bu, email=email)
    assert p.crm_account_id == account_id and p.crm_contact_id == account["PersonContactId"]
    assert CrmLink.objects.get(connector=connector, crm_id=account_id).crm_object == "PersonAccount"
    assert not CrmLink.objects.filter(connector=connector, crm_id=account["PersonContactId"]).exists()
    assert counters.created >= 1
    assert set(bulk.progress(connector)) == {"Lead", "Contact", "PersonAccount"}


def test_reconciliation_repairs_a_person_account_change_polling_missed(pa_connector, crm, bu, unique):
    # [R22], [R14] the scheduled comparison covers person accounts, not their person contacts.
    import datetime as dt

    from loopline.connector.models import Watermark
    from loopline.connector.sync import reconcile

    email = f"drift.{unique}@example.test"
    account_id, account = _person(crm, email)
    sync(pa_connector)
    p = Prospect.objects.get(bu=bu, email=email)
    Watermark.objects.filter(connector=pa_connector).update(  # polling misses what happens next
        modstamp=dt.datetime.now(dt.UTC) + dt.timedelta(days=1), recent_keys=[])
    crm.update("Account", account_id, PersonTitle="Changed unseen")
    sync(pa_connector)
    p.refresh_from_db()
    assert p.job_title != "Changed unseen"
    report = reconcile.reconcile(pa_connector)
    person = next(o for o in report.objects if o.object_type == "PersonAccount")
    assert person.changed >= 1 and person.links >= 1
    p.refresh_from_db()
    assert p.job_title == "Changed unseen"
    # The person contact is not compared (nor repaired) as a contact of its own.
    assert not CrmLink.objects.filter(connector=pa_connector, crm_id=account["PersonContactId"]).exists()
    assert Prospect.objects.filter(bu=bu, email=email).count() == 1


def test_send_to_loopline_and_sync_now_with_a_person_account(
    pa_connector, admin_access, crm, bu, unique
):  # [R3], [R14]
    from loopline.connector.services import pause
    from loopline.connector.sync import manual

    pause(admin_access, pa_connector)
    email = f"manual.{unique}@example.test"
    account_id, account = _person(crm, email)
    result = manual.send_to_loopline(pa_connector, account_id)
    assert result.ok, result.message
    p = Prospect.objects.get(pk=result.prospect_id)
    assert p.email == email and p.crm_contact_id == account["PersonContactId"]
    crm.update("Account", account_id, PersonTitle="Manual")
    prospects.update_prospect(p, {"phone": "555-0100"})
    assert manual.sync_prospect_now(admin_access, p).ok  # both ways, while paused
    p.refresh_from_db()
    assert p.job_title == "Manual"
    assert crm.get("Account", account_id)["Phone"] == "555-0100"
    assert not CrmLink.objects.filter(connector=pa_connector, crm_id=account["PersonContactId"]).exists()


def test_person_account_creates_name_the_person_record_type_when_the_org_has_one(
    pa_connector,
):  # [R11], [R14]
    from loopline.connector.models import CrmDescribe
    from loopline.connector.sync import push
    from loopline.connector.sync.context import SyncContext

    ctx = SyncContext.load(pa_connector)
    assert push.person_record_type(ctx) == {}  # the sandbox has only the master record type: none is sent
    row = CrmDescribe.objects.get(connector=pa_connector, object_type="Account")
    infos = [
        *row.data["recordTypeInfos"],
        {
            "developerName": "PersonAccount",
            "recordTypeId": "012000000000PAAAAA",
            "available": True,
            "master": False,
        },
    ]
    row.data = {**row.data, "recordTypeInfos": infos}
    row.save()
    assert push.person_record_type(ctx) == {"RecordTypeId": "012000000000PAAAAA"}


def test_person_account_email_change_unlinks_when_updates_are_off(
    admin_access, crm, crm_app, bu, unique
):  # [R19]
    connector = make_connector(
        admin_access, crm, crm_app, sync_person_accounts=True, update_email_from_crm=False
    )
    email = f"keep.{unique}@example.test"
    account_id, _ = _person(crm, email)
    sync(connector)
    p = Prospect.objects.get(bu=bu, email=email)
    crm.update("Account", account_id, PersonEmail=f"moved.{unique}@example.test")
    sync(connector)
    p.refresh_from_db()
    assert p.email == email  # the prospect keeps its email and stops syncing with that record
    assert not p.crm_account_id and not p.crm_contact_id
    assert not CrmLink.objects.filter(connector=connector, crm_id=account_id).exists()
