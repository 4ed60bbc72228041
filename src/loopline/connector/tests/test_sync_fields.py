"""Field behaviours end to end ([R16]–[R19]) and echo suppression ([R24])."""

from __future__ import annotations

import time

from loopline.connector.models import FieldMapping, OutboxEntry
from loopline.prospects import services as prospects
from loopline.prospects.models import Prospect

from .helpers import pending, sync


def _linked_pair(connector, crm, bu, unique, **lead):
    email = f"f.{unique}@example.test"
    lead_id = crm.create("Lead", LastName="Field", Company="Co", Email=email, **lead)
    sync(connector)
    return Prospect.objects.get(bu=bu, email=email), lead_id


def _behaviour(connector, field, behaviour):
    FieldMapping.objects.filter(connector=connector, loopline_field=field).update(behaviour=behaviour)


def test_use_loopline_value_wins_a_real_conflict(connector, crm, bu, unique):  # [R16]
    _behaviour(connector, "job_title", "use_loopline")
    p, lead_id = _linked_pair(connector, crm, bu, unique, Title="Start")
    crm.update("Lead", lead_id, Title="From CRM")
    prospects.update_prospect(p, {"job_title": "From Loopline"})
    sync(connector)
    p.refresh_from_db()
    assert p.job_title == "From Loopline"
    assert crm.get("Lead", lead_id)["Title"] == "From Loopline"


def test_use_crm_value_wins_a_real_conflict(connector, crm, bu, unique):  # [R16]
    _behaviour(connector, "job_title", "use_crm")
    p, lead_id = _linked_pair(connector, crm, bu, unique, Title="Start")
    prospects.update_prospect(p, {"job_title": "From Loopline"})
    crm.update("Lead", lead_id, Title="From CRM")
    sync(connector, rounds=2)
    p.refresh_from_db()
    assert p.job_title == "From CRM"
    assert crm.get("Lead", lead_id)["Title"] == "From CRM"


def test_one_sided_change_flows_whatever_the_behaviour(connector, crm, bu, unique):  # design note 2
    _behaviour(connector, "job_title", "use_crm")
    p, lead_id = _linked_pair(connector, crm, bu, unique, Title="Start")
    prospects.update_prospect(p, {"job_title": "Only Loopline changed"})
    sync(connector)
    assert crm.get("Lead", lead_id)["Title"] == "Only Loopline changed"


def test_most_recent_record_wins(connector, crm, bu, unique):  # [R16]
    _behaviour(connector, "job_title", "most_recent_record")
    p, lead_id = _linked_pair(connector, crm, bu, unique, Title="Start")
    crm.update("Lead", lead_id, Title="Older CRM change")
    time.sleep(0.05)
    prospects.update_prospect(p, {"job_title": "Newer Loopline change"})
    sync(connector)
    assert crm.get("Lead", lead_id)["Title"] == "Newer Loopline change"
    prospects.update_prospect(Prospect.objects.get(pk=p.pk), {"job_title": "Older Loopline change"})
    time.sleep(0.05)
    crm.update("Lead", lead_id, Title="Newer CRM change")
    sync(connector)
    p.refresh_from_db()
    assert p.job_title == "Newer CRM change"
    assert crm.get("Lead", lead_id)["Title"] == "Newer CRM change"


def test_opt_out_uses_the_most_recent_field(connector, crm, bu, unique):  # [R16] default for opted_out
    from loopline.connector.models import CrmLink

    p, lead_id = _linked_pair(connector, crm, bu, unique)
    # One-sided changes flow both ways.
    prospects.update_prospect(p, {"opted_out": True})
    sync(connector)
    assert crm.get("Lead", lead_id)["HasOptedOutOfEmail"] is True
    crm.update("Lead", lead_id, HasOptedOutOfEmail=False)
    sync(connector)
    p.refresh_from_db()
    assert p.opted_out is False
    # A real conflict (no agreed baseline): the side whose field changed last wins.
    CrmLink.objects.filter(crm_id=lead_id).update(baseline={})
    prospects.update_prospect(Prospect.objects.get(pk=p.pk), {"opted_out": True})
    time.sleep(0.05)
    crm.update("Lead", lead_id, Title="unrelated change")  # SystemModstamp moves; the CRM's opt-out is older?
    sync(connector)
    p.refresh_from_db()
    # No field history in the sandbox → the CRM field time is SystemModstamp, which is newer: the CRM wins.
    assert p.opted_out is False and crm.get("Lead", lead_id)["HasOptedOutOfEmail"] is False
    CrmLink.objects.filter(crm_id=lead_id).update(baseline={})
    crm.update("Lead", lead_id, Title="older change")
    time.sleep(0.05)
    prospects.update_prospect(Prospect.objects.get(pk=p.pk), {"opted_out": True})
    sync(connector)
    assert crm.get("Lead", lead_id)["HasOptedOutOfEmail"] is True  # Loopline's field changed last


def test_blank_never_overwrites_a_filled_value(connector, crm, bu, unique):  # [R17]
    p, lead_id = _linked_pair(connector, crm, bu, unique, Title="Keep me", Phone="+1 555 0100")
    assert p.job_title == "Keep me"
    crm.update("Lead", lead_id, Title=None)
    sync(connector, rounds=2)
    p.refresh_from_db()
    assert p.job_title == "Keep me"
    assert crm.get("Lead", lead_id)["Title"] == "Keep me"  # filled back from Loopline


def test_crm_email_change_updates_the_prospect(connector, crm, bu, unique):  # [R19] setting on (default)
    p, lead_id = _linked_pair(connector, crm, bu, unique)
    new_email = f"changed.{unique}@example.test"
    crm.update("Lead", lead_id, Email=new_email)
    sync(connector)
    p.refresh_from_db()
    assert p.email == new_email and p.crm_lead_id == lead_id


def test_crm_email_change_unlinks_when_the_setting_is_off(admin_access, crm, crm_app, bu, unique):  # [R19]
    from .conftest import make_connector

    connector = make_connector(admin_access, crm, crm_app, update_email_from_crm=False)
    p, lead_id = _linked_pair(connector, crm, bu, unique)
    old_email = p.email
    crm.update("Lead", lead_id, Email=f"other.{unique}@example.test")
    sync(connector)
    p.refresh_from_db()
    assert p.email == old_email and p.crm_lead_id == ""


def test_our_writes_do_not_come_back_and_nothing_ping_pongs(connector, crm, bu, unique):  # [R24]
    p, lead_id = _linked_pair(connector, crm, bu, unique, Title="Start")
    prospects.update_prospect(p, {"job_title": "Pushed", "city": "Lyon"})
    sync(connector)
    assert crm.get("Lead", lead_id)["Title"] == "Pushed"
    before = crm.request("GET", "/_sandbox/changes", params={"object": "Lead", "limit": 10000})["changes"]
    ours = [c for c in before if c["recordId"] == lead_id and c.get("client") == "loopline"]
    updated_before = p.updated_at
    for _ in range(3):
        sync(connector)
    after = crm.request("GET", "/_sandbox/changes", params={"object": "Lead", "limit": 10000})["changes"]
    assert len([c for c in after if c["recordId"] == lead_id and c.get("client") == "loopline"]) == len(ours)
    p.refresh_from_db()
    assert p.updated_at == updated_before or p.job_title == "Pushed"
    assert pending(connector) == 0
    assert not OutboxEntry.objects.filter(prospect=p, reason="conflict", status="pending").exists()
