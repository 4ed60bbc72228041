"""CRM → Loopline ([R9], [R10], [R13], [R17], [R19], [R22], [R24], [R31])."""

from __future__ import annotations

from loopline.connector.models import CrmLink, SyncRun
from loopline.prospects.models import Prospect

from .helpers import sync


def test_new_lead_creates_a_prospect_and_links_it(connector, crm, unique):  # [R10]
    email = f"ann.{unique}@example.test"
    lead_id = crm.create("Lead", FirstName="Ann", LastName="Lee", Company="Acme", Email=email.upper(), Title="CTO")
    sync(connector)
    p = Prospect.objects.get(bu=connector.bu, email=email)
    assert (p.first_name, p.last_name, p.company, p.job_title) == ("Ann", "Lee", "Acme", "CTO")
    assert p.crm_lead_id == lead_id and p.crm_owner_id
    link = CrmLink.objects.get(connector=connector, crm_id=lead_id)
    assert link.prospect_id == p.pk and link.baseline and link.last_read_hash
    run = SyncRun.objects.filter(connector=connector, kind="pull").first()
    assert run.counters["created"] >= 1


def test_an_idle_poll_stops_rereading_the_last_burst(connector, crm, unique):  # [R22] idle cost
    import datetime as dt
    import time

    from django.utils import timezone

    from loopline.connector.engine.model import parse_datetime
    from loopline.connector.sync import pull

    ids = [crm.create("Lead", LastName=f"Burst{i}", Company="Acme", Email=f"burst{i}.{unique}@example.test")
           for i in range(3)]
    assert pull.poll(connector).created >= 3  # (the session's sandbox may hold other fresh leads)
    assert Prospect.objects.filter(bu=connector.bu, crm_lead_id__in=ids).count() == 3
    # Still inside the overlap: the next poll reads the burst again and skips it as already seen ([R25]).
    again = pull.poll(connector)
    assert again.fetched >= 3 and again.created == again.updated == 0
    row, wm = pull.load_watermark(connector, "Lead")
    assert wm.settled is not None and wm.settled < timezone.now() - pull.OVERLAP  # overlap + clock margin back
    # A completed poll that started two overlaps after the burst has seen it for good: the window starts there.
    # (The session's sandbox may hold records other tests stamped later: those are read either way.)
    pull.save_watermark(row, wm.settle(timezone.now() + 2 * pull.OVERLAP, pull.OVERLAP))
    time.sleep(0.05)  # the sandbox stamps milliseconds
    _, wm = pull.load_watermark(connector, "Lead")
    burst = [crm.get("Lead", i)["SystemModstamp"] for i in ids]
    assert all(parse_datetime(stamp) < wm.since(pull.OVERLAP) for stamp in burst)
    assert pull.poll(connector).fetched <= again.fetched - 3
    # Changes after the settled point still arrive.
    crm.update("Lead", ids[0], Title="Later")
    later = pull.poll(connector)
    assert later.updated >= 1
    assert Prospect.objects.get(bu=connector.bu, crm_lead_id=ids[0]).job_title == "Later"
    _, wm = pull.load_watermark(connector, "Lead")
    assert all(dt.datetime.fromisoformat(stamp) >= wm.since(pull.OVERLAP) for _, stamp in wm.recent_keys)


def test_settled_watermark_round_trips_and_never_moves_back():  # [R22], [R25]
    import datetime as dt

    from loopline.connector.engine.capture import Watermark

    t0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    overlap = dt.timedelta(seconds=60)
    wm = Watermark("Lead", t0, frozenset({("00q000000000001aaa", t0.isoformat()),
                                          ("00q000000000002aaa", (t0 - dt.timedelta(seconds=50)).isoformat())}))
    assert wm.since(overlap) == t0 - overlap
    settled = wm.settle(t0 + dt.timedelta(minutes=5), overlap)
    assert settled.settled == t0 + dt.timedelta(minutes=3)
    assert settled.since(overlap) == settled.settled and settled.recent_keys == frozenset()
    assert settled.settle(t0, overlap) is settled  # an older poll never pulls the window back
    near = wm.settle(t0 + dt.timedelta(seconds=100), overlap)  # settled inside the overlap: t0 - 20 s
    assert near.since(overlap) == t0 - dt.timedelta(seconds=20)
    assert near.recent_keys == {("00q000000000001aaa", t0.isoformat())}  # the key at t0 - 50 s cannot come back
    assert Watermark.from_json(settled.to_json()) == settled
    assert Watermark.from_json(wm.to_json()) == wm and "*settled" not in str(wm.to_json())
    # advance keeps the settled point and drops keys below it
    moved = settled.advance([("00Q000000000003AAA", t0 + dt.timedelta(minutes=4))], overlap=overlap)
    assert moved.settled == settled.settled and moved.modstamp == t0 + dt.timedelta(minutes=4)


