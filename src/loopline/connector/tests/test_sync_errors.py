"""Error queue [R20], [R26]; transient faults and API limits [R25], [R27]."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.utils import timezone

from loopline.connector.models import Connector, CrmDescribe, FieldMapping, OutboxEntry, SyncError
from loopline.connector.salesforce.client import CrmApiError
from loopline.connector.sync import errors, pull
from loopline.prospects import services as prospects
from loopline.prospects.models import CustomField, Prospect

from .helpers import drain_all, pending, sync


def _region_mapping(connector, bu):
    CustomField.objects.create(bu=bu, name="Region", api_name="region")
    FieldMapping.objects.create(connector=connector, loopline_field="custom.region", lead_field="Region__c",
                                behaviour="use_loopline")


def test_restricted_picklist_value_is_queued_not_sent_then_retry_after_fix(connector, crm, bu, admin_access,
                                                                           admin_user, unique):  # [R20], [R26]
    _region_mapping(connector, bu)
    p = prospects.create_prospect(bu, {"email": f"pick.{unique}@example.test", "last_name": "Pick",
                                       "custom.region": "APAC"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    assert not p.crm_lead_id  # not sent blind
    error = SyncError.objects.get(connector=connector, prospect=p)
    assert error.code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" and "APAC" in error.message
    assert error.direction == "to_crm" and error.status == "open" and not error.transient
    # The admin fixes the value: the change re-opens the push and resolves the error.
    prospects.update_prospect(p, {"custom.region": "EMEA"})
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id and crm.get("Lead", p.crm_lead_id)["Region__c"] == "EMEA"
    error.refresh_from_db()
    assert error.status == "resolved"


def test_required_field_from_describe_and_crm_validation_rule(connector, crm, bu, admin_access, admin_user,
                                                              unique):  # [R20], [R26]
    # An org where Industry is required on Lead (describe says so): caught before sending.
    from loopline.connector.sync.context import SyncContext

    SyncContext.load(connector).describe("Lead")
    row = CrmDescribe.objects.get(connector=connector, object_type="Lead")
    for f in row.data["fields"]:
        if f["name"] == "Industry":
            f["nillable"], f["defaultedOnCreate"] = False, False
    row.save()
    p = prospects.create_prospect(bu, {"email": f"req.{unique}@example.test", "last_name": "Req"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    error = SyncError.objects.get(connector=connector, prospect=p)
    assert error.code == "REQUIRED_FIELD_MISSING" and error.fields == ["Industry"]
    # The CRM's own validation rule (website format) answers FIELD_CUSTOM_VALIDATION_EXCEPTION per record.
    q = prospects.create_prospect(bu, {"email": f"web.{unique}@example.test", "last_name": "Web",
                                       "industry": "Energy", "website": "example.com"})
    ok = prospects.create_prospect(bu, {"email": f"ok.{unique}@example.test", "last_name": "Ok",
                                        "industry": "Energy"})
    prospects.assign_prospect(q, admin_user)
    prospects.assign_prospect(ok, admin_user)
    drain_all(connector)
    q.refresh_from_db()
    ok.refresh_from_db()
    assert ok.crm_lead_id  # one bad record never blocks the others [R23]
    bad = SyncError.objects.get(connector=connector, prospect=q)
    assert bad.code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" and "http" in bad.message
    # Retry without a fix fails again (attempts grow); after the fix, retry succeeds.
    errors.retry_one(admin_access, bad)
    drain_all(connector)
    bad.refresh_from_db()
    assert bad.attempts == 2 and bad.status == "open"
    prospects.update_prospect(q, {"website": "https://example.com"})
    errors.retry_all(admin_access, connector)
    drain_all(connector)
    q.refresh_from_db()
    assert q.crm_lead_id
    bad.refresh_from_db()
    assert bad.status == "resolved"
    errors.dismiss(admin_access, error)
    error.refresh_from_db()
    assert error.status == "dismissed"


def test_digest_is_sent_hourly_and_deduplicated(connector, bu, admin_user, mailoutbox):  # [R26]
    for i in range(3):
        errors.record(connector, direction="to_crm", code="STRING_TOO_LONG", message="Title: too long",
                      prospect_id=prospects.create_prospect(bu, {"email": f"d{i}@x.test"}).pk)
    assert errors.send_digest(connector) == 3
    assert len(mailoutbox) == 1 and "3 × STRING_TOO_LONG" in mailoutbox[0].body
    errors.record(connector, direction="to_crm", code="X", message="y",
                  prospect_id=prospects.create_prospect(bu, {"email": "d9@x.test"}).pk)
    assert errors.send_digest(connector) == 0  # at most one an hour
    later = timezone.now() + dt.timedelta(hours=1, minutes=1)
    assert errors.send_digest(connector, now=later) == 1


def test_transient_faults_converge_without_duplicates(connector, crm, bu, admin_user, unique):  # [R25], [R26]
    ps = []
    for i in range(40):
        p = prospects.create_prospect(bu, {"email": f"flaky{i}.{unique}@example.test", "last_name": f"F{i}"})
        prospects.assign_prospect(p, admin_user)
        ps.append(p)
    crm_emails = [f"crmflaky{i}.{unique}@example.test" for i in range(10)]
    for email in crm_emails:
        crm.create("Lead", LastName="Flaky", Company="Co", Email=email)
    crm.faults(error_rates={"UNABLE_TO_LOCK_ROW": 0.05, "SERVER_UNAVAILABLE": 0.05}, seed=7)
    for _ in range(30):
        OutboxEntry.objects.filter(status="pending").update(next_run_at=timezone.now())
        try:
            sync(connector)
        except CrmApiError:
            continue
        if pending(connector) == 0 and Prospect.objects.filter(bu=bu, email__in=crm_emails).count() == 10:
            break
    crm.faults(reset=True)
    assert pending(connector) == 0
    for p in ps:
        assert len(crm.query(f"SELECT Id FROM Lead WHERE Email = '{p.email}'")) == 1
    assert Prospect.objects.filter(bu=bu, email__in=crm_emails).count() == 10
    assert not SyncError.objects.filter(connector=connector, status__in=errors.LIVE, direction="to_crm").exists()


def test_request_limit_exceeded_pauses_without_losing_changes(connector, crm, bu, admin_user, unique):  # [R27]
    from loopline.connector.sync.worker import ConnectorWorker

    p = prospects.create_prospect(bu, {"email": f"limit.{unique}@example.test", "last_name": "Limit"})
    prospects.assign_prospect(p, admin_user)
    crm.faults(daily_api_limit=1)
    worker = ConnectorWorker([connector.pk])
    worker.run_once()
    connector.refresh_from_db()
    assert connector.status == Connector.Status.ACTIVE
    assert connector.paused_until and connector.paused_until > timezone.now()
    assert "API limit is exhausted" in connector.last_error  # [R28] the status page says why
    assert pending(connector) == 1  # nothing lost
    assert worker.run_once() == {"polled": 0, "pulled": 0, "pushed": 0}  # waits
    # The window rolls.
    crm.faults(reset=True, reset_usage=True)
    Connector.objects.filter(pk=connector.pk).update(paused_until=timezone.now() - dt.timedelta(seconds=1))
    OutboxEntry.objects.filter(status="pending").update(next_run_at=timezone.now())
    worker = ConnectorWorker([connector.pk])
    worker.run_once()
    p.refresh_from_db()
    assert p.crm_lead_id and pending(connector) == 0
    assert len(crm.query(f"SELECT Id FROM Lead WHERE Email = '{p.email}'")) == 1
    connector.refresh_from_db()
    assert connector.paused_until is None and connector.last_error == ""  # the pause is over: no stale message


def test_budget_slows_polling_at_70_percent(connector):  # [R27]
    from loopline.connector.sync import budget

    Connector.objects.filter(pk=connector.pk).update(api_usage={"used": 100, "max": 1000, "counter": {}})
    connector.refresh_from_db()
    base = pull.next_interval(connector, [0])
    budget.record_calls(connector, 150, 100, 1000)  # 150 of a 200-call share = 75%
    connector.refresh_from_db()
    assert budget.decision(connector).mode.value == "slow"
    assert pull.next_interval(connector, [0]) >= base * 2


@pytest.fixture
def mailoutbox(settings):
    from django.core import mail

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend", "OPTIONS": {}}}
    mail.outbox = []
    return mail.outbox


def test_a_failing_push_backs_off_briefly_without_holding_up_polling(connector, crm, monkeypatch):  # [R22], [R26]
    from loopline.connector.salesforce.client import CrmApiError
    from loopline.connector.sync import push
    from loopline.connector.sync.worker import ConnectorWorker

    def unavailable(*args, **kwargs):
        raise CrmApiError("SERVER_UNAVAILABLE", "Server temporarily unavailable", 503)

    monkeypatch.setattr(push, "drain", unavailable)
    worker = ConnectorWorker([connector.pk])
    assert worker.run_once()["polled"] == 1
    assert worker.failures[(connector.pk, "push")] == 1
    first_wait = worker.not_before[(connector.pk, "push")] - time.monotonic()
    assert 0 < first_wait <= 1.0  # a single transient failure waits a second, not minutes
    lead_id = crm.create("Lead", LastName="Polled", Company="Co", Email="polled.while.push.waits@example.test")
    worker.next_poll[connector.pk] = 0  # the next poll is due; the push is still backing off
    assert worker.run_once()["pulled"] >= 1
    assert Prospect.objects.filter(crm_lead_id=lead_id).exists()
    worker.not_before[(connector.pk, "push")] = 0
    worker.run_once()
    assert worker.failures[(connector.pk, "push")] == 2  # repeated failures wait longer
    assert worker.not_before[(connector.pk, "push")] - time.monotonic() > first_wait
