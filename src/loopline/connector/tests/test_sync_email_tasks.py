"""Email sends logged as completed CRM Tasks ([R39]) against a real crmsandbox and a real SMTP server: off by
default, one Task per email sent to a synced prospect, written in batches, exactly once — also after a crash."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from loopline.connector import services
from loopline.connector.models import CrmTaskLog, SyncRun
from loopline.connector.sync import related
from loopline.emails.tests import conftest as email_fixtures
from loopline.prospects.models import Prospect

from .helpers import sync

# The email app's fixtures: a real SMTP server (aiosmtpd) and an email to send.
smtp_sink = email_fixtures.smtp_sink
make_email = email_fixtures.make_email


def _send(bu, email, prospects, key: str):
    from loopline.emails import services as email_services
    from loopline.emails.models import EmailSend

    email_services.send_to_prospects(
        bu, email.pk, [p.pk for p in prospects], kind="program", source="test", source_id=None, dedupe_key=key
    )
    send = EmailSend.objects.get(bu=bu, dedupe_key=key)
    email_services.process_send(send.pk)
    return send


def _synced_leads(crm, connector, unique: str, n: int) -> list[tuple[str, Prospect]]:
    ids = [
        crm.create(
            "Lead",
            FirstName=f"Ada{i}",
            LastName=f"Reader {i}",
            Company="Co",
            Email=f"reader{i}.{unique}@example.test",
        )
        for i in range(n)
    ]
    sync(connector)
    return [(lead_id, Prospect.objects.get(crm_lead_id=lead_id)) for lead_id in ids]


def _tasks(crm, who_id: str) -> list[dict]:
    return crm.query(
        f"SELECT Id, Subject, Status, ActivityDate, Description, TaskSubtype FROM Task "
        f"WHERE WhoId = '{who_id}'"
    )


def test_tasks_are_off_by_default(connector, crm, bu, unique, smtp_sink, make_email):
    ((lead_id, prospect),) = _synced_leads(crm, connector, unique, 1)
    assert services.settings_of(connector)["log_email_tasks"] is False
    _send(bu, make_email(), [prospect], key=f"off-{unique}")
    assert len(smtp_sink.messages) == 1
    related.push(connector, force_scan=True)
    assert not CrmTaskLog.objects.filter(connector=connector).exists()
    assert _tasks(crm, lead_id) == []


def test_each_email_sent_to_a_synced_prospect_becomes_one_completed_task(
    connector, crm, bu, admin_access, unique, smtp_sink, make_email
):
    services.update_settings(admin_access, connector, {"log_email_tasks": True})
    connector.refresh_from_db()
    related.push(connector, force_scan=True)  # turning it on is not retroactive: the cursor starts now
    leads = _synced_leads(crm, connector, unique, 3)
    unsynced = Prospect.objects.create(
        bu=bu, email=f"local.{unique}@example.test", first_name="Lo", email_key=f"local.{unique}@example.test"
    )
    email = make_email(name=f"Offer {unique}")
    send = _send(bu, email, [p for _, p in leads] + [unsynced], key=f"on-{unique}")
    assert len(smtp_sink.messages) == 4

    written = related.push(connector, force_scan=True)
    assert written["tasks"] == 3  # the prospect that does not sync gets no task
    for i, (lead_id, _) in enumerate(leads):
        (task,) = _tasks(crm, lead_id)
        assert task["Subject"] == f"Email: Hi Ada{i}"  # the subject as the prospect got it
        assert task["Status"] == "Completed" and task["TaskSubtype"] == "Email"
        assert task["ActivityDate"] == timezone.now().date().isoformat()
        assert f"/emails/sends/{send.pk}/" in task["Description"] and f"Offer {unique}" in task["Description"]
    run = SyncRun.objects.filter(connector=connector, kind="tasks").first()
    assert run.counters["created"] == 3 and run.api_calls == 1  # one composite call for the whole batch

    # A re-scan of the same window queues nothing new, and nothing is written twice.
    assert related.queue_tasks(connector) == 0
    assert related.push(connector, force_scan=True)["tasks"] == 0
    assert all(len(_tasks(crm, lead_id)) == 1 for lead_id, _ in leads)


def test_a_task_written_before_a_crash_is_found_not_written_again(
    connector, crm, bu, admin_access, unique, smtp_sink, make_email
):
    from loopline.connector.sync.context import SyncContext
    from loopline.platform.queues import claim_due

    services.update_settings(admin_access, connector, {"log_email_tasks": True})
    connector.refresh_from_db()
    related.push(connector, force_scan=True)
    (lead_id, prospect), (other_id, other) = _synced_leads(crm, connector, unique, 2)
    _send(bu, make_email(), [prospect, other], key=f"crash-{unique}")
    related.queue_tasks(connector)
    rows = {r.who_id: r for r in CrmTaskLog.objects.filter(connector=connector, state="pending")}
    assert set(rows) == {lead_id, other_id}

    # A worker claims both rows and writes the first task, then dies before it records the outcome.
    claimed = claim_due(
        CrmTaskLog.objects.filter(connector=connector, state="pending"), limit=10, lease_seconds=300
    )
    assert len(claimed) == 2
    first = rows[lead_id]
    crm.create(
        "Task",
        WhoId=lead_id,
        Subject=first.subject,
        Status="Completed",
        Description=first.description,
        ActivityDate=first.activity_date.isoformat(),
    )
    past = timezone.now() - dt.timedelta(seconds=1)
    CrmTaskLog.objects.filter(connector=connector).update(locked_until=past)  # the lease runs out

    ctx = SyncContext.load(connector)
    assert related.write_tasks(ctx) == 1  # only the task that never reached the CRM
    assert len(_tasks(crm, lead_id)) == 1 and len(_tasks(crm, other_id)) == 1
    assert not CrmTaskLog.objects.filter(connector=connector).exclude(state="done").exists()
    assert CrmTaskLog.objects.get(pk=first.pk).crm_id == _tasks(crm, lead_id)[0]["Id"]


def test_a_task_the_crm_rejects_goes_to_the_error_queue_and_retry_queues_it_again(
    connector, crm, bu, admin_access, unique, smtp_sink, make_email
):
    from loopline.connector.models import SyncError
    from loopline.connector.sync import errors

    services.update_settings(admin_access, connector, {"log_email_tasks": True})
    connector.refresh_from_db()
    related.push(connector, force_scan=True)
    ((lead_id, prospect),) = _synced_leads(crm, connector, unique, 1)
    _send(bu, make_email(), [prospect], key=f"reject-{unique}")
    crm.delete("Lead", lead_id)  # gone in the CRM before the task is written (the poll has not seen it yet)

    assert related.push(connector, force_scan=True)["tasks"] == 0
    row = CrmTaskLog.objects.get(connector=connector, prospect=prospect)
    assert row.state == "failed" and not row.crm_id
    error = SyncError.objects.get(connector=connector, prospect=prospect, direction="to_crm")  # [R26]
    assert error.code == "ENTITY_IS_DELETED" and "Email task" in error.message and error.status == "open"

    errors.retry_one(admin_access, error)  # the admin's Retry puts the task back in line
    row.refresh_from_db()
    assert row.state == "pending"


def test_tasks_go_out_200_per_collection_several_collections_per_call(connector, crm, bu, unique):
    # [R39] "written in batches": 250 queued tasks → two collections (200 + 50) packed into one composite call.
    from loopline.connector.sync.context import SyncContext

    for start in (0, 200):
        crm.request(
            "POST",
            "composite/sobjects",
            json={
                "allOrNone": False,
                "records": [
                    {
                        "attributes": {"type": "Lead"},
                        "LastName": f"Bulk {i}",
                        "Company": "Co",
                        "Email": f"bulk{i}.{unique}@example.test",
                    }
                    for i in range(start, min(start + 200, 250))
                ],
            },
        )
    sync(connector)
    prospects = list(Prospect.objects.filter(bu=bu, email__endswith=f".{unique}@example.test").order_by("pk"))
    assert len(prospects) == 250
    now = timezone.now()
    CrmTaskLog.objects.bulk_create(
        [
            CrmTaskLog(
                connector=connector,
                delivery_id=10**9 + n,
                prospect=p,
                who_id=p.crm_lead_id,
                subject="Email: Batch",
                activity_date=now.date(),
                description=related.task_reference(connector, n),
                next_run_at=now,
            )
            for n, p in enumerate(prospects)
        ]
    )

    assert related.write_tasks(SyncContext.load(connector)) == 250
    run = SyncRun.objects.filter(connector=connector, kind="tasks").first()
    assert run.counters["created"] == 250 and run.api_calls == 1
    ids = ", ".join(f"'{p.crm_lead_id}'" for p in prospects)
    assert len(crm.query(f"SELECT Id FROM Task WHERE WhoId IN ({ids})")) == 250