def test_initial_import_sets_crm_fields_in_the_insert(connector, crm, unique):  # [R10], [R12]
    from loopline.connector.sync import pull
    from loopline.prospects import services

    lead_id = crm.create("Lead", LastName="Insert", Company="Acme", Email=f"insert.{unique}@example.test")
    pull.initial_import(connector)
    p = Prospect.objects.get(bu=connector.bu, crm_lead_id=lead_id)
    assert p.crm_owner_id and p.crm_last_sync_at is not None and not p.crm_contact_id
    link = CrmLink.objects.get(connector=connector, crm_id=lead_id)
    assert link.prospect_id == p.pk and link.baseline["last_name"]
    # Only CRM linkage fields ride along with the insert.
    import pytest

    with pytest.raises(ValueError):
        services.bulk_upsert_prospects(connector.bu, [{"email": f"x.{unique}@example.test"}],
                                       crm_fields=[{"score": 5}])
    assert not Prospect.objects.filter(bu=connector.bu, email=f"x.{unique}@example.test").exists()


def test_set_crm_fields_stays_in_its_business_unit(db, bu):
    import datetime as dt

    from loopline.accounts import services as accounts
    from loopline.prospects import services

    other = accounts.create_business_unit("Other", postal_address="2 Side St")
    mine = services.create_prospect(bu, {"email": "mine@scope.test"})
    theirs = services.create_prospect(other, {"email": "theirs@scope.test"})
    when = dt.datetime(2026, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    values = {"crm_owner_id": "005000000000001AAA", "crm_last_sync_at": when}
    assert services.set_crm_fields(bu.pk, {mine.pk: values, theirs.pk: values}) == 1
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert (mine.crm_owner_id, mine.crm_last_sync_at) == ("005000000000001AAA", when)
    assert (theirs.crm_owner_id, theirs.crm_last_sync_at) == ("", None)
    assert services.set_crm_fields(bu.pk, {mine.pk: {"crm_owner_id": ""}}) == 1
    mine.refresh_from_db()
    assert mine.crm_owner_id == "" and mine.crm_last_sync_at == when


def test_crm_side_equals_the_engine_on_any_values():  # [R24] the fast path hashes exactly like the echo checks
    import decimal

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from loopline.connector.engine import CrmRecord, default_mapping, record_hash
    from loopline.connector.sync.snapshots import agreed_baseline, crm_side, crm_to_loopline_values

    mappings = default_mapping(score_field="Score__c")
    fields = sorted({m.crm_field("Lead") for m in mappings if m.crm_field("Lead")})
    value = st.one_of(st.none(), st.text(max_size=12), st.booleans(), st.integers(-10**6, 10**6),
                      st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(
                          ["", " ", "[not provided]", "true", "12.50", "2024-01-02", "2024-01-02T03:04:05Z",
                           "A@B.C", "00Q000000000001"]),
                      st.decimals(allow_nan=False, allow_infinity=False, places=2).map(decimal.Decimal))

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(fields), value))
    def check(raw):
        record = CrmRecord.from_api("Lead", {"Id": "00Q000000000001EAA", "SystemModstamp": "2024-01-01T00:00:00Z",
                                             **raw})
        for _ in range(2):  # the second pass answers from the memo
            values, read_hash, baseline = crm_side(record.values, mappings, "Lead")
            assert values == crm_to_loopline_values(record.values, mappings, "Lead")
            assert {k: type(v) for k, v in values.items()} == {
                k: type(v) for k, v in crm_to_loopline_values(record.values, mappings, "Lead").items()}
            assert read_hash == record_hash(record, mappings)
            assert baseline == agreed_baseline(record.values, mappings, "Lead", crm_side=True)

    check()


