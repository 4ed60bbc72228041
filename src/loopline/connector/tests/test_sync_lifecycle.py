"""Pause/resume [R2], [R4]; manual sync [R3]; conversion [R13]; deletion [R31]; matching modes [R9]; [R10]."""

from __future__ import annotations

import json

from django.test import RequestFactory

from loopline.connector import services
from loopline.connector.models import Connector, CrmLink
from loopline.connector.public_views import send_to_loopline
from loopline.connector.sync import manual
from loopline.connector.sync.worker import ConnectorWorker
from loopline.prospects import services as prospects
from loopline.prospects.models import Prospect

from .helpers import drain_all, pending, sync


def test_paused_connector_syncs_nothing_and_catches_up_on_resume(connector, crm, bu, admin_access, admin_user,
                                                                unique):  # [R2], [R4]
    services.pause(admin_access, connector)
    email = f"paused.{unique}@example.test"
    crm.create("Lead", LastName="While", Company="Paused", Email=email)
    p = prospects.create_prospect(bu, {"email": f"ll.{unique}@example.test", "last_name": "Local"})
    prospects.assign_prospect(p, admin_user)
    worker = ConnectorWorker([connector.pk])
    assert worker.run_once() == {"polled": 0, "pulled": 0, "pushed": 0}
    assert not Prospect.objects.filter(bu=bu, email=email).exists()
    assert pending(connector) == 1  # queued while paused, not lost
    services.resume(admin_access, connector)
    worker.run_once()
    assert Prospect.objects.filter(bu=bu, email=email).exists()
    p.refresh_from_db()
    assert p.crm_lead_id and pending(connector) == 0


def test_manual_sync_works_while_paused(connector, crm, bu, admin_access, admin_user, unique):  # [R3]
    services.pause(admin_access, connector)
    p = prospects.create_prospect(bu, {"email": f"manual.{unique}@example.test", "last_name": "Hand"})
    prospects.assign_prospect(p, admin_user)
    result = manual.sync_prospect_now(admin_access, p)
    p.refresh_from_db()
    assert result.ok and p.crm_lead_id
    crm.update("Lead", p.crm_lead_id, Title="Set in CRM")
    manual.sync_prospect_now(admin_access, p)
    p.refresh_from_db()
    assert p.job_title == "Set in CRM"


def test_send_to_loopline_endpoint(connector, crm, bu, admin_access, unique):  # [R3]
    services.pause(admin_access, connector)
    services.update_settings(admin_access, connector, {"auto_create_prospects": False})
    lead_id = crm.create("Lead", LastName="Sent", Company="Co", Email=f"sent.{unique}@example.test")
    factory = RequestFactory()
    bad = factory.post(f"/connector/{bu.slug}/send-to-loopline", data=json.dumps({"id": lead_id}),
                       content_type="application/json", HTTP_X_LOOPLINE_TOKEN="wrong")
    assert send_to_loopline(bad, bu.slug).status_code == 403
    token = manual.send_to_loopline_token(connector)
    req = factory.post(f"/connector/{bu.slug}/send-to-loopline", data=json.dumps({"id": lead_id}),
                       content_type="application/json", HTTP_X_LOOPLINE_TOKEN=token)
    response = send_to_loopline(req, bu.slug)
    assert response.status_code == 200, response.content
    p = Prospect.objects.get(pk=json.loads(response.content)["prospect_id"])
    assert p.crm_lead_id == lead_id and p.last_name == "Sent"
    junk = factory.post(f"/connector/{bu.slug}/send-to-loopline", data=json.dumps({"id": "nope"}),
                        content_type="application/json", HTTP_X_LOOPLINE_TOKEN=token)
    assert send_to_loopline(junk, bu.slug).status_code == 400


def test_auto_create_off_and_no_email_are_skipped_and_counted(admin_access, crm, crm_app, bu, unique):  # [R10]
    from loopline.connector.models import SyncRun

    from .conftest import make_connector

    connector = make_connector(admin_access, crm, crm_app)
    lead_id = crm.create("Lead", LastName="NoMail", Company="Co")
    sync(connector)
    run = SyncRun.objects.filter(connector=connector, kind="pull").order_by("-id").first()
    assert run.counters["skipped"].get("no_email", 0) >= 1
    crm.update("Lead", lead_id, Email=f"later.{unique}@example.test")  # created once it has an email
    sync(connector)
    assert Prospect.objects.filter(bu=bu, crm_lead_id=lead_id).exists()
    services.update_settings(admin_access, connector, {"auto_create_prospects": False})
    crm.create("Lead", LastName="Off", Company="Co", Email=f"off.{unique}@example.test")
    sync(connector)
    assert not Prospect.objects.filter(bu=bu, email=f"off.{unique}@example.test").exists()


def test_converted_lead_follows_the_contact(connector, crm, bu, unique):  # [R13]
    email = f"conv.{unique}@example.test"
    lead_id = crm.create("Lead", LastName="Conv", Company="ConvCo", Email=email)
    sync(connector)
    p = Prospect.objects.get(bu=bu, email=email)
    converted = crm.request("POST", "/_sandbox/convert-lead", json={"leadId": lead_id})
    sync(connector)
    p.refresh_from_db()
    assert p.crm_contact_id == converted["contactId"] and p.crm_lead_id == lead_id
    prospects.update_prospect(p, {"job_title": "After conversion"})
    sync(connector)
    assert crm.get("Contact", converted["contactId"])["Title"] == "After conversion"
    assert Prospect.objects.filter(bu=bu, email=email).count() == 1


