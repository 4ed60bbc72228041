"""The initial export: prospects that already exist in Loopline, sent to the CRM once ([R5], [R11], [R15], [R23],
[R25], [R31]), against the session's crmsandbox. Prospects made before the connector exists have no outbox entry,
like the prospects of a BU that connects its CRM after years of use."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.urls import reverse
from django.utils import timezone

from loopline.conftest import PASSWORD
from loopline.connector import initial_import
from loopline.connector.initial_import import (
    EXPORT_KIND,
    EXPORT_REASON,
    run_initial_export,
    start_initial_export,
)
from loopline.connector.models import Connector, CrmLink, OutboxEntry
from loopline.platform.models import AuditLog, Job
from loopline.prospects import services as prospects
from loopline.prospects.models import Prospect

from .conftest import make_connector
from .helpers import drain_all, pending


def prospect(bu, tag: str, name: str, *, owner=None, **extra) -> Prospect:
    p = prospects.create_prospect(bu, {"first_name": "Ex", "last_name": f"{tag}-{name}", "company": "Export Co",
                                       "email": f"{tag.lower()}.{name}@example.test", **extra})
    if owner is not None:
        prospects.assign_prospect(p, owner)
    return p


def export_once(access, connector: Connector) -> Job:
    """Start the export, run its task, drain the outbox, run the task's next tick: the export finishes."""
    job = start_initial_export(access, connector)
    run_initial_export.call(connector_id=connector.pk, job_id=job.pk)
    drain_all(connector)
    job.refresh_from_db()
    if not job.is_finished:
        run_initial_export.call(connector_id=connector.pk, job_id=job.pk, tick=job.params["tick"])
    job.refresh_from_db()
    return job


def queued_prospects(connector: Connector, job: Job) -> list[int]:
    return sorted(initial_import.export_entries(connector, job).values_list("prospect_id", flat=True))


def crm_leads(crm, tag: str) -> list[dict]:
    return crm.query(f"SELECT Id, Email, OwnerId FROM Lead WHERE LastName LIKE '{tag}-%'")


def test_existing_prospects_reach_the_crm_once(admin_access, admin_user, crm, crm_app, bu, unique):
    tag = f"Ex{unique}"
    assigned = [prospect(bu, tag, f"a{i}", owner=admin_user) for i in range(3)]
    matched = prospect(bu, tag, "matched")  # unassigned, the CRM has a lead with its email
    lead_id = crm.create("Lead", LastName=f"{tag}-crm", Company="CRM Co", Email=matched.email)
    lonely = prospect(bu, tag, "lonely")  # unassigned, no CRM record: skipped [R11]
    do_not_sync = prospect(bu, tag, "dns", owner=admin_user)
    recycled = prospect(bu, tag, "bin", owner=admin_user)
    crm_deleted = prospect(bu, tag, "gone", owner=admin_user)
    Prospect.objects.filter(pk=do_not_sync.pk).update(do_not_sync=True)  # [R15]
    Prospect.objects.filter(pk=recycled.pk).update(is_deleted=True)
    Prospect.objects.filter(pk=crm_deleted.pk).update(is_deleted=True, crm_deleted=True)  # [R31]
    connector = make_connector(admin_access, crm, crm_app)
    linked = prospect(bu, tag, "linked", owner=admin_user)  # made while connected: the ordinary push sends it
    drain_all(connector)
    assert CrmLink.objects.filter(connector=connector, prospect=linked).exists() and pending(connector) == 0

    job = start_initial_export(admin_access, connector)
    run_initial_export.call(connector_id=connector.pk, job_id=job.pk)
    job.refresh_from_db()
    # Only the eligible prospects are queued, one entry each, with all fields; nothing is sent by the export itself.
    assert queued_prospects(connector, job) == sorted([p.pk for p in assigned] + [matched.pk, lonely.pk])
    assert all(e.changed_fields == ["*"] and e.reason == EXPORT_REASON
               for e in initial_import.export_entries(connector, job))
    assert job.status == Job.Status.RUNNING and job.total == 5 and job.params["queued_all"]
    assert len(crm_leads(crm, tag)) == 2  # the CRM's own lead and the one the ordinary push made

    drain_all(connector)
    run_initial_export.call(connector_id=connector.pk, job_id=job.pk, tick=job.params["tick"])
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result == {"queued": 5, "already_queued": 0, "created": 3, "linked": 1, "skipped": 1, "failed": 0}
    assert (job.done, job.failed, job.percent) == (5, 0, 100)

    leads = crm_leads(crm, tag)
    by_email = {r["Email"]: r["Id"] for r in leads}
    assert len(leads) == len(by_email) == 5  # the CRM's own lead, 3 created, the one made while connected
    for p in assigned:
        p.refresh_from_db()
        assert p.crm_lead_id == by_email[p.email]
    matched.refresh_from_db()
    assert matched.crm_lead_id == lead_id  # linked, not created [R11]
    for p in (lonely, do_not_sync, recycled, crm_deleted):
        assert not CrmLink.objects.filter(prospect=p).exists()
        assert p.email not in by_email

    # Again: only the skipped prospect is still eligible; nothing is created twice [R25].
    again = export_once(admin_access, connector)
    assert again.pk != job.pk and again.status == Job.Status.SUCCEEDED
    assert queued_prospects(connector, again) == [lonely.pk]
    assert again.result == {"queued": 1, "already_queued": 0, "created": 0, "linked": 0, "skipped": 1, "failed": 0}
    assert len(crm_leads(crm, tag)) == 5
    assert AuditLog.objects.filter(action="connector.initial_export", bu=bu).count() == 2


