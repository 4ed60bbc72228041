"""Scheduled reconciliation (issue #5): drift polling missed — a changed record, a new one, a deletion — is found by
comparing both sides per key range and repaired by ordinary sync ([R22], [R25], [R30]). Its own sandbox: the
reconciliation reads the whole org."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command

from loopline.connector.models import Connector, CrmLink, SyncRun, Watermark
from loopline.connector.sync import pull, reconcile
from loopline.prospects.models import Prospect

from .conftest import LOOPLINE_ID, CrmApp, make_connector, register_app
from .helpers import sync
from .sandbox import SandboxProcess

LEADS = 120


@pytest.fixture(scope="module")
def small_crm():
    sandbox = SandboxProcess.start(leads=LEADS, config={"custom_fields": {"Lead": [LOOPLINE_ID],
                                                                           "Contact": [LOOPLINE_ID]}})
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="module")
def small_app(small_crm) -> CrmApp:
    return register_app(small_crm, "Loopline reconcile tests")


@pytest.fixture
def synced(admin_access, small_crm, small_app) -> Connector:
    connector = make_connector(admin_access, small_crm, small_app)
    pull.initial_import(connector)
    sync(connector)
    return connector


def test_records_older_than_the_connector_are_left_to_the_initial_import(admin_access, small_crm, small_app, bu):
    connector = make_connector(admin_access, small_crm, small_app)
    report = reconcile.reconcile(connector)
    lead = next(o for o in report.objects if o.object_type == "Lead")
    assert lead.not_imported >= LEADS and lead.repaired == 0 and report.in_sync
    assert not Prospect.objects.filter(bu=bu).exists()  # never an implicit import


def _blind_polling(connector: Connector) -> None:
    """Polling misses whatever happens next: every watermark jumps a day ahead (a lost window)."""
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    Watermark.objects.filter(connector=connector).update(modstamp=ahead, recent_keys=[])


def test_in_sync_org_needs_no_repair(synced, small_crm):
    report = reconcile.reconcile(synced)
    assert report.in_sync, report.summary()
    lead = next(o for o in report.objects if o.object_type == "Lead")
    assert lead.crm_records == lead.links > 0 and lead.ranges_differing == 0 and lead.repaired == 0
    run = SyncRun.objects.filter(connector=synced, kind="reconcile").latest("started_at")
    assert "in sync" in run.note


def test_changes_polling_missed_are_found_and_repaired(synced, small_crm, bu):
    lead_id, other_id = [r["Id"] for r in small_crm.query("SELECT Id FROM Lead ORDER BY Id LIMIT 2")]
    gone = small_crm.query("SELECT Id FROM Lead ORDER BY Id DESC LIMIT 1")[0]["Id"]
    _blind_polling(synced)
    small_crm.update("Lead", lead_id, Title="Changed while nobody polled")
    new_id = small_crm.create("Lead", LastName="Late", Company="Co", Email="late.arrival@example.test")
    small_crm.delete("Lead", gone)
    sync(synced)  # the poll sees none of it
    p = Prospect.objects.get(bu=bu, crm_lead_id=lead_id)
    assert p.job_title != "Changed while nobody polled"
    assert not Prospect.objects.filter(bu=bu, email="late.arrival@example.test").exists()

    report = reconcile.reconcile(synced)
    lead = next(o for o in report.objects if o.object_type == "Lead")
    assert (lead.changed, lead.unlinked, lead.deleted, lead.not_visible) == (1, 1, 1, 0)
    assert 1 <= lead.ranges_differing <= 3 < lead.ranges  # only the ranges holding the three keys are compared
    p.refresh_from_db()
    assert p.job_title == "Changed while nobody polled"  # [R22] the missed change is applied
    assert Prospect.objects.get(bu=bu, email="late.arrival@example.test").crm_lead_id == new_id
    deleted = Prospect.objects.get(bu=bu, crm_lead_id=gone)
    assert deleted.is_deleted and deleted.crm_deleted  # [R30] the missed deletion takes the deletion path
    untouched = Prospect.objects.get(bu=bu, crm_lead_id=other_id)
    assert CrmLink.objects.filter(connector=synced, crm_id=other_id).count() == 1 and not untouched.is_deleted
    # [R25] idempotent: a second pass finds nothing left.
    again = reconcile.reconcile(synced)
    assert again.in_sync, again.summary()


def test_repairs_are_capped_per_run_and_the_cli_reports(synced, small_crm, bu, capsys):
    ids = [r["Id"] for r in small_crm.query("SELECT Id FROM Lead ORDER BY Id LIMIT 5")]
    _blind_polling(synced)
    for i in ids:
        small_crm.update("Lead", i, Title="Capped")
    first = reconcile.reconcile(synced, limit=3)
    lead = next(o for o in first.objects if o.object_type == "Lead")
    assert lead.repaired == 3 and lead.left_for_next_run == 2
    assert Prospect.objects.filter(bu=bu, crm_lead_id__in=ids, job_title="Capped").count() == 3
    call_command("connector", "reconcile", "--bu", bu.slug)
    out = capsys.readouterr().out
    assert "Lead:" in out and "2 changed" in out
    assert Prospect.objects.filter(bu=bu, crm_lead_id__in=ids, job_title="Capped").count() == 5
