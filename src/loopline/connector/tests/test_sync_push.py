"""Loopline → CRM: create rules [R11], [R15], matching [R9], idempotency [R25]."""

from __future__ import annotations

from django.utils import timezone

from loopline.connector.models import CrmLink, CrmUser, OutboxEntry, SyncRun
from loopline.connector.sync import push
from loopline.prospects import services as prospects
from loopline.prospects.models import Prospect

from .helpers import drain_all, pending, sync


def _count(crm, sobject: str, email: str) -> int:
    return len(crm.query(f"SELECT Id FROM {sobject} WHERE Email = '{email}'"))


def test_assigned_prospect_creates_a_lead_owned_by_the_connector_user(connector, crm, bu, admin_user, unique):
    # [R11] assigned to a user with no CRM mapping → owned by the connector user; Company/LastName fill-ins [R20]
    p = prospects.create_prospect(bu, {"email": f"new.{unique}@example.test", "first_name": "Nia"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id
    lead = crm.get("Lead", p.crm_lead_id)
    assert lead["FirstName"] == "Nia" and lead["Company"] == "[not provided]"
    assert lead["OwnerId"] == connector.connector_user_id
    assert CrmLink.objects.filter(connector=connector, crm_id=p.crm_lead_id, prospect=p).exists()
    run = SyncRun.objects.filter(connector=connector, kind="push").first()
    assert run.counters["created"] == 1 and run.api_calls >= 2


def test_assigned_user_with_crm_mapping_owns_the_new_record(connector, crm, bu, admin_user, unique):  # [R11]
    owner = crm.query("SELECT Id FROM User WHERE Username LIKE 'user1%'")[0]["Id"]
    CrmUser.objects.create(connector=connector, crm_id=owner, username="user1", user=admin_user)
    p = prospects.create_prospect(bu, {"email": f"owned.{unique}@example.test", "last_name": "Owned"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    assert crm.get("Lead", p.crm_lead_id)["OwnerId"] == owner
    assert p.crm_owner_id == owner


def test_unassigned_prospect_creates_nothing_but_syncs_with_a_match(connector, crm, bu, unique):  # [R11]
    lonely = prospects.create_prospect(bu, {"email": f"lonely.{unique}@example.test", "last_name": "Alone"})
    drain_all(connector)
    lonely.refresh_from_db()
    assert not lonely.crm_lead_id and _count(crm, "Lead", lonely.email) == 0
    assert SyncRun.objects.filter(connector=connector, kind="push").first().counters["skipped"] == {"unassigned": 1}

    email = f"matched.{unique}@example.test"
    lead_id = crm.create("Lead", LastName="Match", Company="Co", Email=email)
    p = prospects.create_prospect(bu, {"email": email, "job_title": "VP Sales"})
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id == lead_id  # [R9] matched by email (case-insensitive)
    lead = crm.get("Lead", lead_id)
    assert lead["Title"] == "VP Sales"  # the blank CRM field is filled from Loopline [R17]
    assert lead["LastName"] == "Match"


def test_contact_beats_lead_when_both_match(connector, crm, bu, unique):  # [R9]
    email = f"both.{unique}@example.test"
    crm.create("Lead", LastName="Lead", Company="Co", Email=email)
    contact_id = crm.create("Contact", LastName="Contact", Email=email)
    p = prospects.create_prospect(bu, {"email": email})
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_contact_id == contact_id and not p.crm_lead_id


def test_do_not_sync_prospect_never_syncs(connector, crm, bu, admin_user, unique):  # [R15]
    p = prospects.create_prospect(bu, {"email": f"dns.{unique}@example.test", "last_name": "No"})
    prospects.update_prospect(p, {}, extra={"do_not_sync": True})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    assert not p.crm_lead_id and _count(crm, "Lead", p.email) == 0


def test_rerunning_a_batch_after_a_crash_creates_no_duplicate(connector, crm, bu, admin_user, unique):  # [R25]
    p = prospects.create_prospect(bu, {"email": f"crash.{unique}@example.test", "last_name": "Crash"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    first_id = p.crm_lead_id
    # Simulate a crash after the CRM created the record but before our commit: the link and ids are gone and the
    # outbox entry is due again.
    CrmLink.objects.filter(connector=connector).delete()
    Prospect.objects.filter(pk=p.pk).update(crm_lead_id="")
    OutboxEntry.objects.filter(prospect=p).update(status=OutboxEntry.Status.PENDING, locked_until=None)
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id == first_id
    assert _count(crm, "Lead", p.email) == 1
    # And a replayed poll window applies nothing twice.
    sync(connector)
    sync(connector)
    assert Prospect.objects.filter(bu=bu, email=p.email).count() == 1
    assert pending(connector) == 0


def test_many_prospects_in_one_composite_call(connector, crm, bu, admin_user, unique):  # [R23]
    ps = [prospects.create_prospect(bu, {"email": f"bulk{i}.{unique}@example.test", "last_name": f"B{i}"})
          for i in range(30)]
    for p in ps:
        prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    run = SyncRun.objects.filter(connector=connector, kind="push").first()
    assert run.counters["created"] == 30
    assert run.api_calls <= 4  # Lead + Contact describe (first time only), one email lookup, one composite create
    assert Prospect.objects.filter(pk__in=[p.pk for p in ps]).exclude(crm_lead_id="").count() == 30


def test_a_killed_drain_leaves_leased_rows_that_the_next_worker_takes_over(connector, crm, bu, admin_user, unique):
    # [R25] kill -9 between the claim and the write: the rows stay leased, nobody else pushes them twice at once,
    # and once the lease runs out the next drain delivers them exactly once.
    import datetime as dt

    from django.utils import timezone

    from loopline.connector.sync import push

    p = prospects.create_prospect(bu, {"email": f"killed.{unique}@example.test", "last_name": "Killed"})
    prospects.assign_prospect(p, admin_user)
    claimed = push.claim(connector)  # the "dead" worker's claim
    assert list(claimed) == [p.pk]
    assert push.drain(connector).note == "the outbox is empty"  # leased: not due for anyone else
    OutboxEntry.objects.filter(prospect=p).update(locked_until=timezone.now() - dt.timedelta(seconds=1))
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id and _count(crm, "Lead", p.email) == 1


def test_a_create_whose_answer_was_lost_is_not_made_twice_even_without_email(connector, crm, bu, admin_user, unique):
    # [R25] the CRM creates the lead but the answer never arrives (connection closed after the write). The prospect
    # has no email, so the re-check by email cannot find the record: the create is an upsert on Loopline_Id__c.
    from loopline.connector.sync.push import external_id_value

    p = prospects.create_prospect(bu, {"first_name": "No", "last_name": f"Email{unique}", "company": "Lost Co"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)  # warm the describes: the lost answer below must be the create itself
    p.refresh_from_db()
    first_id = p.crm_lead_id
    assert first_id
    stamp = external_id_value(connector, p.pk)
    assert crm.get("Lead", first_id)["Loopline_Id__c"] == stamp
    # Now the crash window: forget the link, queue the prospect again, lose the CRM's answer to the create.
    CrmLink.objects.filter(connector=connector, prospect=p).delete()
    Prospect.objects.filter(pk=p.pk).update(crm_lead_id="")
    OutboxEntry.objects.filter(prospect=p).update(status=OutboxEntry.Status.PENDING, locked_until=None)
    crm.faults(error_rates={"LOST_RESPONSE": 1})
    push.drain(connector)
    crm.faults(reset=True)
    p.refresh_from_db()
    assert not p.crm_lead_id  # nothing was heard back: nothing linked, the entry waits for its retry
    assert OutboxEntry.objects.filter(prospect=p, status=OutboxEntry.Status.PENDING).exists()
    OutboxEntry.objects.filter(prospect=p).update(next_run_at=timezone.now())
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id == first_id
    assert len(crm.query(f"SELECT Id FROM Lead WHERE LastName = 'Email{unique}'")) == 1
    assert CrmLink.objects.filter(connector=connector, crm_id=first_id, prospect=p).exists()


def test_without_the_external_id_field_creates_are_plain_inserts(admin_access, crm, crm_app, bu, admin_user, unique):
    # [R25] the setting names a field the org does not have: creates still work (plain inserts).
    from .conftest import make_connector

    connector = make_connector(admin_access, crm, crm_app, external_id_field="Missing_Id__c")
    p = prospects.create_prospect(bu, {"email": f"plain.{unique}@example.test", "last_name": "Plain"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id and not crm.get("Lead", p.crm_lead_id).get("Loopline_Id__c")


def test_link_writes_round_trip_awkward_values(db, bu, admin_access):  # [R24] the hashes and baselines stored
    import datetime as dt

    from loopline.connector import services
    from loopline.connector.sync import fastwrite

    connector = services.create_connector(admin_access)
    a = prospects.create_prospect(bu, {"email": "a@fast.test"})
    b = prospects.create_prospect(bu, {"email": "b@fast.test"})
    when = dt.datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=dt.UTC)
    awkward = {"title": 'He said "hi" \\ {x} é\n', "n": [1, None, True]}
    rows = [{"connector_id": connector.pk, "prospect_id": a.pk, "crm_object": "Lead", "crm_id": "00Q000000000001AAA",
             "last_read_hash": "h1", "last_crm_modstamp": when, "last_synced_at": None, "baseline": awkward},
            {"connector_id": connector.pk, "prospect_id": b.pk, "crm_object": "Lead", "crm_id": "00Q000000000002AAA",
             "last_read_hash": "h2", "last_crm_modstamp": None, "last_synced_at": None, "baseline": {}}]
    assert fastwrite.insert(CrmLink, rows, ignore_conflicts=True) == 2
    assert fastwrite.insert(CrmLink, rows[:1], ignore_conflicts=True) == 0  # (connector, crm id) is unique
    first = CrmLink.objects.get(crm_id="00Q000000000001AAA")
    assert (first.baseline, first.last_crm_modstamp, first.last_synced_at) == (awkward, when, None)
    assert first.created_at is not None and first.last_written_hash == ""
    # update: every row gives every field; the guard leaves rows of another connector alone
    second = CrmLink.objects.get(crm_id="00Q000000000002AAA")
    values = {first.pk: {"last_read_hash": "x1", "baseline": {"q": "'"}},
              second.pk: {"last_read_hash": "x2", "baseline": {}}}
    assert fastwrite.update(CrmLink, values, ["last_read_hash", "baseline"], where={"connector_id": -1}) == 0
    assert fastwrite.update(CrmLink, values, ["last_read_hash", "baseline"],
                            where={"connector_id": connector.pk}) == 2
    first.refresh_from_db()
    assert (first.last_read_hash, first.baseline, first.last_crm_modstamp) == ("x1", {"q": "'"}, when)
    pks = fastwrite.select_pks(CrmLink, "connector_id = %b AND crm_id = ANY(%b)",
                               [connector.pk, ["00Q000000000002AAA", "nope"]])
    assert pks is None or pks == [second.pk]  # None: not PostgreSQL, callers use the ORM


def _linked_lead(connector, crm, bu, admin_user, unique, **fields):
    p = prospects.create_prospect(bu, {"email": f"echo.{unique}@example.test", "last_name": "Echo", **fields})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id
    return p


def _manager_written_answer_lost(connector, crm, bu, admin_user, unique) -> Prospect:
    """A linked lead whose title change to "Manager" the CRM applied while its answer to the push was lost."""
    p = _linked_lead(connector, crm, bu, admin_user, unique, job_title="Analyst")
    prospects.update_prospect(p, {"job_title": "Manager"})
    crm.faults(error_rates={"LOST_RESPONSE": 1}, writes_only=True)
    push.drain(connector)
    crm.faults(reset=True)
    p.refresh_from_db()
    return p


def test_a_write_whose_answer_was_lost_does_not_come_back_as_a_crm_change(connector, crm, bu, admin_user, unique):
    # [R24], [R25] the CRM applies an update but its answer is lost. The connector user's write must still be
    # recognised as our own echo: a later Loopline edit of the same field wins, not the value we wrote before.
    p = _manager_written_answer_lost(connector, crm, bu, admin_user, unique)
    assert crm.get("Lead", p.crm_lead_id)["Title"] == "Manager"  # applied, though we never heard so
    prospects.update_prospect(p, {"job_title": "Director"})
    OutboxEntry.objects.filter(prospect=p, status=OutboxEntry.Status.PENDING).update(next_run_at=timezone.now())
    sync(connector, rounds=2)
    p.refresh_from_db()
    assert p.job_title == "Director"
    assert crm.get("Lead", p.crm_lead_id)["Title"] == "Director"


def test_a_lost_write_then_a_poll_before_the_retry_keeps_the_later_loopline_edit(connector, crm, bu, admin_user,
                                                                                  unique):
    # [R24] as above, but the poll reads the connector user's write before the push is retried.
    p = _manager_written_answer_lost(connector, crm, bu, admin_user, unique)
    prospects.update_prospect(p, {"job_title": "Director"})
    connector.refresh_from_db()
    from loopline.connector.sync import pull

    pull.poll(connector)
    p.refresh_from_db()
    assert p.job_title == "Director"
    OutboxEntry.objects.filter(prospect=p, status=OutboxEntry.Status.PENDING).update(next_run_at=timezone.now())
    sync(connector)
    p.refresh_from_db()
    assert p.job_title == "Director"
    assert crm.get("Lead", p.crm_lead_id)["Title"] == "Director"


def test_a_crm_user_restoring_the_values_we_last_wrote_is_a_change_not_our_echo(connector, crm, bu, admin_user,
                                                                                 unique):
    # [R24] A-B-A: we wrote "Manager"; a CRM user changes it to "Director", the poll applies that; then the user
    # restores "Manager" — the same values as our last write, but their change, which must reach Loopline.
    p = _linked_lead(connector, crm, bu, admin_user, unique, job_title="Analyst")
    prospects.update_prospect(p, {"job_title": "Manager"})
    sync(connector)
    assert crm.get("Lead", p.crm_lead_id)["Title"] == "Manager"
    crm.update("Lead", p.crm_lead_id, Title="Director")
    sync(connector)
    p.refresh_from_db()
    assert p.job_title == "Director"
    crm.update("Lead", p.crm_lead_id, Title="Manager")
    sync(connector)
    p.refresh_from_db()
    assert p.job_title == "Manager"