def test_a_running_export_is_returned_and_pending_prospects_are_left_to_their_entry(
        admin_access, admin_user, crm, crm_app, bu, unique):
    tag = f"Ep{unique}"
    old = [prospect(bu, tag, f"o{i}", owner=admin_user) for i in range(2)]
    connector = make_connector(admin_access, crm, crm_app)
    fresh = prospect(bu, tag, "fresh", owner=admin_user)  # its creation is waiting in the outbox
    assert pending(connector) == 1
    job = start_initial_export(admin_access, connector)
    assert start_initial_export(admin_access, connector) == job  # one export at a time
    run_initial_export.call(connector_id=connector.pk, job_id=job.pk)
    job.refresh_from_db()
    assert queued_prospects(connector, job) == sorted(p.pk for p in old)
    assert OutboxEntry.objects.filter(prospect=fresh).count() == 1  # no second entry for it
    assert job.params["already_queued"] == 1 and job.total == 3
    drain_all(connector)
    run_initial_export.call(connector_id=connector.pk, job_id=job.pk, tick=job.params["tick"])
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.result["created"] == 2 and job.done == 3
    assert len(crm_leads(crm, tag)) == 3


def test_a_worker_killed_mid_queueing_resumes_from_the_checkpoint(
        admin_access, admin_user, crm, crm_app, bu, unique, monkeypatch):
    tag = f"Ek{unique}"
    ps = [prospect(bu, tag, f"k{i}", owner=admin_user if i % 2 else None) for i in range(5)]
    connector = make_connector(admin_access, crm, crm_app, resume=False)
    monkeypatch.setattr(initial_import, "EXPORT_CHUNK", 2)
    real = OutboxEntry.objects.bulk_create
    calls = []

    def killed_on_the_second_chunk(objs, *args, **kwargs):
        calls.append(len(objs))
        if len(calls) == 2:
            raise RuntimeError("worker killed")
        return real(objs, *args, **kwargs)

    monkeypatch.setattr(OutboxEntry.objects, "bulk_create", killed_on_the_second_chunk)
    job = start_initial_export(admin_access, connector)
    with pytest.raises(RuntimeError):
        run_initial_export.call(connector_id=connector.pk, job_id=job.pk)
    job.refresh_from_db()
    # The first chunk committed with its checkpoint; the second rolled back; the job waits for its retry.
    assert job.status == Job.Status.RUNNING
    assert job.params["last_prospect_id"] == ps[1].pk and job.params["queued"] == 2
    assert queued_prospects(connector, job) == [ps[0].pk, ps[1].pk]

    monkeypatch.setattr(OutboxEntry.objects, "bulk_create", real)
    run_initial_export.call(connector_id=connector.pk, job_id=job.pk)  # the retry (same tick)
    job.refresh_from_db()
    assert queued_prospects(connector, job) == [p.pk for p in ps]  # each once
    assert not OutboxEntry.objects.filter(connector=connector).values("prospect_id").annotate(
        n=Count("id")).filter(n__gt=1).exists()
    assert job.params["queued"] == 5 and job.params["queued_all"] and job.total == 5
    # A duplicated delivery of the same tick queues nothing more either.
    run_initial_export.call(connector_id=connector.pk, job_id=job.pk, tick=job.params["tick"])
    assert OutboxEntry.objects.filter(connector=connector).count() == 5


def test_paused_connector_keeps_the_export_waiting(admin_access, admin_user, crm, crm_app, bu, unique, client):
    tag = f"Ew{unique}"
    p = prospect(bu, tag, "w", owner=admin_user)
    connector = make_connector(admin_access, crm, crm_app, resume=False)
    job = start_initial_export(admin_access, connector)
    run_initial_export.call(connector_id=connector.pk, job_id=job.pk)
    run_initial_export.call(connector_id=connector.pk, job_id=job.pk, tick=1)  # a tick while nothing drains
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.params["tick"] == 2 and pending(connector) == 1
    client.login(username=admin_user.email, password=PASSWORD)
    html = client.get(reverse("connector:export_status", args=[job.pk])).content.decode()
    assert "Sending prospects to the CRM" in html and "continues once the connector is resumed" in html
    drain_all(connector)  # what the worker does once the connector is resumed
    # The next tick is late (or the task backend cannot defer): the progress page refreshes and finishes the job.
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - dt.timedelta(minutes=5))
    html = client.get(reverse("connector:export_status", args=[job.pk])).content.decode()
    assert "Prospects sent to the CRM" in html and "Created a CRM record" in html
    run_initial_export.call(connector_id=connector.pk, job_id=job.pk, tick=2)  # finds it finished: nothing to do
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.result["created"] == 1
    p.refresh_from_db()
    assert p.crm_lead_id


