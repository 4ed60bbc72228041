"""The Bulk API 2.0 initial import ([R10], [R22], [R25], [R26], [R27]) against a real crmsandbox seeded with a few
thousand leads and contacts (its own sandbox: the import reads the whole org)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db.models import Count
from django.utils import timezone

from loopline.connector import initial_import
from loopline.connector.models import BulkImportCheckpoint, Connector, CrmLink, SyncError, Watermark
from loopline.connector.sync import bulk, pull
from loopline.platform.tasks import create_job
from loopline.prospects.models import Prospect

from .conftest import LOOPLINE_ID, CrmApp, make_connector, register_app
from .sandbox import SandboxProcess

LEADS, CONTACTS = 2400, 300
BAD_EMAIL = "bulk..dots@example.test"  # the CRM accepts it, Loopline's email check does not


@pytest.fixture(scope="module")
def seeded_crm():
    sandbox = SandboxProcess.start(
        leads=LEADS,
        contacts=CONTACTS,
        config={"custom_fields": {"Lead": [LOOPLINE_ID], "Contact": [LOOPLINE_ID]}},
    )
    sandbox.bad_lead = sandbox.create("Lead", LastName="Dots", Company="Bad Co", Email=BAD_EMAIL)
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="module")
def seeded_app(seeded_crm) -> CrmApp:
    return register_app(seeded_crm, "Loopline bulk tests")


@pytest.fixture
def bulk_connector(admin_access, seeded_crm, seeded_app) -> Connector:
    return make_connector(admin_access, seeded_crm, seeded_app, resume=False, bulk_threshold=1000)


def crm_total(crm) -> int:
    return sum(
        crm.request("GET", "query", params={"q": f"SELECT COUNT() FROM {o}"})["totalSize"]
        for o in ("Lead", "Contact")
    )


def assert_each_record_linked_once(connector: Connector, expected: int) -> None:  # [R25]
    links = CrmLink.objects.filter(connector=connector)
    assert links.count() == expected
    assert not links.values("prospect_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    prospects = Prospect.objects.filter(bu=connector.bu)
    assert not prospects.exclude(crm_lead_id="").values("crm_lead_id").annotate(n=Count("id")).filter(n__gt=1)
    assert (
        not prospects.exclude(crm_contact_id="")
        .values("crm_contact_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    assert prospects.count() == expected


def test_backlog_above_the_threshold_goes_through_bulk_jobs(
    bulk_connector, seeded_crm, bu, admin_access, monkeypatch
):
    monkeypatch.setattr(bulk, "PAGE_RECORDS", 700)  # several result pages per job (Sforce-Locator)
    total = crm_total(seeded_crm)
    started = timezone.now()
    job = create_job(bu, initial_import.JOB_KIND)
    counters = initial_import.import_from_crm(bulk_connector, job)

    checkpoints = {cp.object_type: cp for cp in BulkImportCheckpoint.objects.filter(connector=bulk_connector)}
    assert set(checkpoints) == {"Lead", "Contact"}
    for cp in checkpoints.values():
        assert cp.state == "done" and cp.job_id.startswith("750") and cp.done == cp.total
        assert cp.watermark_at <= started - pull.OVERLAP + dt.timedelta(seconds=5)
    assert checkpoints["Lead"].pages == -(-(LEADS + 1) // 700)
    # [R22] the watermark was recorded before the job: polling resumes from the import's start, not its end.
    for wm in Watermark.objects.filter(connector=bulk_connector):
        assert wm.modstamp == checkpoints[wm.object_type].watermark_at
    # [R26] the record Loopline cannot take is in the error queue with its reason; every other one is linked once.
    error = SyncError.objects.get(connector=bulk_connector, crm_id=seeded_crm.bad_lead)
    assert error.direction == "from_crm" and error.code == "INVALID_VALUE" and "valid email" in error.message
    assert counters.created == total - 1 and counters.failed == 1
    assert_each_record_linked_once(bulk_connector, total - 1)
    # The progress view's numbers: the CRM's count as the total, every record accounted for.
    job.refresh_from_db()
    assert (job.total, job.done, job.failed) == (total, total - 1, 1)

    # A second import is a fresh bulk run; matching makes it create nothing ([R25]).
    again = initial_import.import_from_crm(bulk_connector)
    assert again.created == 0 and again.fetched == total
    assert_each_record_linked_once(bulk_connector, total - 1)


def test_below_the_threshold_the_rest_loop_imports(admin_access, seeded_crm, seeded_app, bu):
    connector = make_connector(admin_access, seeded_crm, seeded_app, resume=False, bulk_threshold=100_000)
    job = create_job(bu, initial_import.JOB_KIND)
    counters = initial_import.import_from_crm(connector, job)
    assert not BulkImportCheckpoint.objects.filter(connector=connector).exists()
    assert counters.created == crm_total(seeded_crm) - 1
    # The progress view: the total covers leads and contacts, and the import ends at it (never past it).
    job.refresh_from_db()
    assert job.total == crm_total(seeded_crm) and (job.done, job.failed) == (job.total - 1, 1)  # the bad email


def test_rest_import_without_a_preset_total_grows_it_per_object(admin_access, seeded_crm, seeded_app, bu):
    connector = make_connector(admin_access, seeded_crm, seeded_app, resume=False)
    job = create_job(bu, initial_import.JOB_KIND)
    pull.initial_import(connector, job)
    job.refresh_from_db()
    assert job.total == crm_total(seeded_crm) and job.done + job.failed == job.total


class Crash(Exception):
    pass


def test_limit_stop_and_crash_resume_then_the_poll_catches_up(bulk_connector, seeded_crm, bu, monkeypatch):
    monkeypatch.setattr(bulk, "PAGE_RECORDS", 500)
    total = crm_total(seeded_crm)
    # [R27] a limit pause defers bulk work: the watermark is recorded, no job is started, nothing is lost.
    Connector.objects.filter(pk=bulk_connector.pk).update(paused_until=timezone.now() + dt.timedelta(hours=1))
    with pytest.raises(bulk.BulkDeferred):
        bulk.bulk_initial_import(bulk_connector)
    lead_cp = BulkImportCheckpoint.objects.get(connector=bulk_connector, object_type="Lead")
    assert lead_cp.state == "running" and not lead_cp.job_id and bulk.pending(bulk_connector)
    Connector.objects.filter(pk=bulk_connector.pk).update(paused_until=None)
    bulk_connector.refresh_from_db()

    # The import runs; after the 3rd committed chunk a CRM user edits a lead already imported, and during the 4th
    # chunk the worker dies (the exception rolls that chunk back exactly as a SIGKILL would).
    chunks: list[int] = []
    seen: dict[str, int] = {}

    def interrupt(cp):
        chunks.append(cp.done)
        if len(chunks) == 3:
            first = CrmLink.objects.filter(connector=bulk_connector, crm_object="Lead").order_by("id").first()
            seeded_crm.update("Lead", first.crm_id, Title="Changed meanwhile")
            seen["edited"] = first.prospect_id
        if len(chunks) == 4:
            raise Crash

    with pytest.raises(Crash):
        bulk.bulk_initial_import(bulk_connector, after_chunk=interrupt)
    lead_cp.refresh_from_db()
    assert lead_cp.state == "running" and lead_cp.done == chunks[2]  # the 4th chunk was not committed
    assert lead_cp.locator or lead_cp.page_offset  # mid-job: a later page or inside the first one
    applied = CrmLink.objects.filter(connector=bulk_connector).count()
    assert applied + SyncError.objects.filter(connector=bulk_connector).count() == chunks[2]

    # The resumed run re-uses the job and continues after the last committed chunk.
    job_id = lead_cp.job_id
    counters = bulk.bulk_initial_import(bulk_connector)
    lead_cp.refresh_from_db()
    assert lead_cp.state == "done" and lead_cp.job_id == job_id
    assert (
        counters.created == total - 1 and counters.fetched == total
    )  # nothing applied twice, nothing skipped
    assert_each_record_linked_once(bulk_connector, total - 1)

    # [R22] the change made during the import is after the recorded watermark: the next poll reads it.
    edited = Prospect.objects.get(pk=seen["edited"])
    assert edited.job_title != "Changed meanwhile"
    pull.poll(bulk_connector)
    edited.refresh_from_db()
    assert edited.job_title == "Changed meanwhile"
    assert_each_record_linked_once(bulk_connector, total - 1)


def test_a_second_worker_on_the_same_import_stops_instead_of_applying_twice(
    bulk_connector, monkeypatch
):  # [R25]
    monkeypatch.setattr(bulk, "PAGE_RECORDS", 500)

    def other_worker_moves_on(cp):
        if cp.done == 500:  # what a concurrent worker's commit looks like from here
            BulkImportCheckpoint.objects.filter(pk=cp.pk).update(page_offset=0, locator="elsewhere")

    with pytest.raises(bulk.BulkConflict):
        bulk.bulk_initial_import(bulk_connector, after_chunk=other_worker_moves_on)
    assert (
        CrmLink.objects.filter(connector=bulk_connector).count()
        + SyncError.objects.filter(connector=bulk_connector).count()
        == 500
    )


def test_a_job_gone_from_the_crm_is_run_again_without_duplicates(
    bulk_connector, seeded_crm, monkeypatch
):  # [R25]
    monkeypatch.setattr(bulk, "PAGE_RECORDS", 500)
    total = crm_total(seeded_crm)

    def crash(cp):
        if cp.done == 1000:
            raise Crash

    with pytest.raises(Crash):
        bulk.bulk_initial_import(bulk_connector, after_chunk=crash)
    lead_cp = BulkImportCheckpoint.objects.get(connector=bulk_connector, object_type="Lead")
    old_job = lead_cp.job_id
    seeded_crm.request("DELETE", f"jobs/query/{old_job}")  # results expire after 7 days in Salesforce
    counters = bulk.bulk_initial_import(bulk_connector)
    lead_cp.refresh_from_db()
    assert lead_cp.state == "done" and lead_cp.job_id != old_job and lead_cp.done == lead_cp.total
    assert counters.created == total - 1  # the 500 applied before the crash were matched, not created again
    assert_each_record_linked_once(bulk_connector, total - 1)


def test_the_import_task_waits_out_a_limit_pause_and_keeps_its_checkpoint(bulk_connector, bu):  # [R27]
    from loopline.platform.tasks import Retry

    Connector.objects.filter(pk=bulk_connector.pk).update(paused_until=timezone.now() + dt.timedelta(hours=1))
    job = create_job(bu, initial_import.JOB_KIND)
    with pytest.raises(Retry):  # the task asks to run again later instead of failing
        initial_import.run_initial_import.call(connector_id=bulk_connector.pk, job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "running" and job.total == crm_total_of(bulk_connector)
    assert bulk.pending(bulk_connector)
    assert not BulkImportCheckpoint.objects.filter(connector=bulk_connector).exclude(job_id="").exists()
    Connector.objects.filter(pk=bulk_connector.pk).update(paused_until=None)
    initial_import.run_initial_import.call(connector_id=bulk_connector.pk, job_id=job.pk)
    job.refresh_from_db()
    assert (
        job.status == "succeeded" and job.done + job.failed == job.total and not bulk.pending(bulk_connector)
    )


def crm_total_of(connector: Connector) -> int:
    return sum(initial_import.crm_counts(connector).values())


def test_the_command_line_import_takes_the_bulk_path(bulk_connector, seeded_crm, bu):
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("connector", "import", "--bu", bu.slug, stdout=out)
    assert f"created {crm_total(seeded_crm) - 1}" in out.getvalue()
    assert not bulk.pending(bulk_connector)
    assert BulkImportCheckpoint.objects.filter(connector=bulk_connector, state="done").count() == 2
