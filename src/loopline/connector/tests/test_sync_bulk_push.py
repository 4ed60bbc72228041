"""Loopline → CRM through Bulk API 2.0 ingest jobs above the backlog threshold ([R23], [R24], [R25], [R26], [R27]),
against the session's crmsandbox."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db.models import Count
from django.utils import timezone

from loopline.connector.models import Connector, CrmLink, OutboxEntry, SyncError, SyncRun
from loopline.connector.sync import bulk, push
from loopline.connector.sync.push import external_id_value
from loopline.prospects import services as prospects
from loopline.prospects.models import Prospect

from .conftest import make_connector
from .helpers import drain_all, pending, sync

THRESHOLD = 50


@pytest.fixture
def bulk_connector(admin_access, crm, crm_app) -> Connector:
    return make_connector(admin_access, crm, crm_app, bulk_threshold=THRESHOLD)


def ingest_jobs(crm) -> dict[str, dict]:
    return {j["id"]: j for j in crm.request("GET", "jobs/ingest")["records"]}


def new_jobs(crm, before: dict[str, dict]) -> list[dict]:
    """The ingest jobs created since ``before``, with their full info (state, rows processed)."""
    return [crm.request("GET", f"jobs/ingest/{jid}") for jid in ingest_jobs(crm) if jid not in before]


def assigned(bu, user, n: int, tag: str, *, email: bool = True, **extra) -> list[Prospect]:
    out = []
    for i in range(n):
        data = {"first_name": f"F{i}", "last_name": f"{tag}-{i}", "company": "Bulk Co", **extra}
        if email:
            data["email"] = f"{tag.lower()}.{i}@example.test"
        p = prospects.create_prospect(bu, data)
        prospects.assign_prospect(p, user)
        out.append(p)
    return out


def crm_leads(crm, tag: str) -> list[dict]:
    return crm.query(f"SELECT Id, LastName, Title, Email, Loopline_Id__c FROM Lead WHERE LastName LIKE '{tag}%'")


def test_backlog_above_the_threshold_goes_through_one_ingest_job(bulk_connector, crm, bu, admin_user, unique):
    # [R23] 60 due entries > threshold 50: one upsert job (Lead, external id) instead of collections.
    tag = f"Bk{unique}"
    ps = assigned(bu, admin_user, 60, tag, job_title="Engineer")
    before = ingest_jobs(crm)
    assert push.backlog(bulk_connector) > THRESHOLD
    counters = push.drain(bulk_connector)
    assert counters.created == 60 and counters.failed == 0
    jobs = new_jobs(crm, before)
    assert len(jobs) == 1
    job = jobs[0]
    assert (job["object"], job["operation"], job["externalIdFieldName"]) == ("Lead", "upsert", "Loopline_Id__c")
    assert job["state"] == "JobComplete" and job["numberRecordsProcessed"] == 60
    run = SyncRun.objects.filter(connector=bulk_connector, kind="push").first()
    assert run.api_calls < 30  # describes, one email lookup, the job (create, upload, close, polls, two results)
    # Each record exists once in the CRM, with Loopline's values and its external id ([R25]).
    leads = {r["LastName"]: r for r in crm_leads(crm, tag)}
    assert len(leads) == 60
    for p in ps:
        p.refresh_from_db()
        lead = leads[p.last_name]
        assert p.crm_lead_id == lead["Id"]
        assert lead["Title"] == "Engineer" and lead["Email"] == p.email
        assert lead["Loopline_Id__c"] == external_id_value(bulk_connector, p.pk)
    links = CrmLink.objects.filter(connector=bulk_connector)
    assert links.count() == 60 and not links.filter(last_written_hash="").exists()
    assert pending(bulk_connector) == 0
    assert not OutboxEntry.objects.filter(connector=bulk_connector).exclude(status=OutboxEntry.Status.DONE).exists()

    # Updates of linked records: one update job by Id; the echo of our own writes does not come back ([R24]).
    for p in ps:
        prospects.update_prospect(p, {"job_title": "Director"})
    before = ingest_jobs(crm)
    counters = push.drain(bulk_connector)
    assert counters.updated == 60 and counters.failed == 0
    jobs = new_jobs(crm, before)
    assert [(j["object"], j["operation"], j["numberRecordsProcessed"]) for j in jobs] == [("Lead", "update", 60)]
    assert {r["Title"] for r in crm_leads(crm, tag)} == {"Director"}
    sync(bulk_connector)
    assert pending(bulk_connector) == 0
    assert Prospect.objects.filter(bu=bu, job_title="Director").count() == 60


def test_below_the_threshold_the_push_uses_collections(bulk_connector, crm, bu, admin_user, unique):  # [R23]
    tag = f"Sm{unique}"
    assigned(bu, admin_user, 10, tag)
    before = ingest_jobs(crm)
    assert drain_all(bulk_connector) == 10
    assert new_jobs(crm, before) == []
    assert len(crm_leads(crm, tag)) == 10


def test_a_row_the_crm_rejects_goes_to_the_error_queue_and_the_others_succeed(bulk_connector, crm, bu, admin_user,
                                                                             unique):  # [R26]
    # The sandbox's validation rule (Website must start with http) rejects one row of the job; Loopline's own
    # describe checks cannot know it, so only the CRM's failedResults (sf__Error) can report it.
    tag = f"Bd{unique}"
    good = assigned(bu, admin_user, 55, tag)
    bad = prospects.create_prospect(bu, {"email": f"bad.{unique}@example.test", "last_name": f"{tag}-bad",
                                         "company": "Bulk Co", "website": "example.com"})
    prospects.assign_prospect(bad, admin_user)
    before = ingest_jobs(crm)
    counters = push.drain(bulk_connector)
    assert counters.created == 55 and counters.failed == 1
    jobs = new_jobs(crm, before)
    assert len(jobs) == 1 and jobs[0]["numberRecordsFailed"] == 1
    error = SyncError.objects.get(connector=bulk_connector, prospect=bad)
    assert error.code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" and "http" in error.message
    assert error.direction == "to_crm" and error.status == "open" and error.fields == ["Website"]
    assert OutboxEntry.objects.get(prospect=bad).status == OutboxEntry.Status.FAILED
    bad.refresh_from_db()
    assert not bad.crm_lead_id
    assert Prospect.objects.filter(pk__in=[p.pk for p in good]).exclude(crm_lead_id="").count() == 55
    assert len(crm_leads(crm, tag)) == 55


def test_a_worker_killed_between_job_and_results_leaves_no_duplicate(bulk_connector, crm, bu, admin_user, unique,
                                                                    monkeypatch):  # [R25]
    # Half the prospects have no email, so only the external-id upsert (not the re-check by email) can find the
    # records the first job made.
    tag = f"Kl{unique}"
    ps = assigned(bu, admin_user, 30, tag) + assigned(bu, admin_user, 30, f"{tag}x", email=False)

    def killed(self, job_id, which):
        raise RuntimeError("worker killed")

    monkeypatch.setattr(bulk.BulkIngest, "results", killed)
    before = ingest_jobs(crm)
    with pytest.raises(RuntimeError, match="worker killed"):
        push.drain(bulk_connector)
    jobs = new_jobs(crm, before)
    assert len(jobs) == 1 and jobs[0]["state"] == "JobComplete"
    assert len(crm_leads(crm, tag)) == 60  # the CRM made the records ...
    assert not CrmLink.objects.filter(connector=bulk_connector).exists()  # ... and Loopline heard nothing back
    entries = OutboxEntry.objects.filter(connector=bulk_connector)
    assert entries.count() == 60 and not entries.exclude(status=OutboxEntry.Status.PENDING).exists()
    assert not entries.filter(locked_until__lte=timezone.now()).exists()  # still leased: nobody else takes them
    assert push.drain(bulk_connector).note == "the outbox is empty"

    monkeypatch.undo()
    entries.update(locked_until=timezone.now() - dt.timedelta(seconds=1))  # the lease runs out
    drain_all(bulk_connector)
    leads = crm_leads(crm, tag)
    assert len(leads) == 60  # nothing created twice
    by_id = {r["Id"]: r for r in leads}
    for p in ps:
        p.refresh_from_db()
        assert p.crm_lead_id in by_id
        assert by_id[p.crm_lead_id]["Loopline_Id__c"] == external_id_value(bulk_connector, p.pk)
    assert Prospect.objects.filter(pk__in=[p.pk for p in ps]).values("crm_lead_id").distinct().count() == 60
    links = CrmLink.objects.filter(connector=bulk_connector)
    assert links.count() == 60 and not links.values("prospect_id").annotate(n=Count("id")).filter(n__gt=1)
    assert pending(bulk_connector) == 0
    assert not SyncError.objects.filter(connector=bulk_connector).exists()


def test_bulk_push_waits_when_the_api_budget_is_at_90_percent(bulk_connector, crm, bu, admin_user, unique):  # [R27]
    tag = f"Bg{unique}"
    assigned(bu, admin_user, 55, tag)
    from loopline.connector.engine.budget import RollingCounter

    # 2,800 of the connector's 3,000-call share (20% of 15,000) used: 93%, above the 90% mark.
    usage = {"used": 9_000, "max": 15_000, "read_at": timezone.now().isoformat(),
             "counter": RollingCounter().add(timezone.now(), 2_800).as_dict()}
    Connector.objects.filter(pk=bulk_connector.pk).update(api_usage=usage)
    bulk_connector.refresh_from_db()
    before = ingest_jobs(crm)
    counters = push.drain(bulk_connector)
    assert counters.note.startswith("paused: bulk push deferred")
    assert new_jobs(crm, before) == [] and crm_leads(crm, tag) == []
    assert pending(bulk_connector) == 55  # nothing lost, nothing claimed
    assert not OutboxEntry.objects.filter(connector=bulk_connector, locked_until__gt=timezone.now()).exists()


def test_a_job_the_crm_fails_as_a_whole_is_sent_through_collections(bulk_connector, crm, bu, admin_user, unique,
                                                                    monkeypatch):  # [R23], [R26]
    # An upload the CRM cannot read (unknown column) fails the whole job: no row result to map back, so its writes
    # go through sObject Collections, which answer per record.
    tag = f"Fl{unique}"
    ps = assigned(bu, admin_user, 55, tag)
    real_csv = bulk.IngestJob.csv
    monkeypatch.setattr(bulk.IngestJob, "csv", lambda self: "Bogus__c," + real_csv(self))
    before = ingest_jobs(crm)
    counters = push.drain(bulk_connector)
    jobs = new_jobs(crm, before)
    assert len(jobs) == 1 and jobs[0]["state"] == "Failed" and "Bogus__c" in jobs[0]["errorMessage"]
    assert counters.created == 55 and counters.failed == 0
    assert len(crm_leads(crm, tag)) == 55
    assert Prospect.objects.filter(pk__in=[p.pk for p in ps]).exclude(crm_lead_id="").count() == 55
    assert pending(bulk_connector) == 0