def test_above_the_threshold_the_push_takes_the_bulk_path(admin_access, admin_user, crm, crm_app, bu, unique):
    tag = f"Eb{unique}"
    ps = [prospect(bu, tag, f"b{i}", owner=admin_user) for i in range(30)]
    connector = make_connector(admin_access, crm, crm_app, bulk_threshold=20)  # [R23]
    before = {j["id"] for j in crm.request("GET", "jobs/ingest")["records"]}
    job = export_once(admin_access, connector)
    assert job.status == Job.Status.SUCCEEDED and job.result["created"] == 30 and job.result["failed"] == 0
    jobs = [crm.request("GET", f"jobs/ingest/{j['id']}") for j in crm.request("GET", "jobs/ingest")["records"]
            if j["id"] not in before]
    assert [(j["object"], j["operation"], j["numberRecordsProcessed"]) for j in jobs] == [("Lead", "upsert", 30)]
    assert len(crm_leads(crm, tag)) == 30
    assert CrmLink.objects.filter(connector=connector, prospect__in=ps).count() == 30


def test_only_administrators_of_the_bu_start_it(admin_access, marketing_access, marketing_user, crm, crm_app, client,
                                                other_bu):
    connector = make_connector(admin_access, crm, crm_app, resume=False)
    with pytest.raises(PermissionDenied):  # [R5]
        start_initial_export(marketing_access, connector)
    client.login(username=marketing_user.email, password=PASSWORD)
    assert client.post(reverse("connector:export_start")).status_code == 403
    assert not Job.objects.filter(kind=EXPORT_KIND).exists()
    other = Job.objects.create(bu=other_bu, kind=EXPORT_KIND)
    other_connector = Connector(bu=other_bu, last_verified_at=connector.last_verified_at)
    with pytest.raises(PermissionDenied):
        start_initial_export(admin_access, other_connector)
    client.logout()
    client.login(username=admin_access.user.email, password=PASSWORD)
    assert client.get(reverse("connector:export_job", args=[other.pk])).status_code == 404


def test_an_unverified_connector_cannot_export(admin_access, admin_user, sandbox_connector, client):
    with pytest.raises(ValidationError):
        start_initial_export(admin_access, sandbox_connector)
    client.login(username=admin_user.email, password=PASSWORD)
    response = client.post(reverse("connector:export_start"), follow=True)
    assert "Verify the connection before sending prospects" in response.content.decode()
    assert not Job.objects.filter(kind=EXPORT_KIND).exists()


def test_the_view_starts_it_and_the_pages_render(admin_user, admin_access, connector, client, bu,
                                                 django_capture_on_commit_callbacks):
    client.login(username=admin_user.email, password=PASSWORD)
    page = client.get(reverse("connector:metadata")).content.decode()
    assert "Send prospects to the CRM" in page and reverse("connector:export_start") in page
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("connector:export_start"))
    assert len(callbacks) == 1  # the task is enqueued on commit
    job = Job.objects.get(bu=bu, kind=EXPORT_KIND)
    assert response["Location"] == reverse("connector:export_job", args=[job.pk])
    client.post(reverse("connector:export_start"))
    assert Job.objects.filter(kind=EXPORT_KIND).count() == 1
    html = client.get(reverse("connector:export_job", args=[job.pk])).content.decode()
    assert "Send prospects to the CRM" in html and reverse("connector:export_status", args=[job.pk]) in html
    assert "An export is running" in client.get(reverse("connector:metadata")).content.decode()
    Job.objects.filter(pk=job.pk).update(status="running", total=200, done=50, heartbeat_at=timezone.now(), params={
        **job.params, "queued_all": True}, result={"queued": 200, "already_queued": 0, "synced": 40, "skipped": 10,
                                                   "failed": 0})
    partial = client.get(reverse("connector:export_status", args=[job.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "25%" in partial and "50 of 200 prospects" in partial and "Linked to a CRM record so far" in partial
    Job.objects.filter(pk=job.pk).update(status="succeeded", done=200, result={
        "queued": 200, "already_queued": 0, "created": 150, "linked": 40, "skipped": 10, "failed": 0})
    partial = client.get(reverse("connector:export_status", args=[job.pk])).content.decode()
    assert "Prospects sent to the CRM" in partial and "Created a CRM record" in partial and "hx-get" not in partial
    # The import's page still reads as before.
    imported = Job.objects.create(bu=bu, kind=initial_import.JOB_KIND, status="succeeded", result={"created": 3})
    html = client.get(reverse("connector:import_status", args=[imported.pk])).content.decode()
    assert "Initial import finished" in html and "<dt>Created</dt>" in html