def test_deleted_in_crm_goes_to_recycle_bin_and_is_never_recreated(connector, crm, bu, admin_access, admin_user,
                                                                   unique):  # [R31]
    email = f"del.{unique}@example.test"
    lead_id = crm.create("Lead", LastName="Del", Company="Co", Email=email)
    sync(connector)
    p = Prospect.objects.get(bu=bu, email=email)
    crm.delete("Lead", lead_id)
    sync(connector)
    p.refresh_from_db()
    assert p.is_deleted and p.crm_deleted
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    assert len(crm.query(f"SELECT Id FROM Lead WHERE Email = '{email}'")) == 0
    result = manual.sync_prospect_now(admin_access, p)
    assert not result.ok and "deleted in the crm" in result.message.lower()
    crm.request("POST", "/_sandbox/undelete", json={"ids": [lead_id]})
    sync(connector)
    p.refresh_from_db()
    assert not p.is_deleted and not p.crm_deleted


def test_crm_id_mode_creates_a_second_prospect_with_the_same_email(admin_access, crm, crm_app, bu, unique):  # [R9]
    from .conftest import make_connector

    bu.allow_duplicate_emails = True
    bu.save()
    connector = make_connector(admin_access, crm, crm_app, match_by_email_when_no_crm_id=False)
    email = f"dup.{unique}@example.test"
    first = crm.create("Lead", LastName="One", Company="Co", Email=email)
    second = crm.create("Contact", LastName="Two", Email=email)
    sync(connector)
    ps = Prospect.objects.filter(bu=bu, email=email)
    assert ps.count() == 2
    assert {p.crm_lead_id or p.crm_contact_id for p in ps} == {first, second}
    crm.update("Lead", first, Title="Only the lead's prospect")
    sync(connector)
    assert Prospect.objects.get(bu=bu, crm_lead_id=first).job_title == "Only the lead's prospect"
    assert Prospect.objects.get(bu=bu, crm_contact_id=second).job_title == ""


def test_wrong_consumer_key_sets_error_status_without_crashing(connector, crm, unique):  # [R6]
    Connector.objects.filter(pk=connector.pk).update(consumer_key="not-a-key")
    worker = ConnectorWorker([connector.pk])
    worker.run_once()
    connector.refresh_from_db()
    assert connector.status == Connector.Status.ERROR
    assert "refused" in connector.last_error
    assert worker.run_once() == {"polled": 0, "pulled": 0, "pushed": 0}  # skipped, no crash loop
    assert CrmLink.objects.filter(connector=connector).count() == 0


def test_status_summary_and_the_command(connector, crm, bu, admin_user, unique):  # [R28], [R29]
    from io import StringIO

    from django.core.management import call_command

    from loopline.connector.selectors import status_summary

    p = prospects.create_prospect(bu, {"email": f"status.{unique}@example.test", "last_name": "Status"})
    prospects.assign_prospect(p, admin_user)
    sync(connector)
    summary = status_summary(connector)
    assert summary["state"] == "active" and summary["version"] == 2
    assert summary["connector_user"] == crm.integration_username
    assert set(summary["last_successful_poll"]) == {"Lead", "Contact", "CampaignMember", "Opportunity",
                                                    "OpportunityContactRole"}  # [R38], [R40] poll along
    assert summary["outbox"]["backlog"] == 0 and summary["api"]["calls_24h"] > 0
    assert summary["synced"]["last_hour"]["created"] >= 1
    assert summary["latency"]["loopline_to_crm"]["samples"] >= 1
    assert summary["send_to_loopline"]["path"] == f"/connector/{bu.slug}/send-to-loopline"
    json.dumps(summary)  # JSON-friendly for the status page and the CLI
    out = StringIO()
    call_command("connector", "status", "--bu", bu.slug, stdout=out)
    assert "State:" in out.getvalue() and "Outbox:" in out.getvalue()
    out = StringIO()
    call_command("connector", "worker", "--once", "--connector", str(connector.pk), stdout=out)
    assert json.loads(out.getvalue())["polled"] == 1


def test_scale_mode_tick_polls_once_per_interval_and_drains(connector, crm, bu, admin_user, unique):
    # Celery mode: several workers may tick at once; the watermark compare-and-set lets one of them poll.
    from loopline.connector.sync.worker import claim_poll, sync_tick

    email = f"tick.{unique}@example.test"
    crm.create("Lead", LastName="Tick", Company="Co", Email=email)
    p = prospects.create_prospect(bu, {"email": f"tock.{unique}@example.test", "last_name": "Tock"})
    prospects.assign_prospect(p, admin_user)
    totals = sync_tick()
    # The shared sandbox holds other tests' recent records too: their pulls may legitimately queue pushes (a merge's
    # survivor, say), so count this test's own create rather than every push.
    assert totals["polled"] == 1 and totals["pushed"] >= 1
    assert Prospect.objects.filter(bu=bu, email=email).exists()
    p.refresh_from_db()
    assert p.crm_lead_id and crm.get("Lead", p.crm_lead_id)["LastName"] == "Tock"
    assert not claim_poll(connector, 5.0)  # polled just now: a second worker does not poll again
    assert sync_tick()["polled"] == 0
