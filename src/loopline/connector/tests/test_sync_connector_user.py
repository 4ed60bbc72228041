"""The connector user ([R7]) and what syncs ([R8]), end to end against the sandbox."""

from __future__ import annotations

from loopline.connector import services
from loopline.connector.sync import pull
from loopline.connector.sync.context import POLLED_OBJECTS
from loopline.prospects import services as prospects
from loopline.prospects.models import Prospect

from .conftest import make_connector
from .helpers import drain_all


def test_writes_are_attributed_to_the_integration_user(connector, crm, bu, admin_user, unique):  # [R7]
    p = prospects.create_prospect(bu, {"email": f"author.{unique}@example.test", "last_name": "Author"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    lead = crm.get("Lead", p.crm_lead_id)
    assert lead["CreatedById"] == connector.connector_user_id == lead["LastModifiedById"]
    crm_user = crm.query(f"SELECT Username FROM User WHERE Id = '{connector.connector_user_id}'")[0]
    assert crm_user["Username"] == crm.integration_username


def test_a_named_connector_user_only_syncs_what_it_can_see(admin_access, crm, crm_app, bu, unique):  # [R7]
    user = crm.query("SELECT Id, Username FROM User WHERE Username LIKE 'user1%'")[0]
    named, named_id = user["Username"], user["Id"]  # a Standard User: sees only the records it owns
    connector = make_connector(admin_access, crm, crm_app, resume=False)
    services.update_connection(admin_access, connector, {
        "login_url": crm.login_url, "consumer_key": crm_app.consumer_key, "username": named, "ca_file": crm.ca_file})
    ok, message = services.verify_connection(admin_access, connector)
    assert ok, message
    connector.refresh_from_db()
    assert connector.connector_user_id == named_id
    mine = crm.create("Lead", LastName="Mine", Company="Co", Email=f"mine.{unique}@example.test", OwnerId=named_id)
    hidden = crm.create("Lead", LastName="Hidden", Company="Co", Email=f"hidden.{unique}@example.test")
    pull.initial_import(connector)
    assert Prospect.objects.filter(bu=bu, crm_lead_id=mine).exists()
    assert not Prospect.objects.filter(bu=bu, crm_lead_id=hidden).exists()
    assert not Prospect.objects.filter(bu=bu, email=f"hidden.{unique}@example.test").exists()


def test_leads_and_contacts_sync_and_a_contacts_account_is_kept(connector, crm, unique):  # [R8]
    assert set(POLLED_OBJECTS) == {"Lead", "Contact"}
    account_id = crm.create("Account", Name=f"Account {unique}")
    contact_id = crm.create("Contact", LastName="Reader", Email=f"reader.{unique}@example.test",
                            AccountId=account_id)
    pull.initial_import(connector)
    p = Prospect.objects.get(bu=connector.bu, crm_contact_id=contact_id)
    assert p.crm_account_id == account_id  # Account: read, shown on the prospect