def test_our_own_writes_filling_the_overlap_are_counted_not_read_again(connector, crm, unique, monkeypatch):  # [R22]
    """After a burst of the connector user's writes, polls count those records in the overlap window instead of paging
    through them again; a record that commits late into the window (its SystemModstamp older than what the poll
    already read) still arrives, whoever wrote it."""
    from loopline.connector.engine import capture
    from loopline.connector.sync import pull
    from loopline.connector.sync.context import SyncContext

    as_connector_user = SyncContext.load(connector).client

    def create_as_connector_user(i: int) -> str:
        body = {"LastName": f"Counted{i}", "Company": "Acme", "Email": f"counted{i}.{unique}@example.test"}
        return as_connector_user.restful("sobjects/Lead", method="POST", json=body)["id"]

    ids = [create_as_connector_user(i) for i in range(4)]
    pull.poll(connector)
    assert Prospect.objects.filter(bu=connector.bu, crm_lead_id__in=ids).count() == 4
    _, wm = pull.load_watermark(connector, "Lead")
    assert {i.lower() for i in ids} <= {rid for rid, _ in wm.own}  # remembered as the connector user's writes
    reread = pull.poll(connector)
    assert reread.skipped["already_seen"] >= 3  # below the threshold the window is read again

    monkeypatch.setattr(capture, "RECOUNT_ABOVE", 2)
    counted = pull.poll(connector)
    # Our records are no longer read (bar one stamped at the watermark itself); other users' still are.
    assert counted.skipped["already_seen"] <= reread.skipped["already_seen"] - 3

    # A record edited since moves out of the window: the count still matches, nothing is read again.
    crm.update("Lead", ids[1], Title="Moved")
    moved = pull.poll(connector)
    assert Prospect.objects.get(bu=connector.bu, crm_lead_id=ids[1]).job_title == "Moved"
    assert moved.skipped["already_seen"] <= reread.skipped["already_seen"] - 3

    # Late commits: stamps inside the window the last poll already read past. Another user's edit is read with the
    # window's other records; a new record of the connector user's changes the count, so those are read again.
    from loopline.connector.engine.model import parse_datetime

    _, wm = pull.load_watermark(connector, "Lead")
    read_before = parse_datetime(crm.get("Lead", ids[2])["SystemModstamp"])
    crm.update("Lead", ids[2], Title="Late")
    edited = parse_datetime(crm.get("Lead", ids[2])["SystemModstamp"])
    back_to = read_before + (wm.modstamp - read_before) / 2  # after the state we read, before the watermark
    crm.request("POST", "/_sandbox/late-commit", json={"id": ids[2], "seconds": (edited - back_to).total_seconds()})
    late_own = create_as_connector_user(9)
    crm.request("POST", "/_sandbox/late-commit", json={"id": late_own, "seconds": 30})
    pull.poll(connector)
    assert Prospect.objects.get(bu=connector.bu, crm_lead_id=ids[2]).job_title == "Late"
    assert Prospect.objects.filter(bu=connector.bu, crm_lead_id=late_own).exists()


def test_two_new_records_with_one_address_make_one_prospect_without_an_error(connector, crm, unique):  # [R9]
    from loopline.connector.models import SyncError

    email = f"twice.{unique}@example.test"
    first = crm.create("Lead", LastName="Twice", Company="Acme", Email=email)
    second = crm.create("Lead", LastName="Twice", Company="Acme", Email=email.upper())
    try:
        counters = sync(connector)
        assert Prospect.objects.filter(bu=connector.bu, email=email).count() == 1
        prospect = Prospect.objects.get(bu=connector.bu, email=email)
        assert prospect.crm_lead_id in (first, second)
        assert not SyncError.objects.filter(connector=connector, crm_id__in=[first, second]).exists(), counters
    finally:
        crm.delete("Lead", second)  # leave no duplicate address behind in the shared sandbox
