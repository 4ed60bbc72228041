"""Change capture ([R22]), API budget ([R27]), errors and retries ([R26]) and run counters ([R29])."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import pytest

from loopline.connector.engine.budget import (
    ApiUsage,
    BudgetMode,
    BudgetPolicy,
    RollingCounter,
    decide_budget,
    parse_limit_info,
    pause_on_limit_exceeded,
)
from loopline.connector.engine.capture import (
    PollSettings,
    Watermark,
    budget_floor,
    build_soql,
    composite_poll_body,
    next_poll_interval,
    poll_query,
)
from loopline.connector.engine.counters import RunCounters
from loopline.connector.engine.errors import (
    CrmError,
    ErrorCategory,
    RetryAction,
    RetryPolicy,
    backoff_delay,
    classify,
    next_retry,
    parse_errors,
)
from loopline.connector.engine.model import SkipReason, default_mapping

from .factories import T0, at, lead

# --- capture [R22] ----------------------------------------------------------------------------------------------


def test_soql_for_each_object():
    since = datetime(2024, 1, 1, tzinfo=UTC)
    q = poll_query(Watermark("Lead", since + timedelta(seconds=60)), default_mapping())
    assert q.since == since
    assert q.soql.startswith(
        "SELECT Id, SystemModstamp, LastModifiedById, CreatedDate, CreatedById, IsDeleted, OwnerId"
    )
    assert "IsConverted" in q.soql and "Loopline_Score__c" in q.soql and "HasOptedOutOfEmail" in q.soql
    assert q.soql.endswith(
        "FROM Lead WHERE SystemModstamp >= 2024-01-01T00:00:00Z ORDER BY SystemModstamp, Id"
    )
    assert q.soql.count("OwnerId") == 1  # system + mapped field not duplicated
    contact = poll_query(Watermark("Contact"), default_mapping())
    assert "Account.Name" in contact.soql and "WHERE" not in contact.soql
    pa = build_soql("PersonAccount", ["Id"], since, limit=10)
    assert pa == (
        "SELECT Id FROM Account WHERE IsPersonAccount = true AND SystemModstamp >= 2024-01-01T00:00:00Z "
        "ORDER BY SystemModstamp, Id LIMIT 10"
    )


def test_composite_poll_body_packs_five_queries_per_call():
    queries = [poll_query(Watermark(o), default_mapping()) for o in ["Lead", "Contact", "PersonAccount"] * 2]
    bodies = composite_poll_body(queries, "59.0")
    assert [len(b["compositeRequest"]) for b in bodies] == [5, 1]
    first = bodies[0]["compositeRequest"][0]
    assert first["method"] == "GET" and first["referenceId"] == "Lead"
    assert first["url"].startswith("/services/data/v59.0/queryAll?q=SELECT%20Id")
    assert unquote(first["url"].split("q=")[1]) == queries[0].soql


def test_overlap_dedup_and_safe_advance():
    wm = Watermark("Lead", at(10))
    assert wm.since() == at(9)
    r1, r2 = lead(modstamp=at(10.5)), lead(rid="00Q000000000002AAA", modstamp=at(11))
    wm2 = wm.advance([r1, r2])
    assert wm2.modstamp == at(11)
    fresh, dropped = wm2.filter_new([r1, r2, lead(rid="00Q000000000003AAA", modstamp=at(11))])
    assert [r.id for r in fresh] == ["00Q000000000003AAA"] and dropped == 2
    # a record changed again (new modstamp) is new
    assert wm2.filter_new([lead(modstamp=at(12))])[0]
    # duplicates inside one batch
    assert wm.filter_new([r2, r2])[1] == 1


def test_advance_never_passes_pending_records_nor_goes_back():
    wm = Watermark("Lead", at(10))
    done = [lead(modstamp=at(12)), lead(rid="00Q000000000002AAA", modstamp=at(15))]
    pending = [lead(rid="00Q000000000003AAA", modstamp=at(13))]
    assert wm.advance(done, pending=pending).modstamp == at(13)
    assert wm.advance([lead(modstamp=at(5))]).modstamp == at(10)
    assert wm.advance([]).modstamp == at(10)


def test_many_records_with_one_modstamp_across_pages():
    # page 1 processed, crash, poll again: same modstamp comes back, the processed ones are skipped
    wm = Watermark("Lead", at(0))
    same = [lead(rid=f"00Q{i:015d}", modstamp=at(5)) for i in range(6)]
    wm = wm.advance(same[:3])
    fresh, dropped = wm.filter_new(same)
    assert [r.id for r in fresh] == [r.id for r in same[3:]] and dropped == 3
    wm = wm.advance(fresh)
    assert wm.modstamp == at(5) and len(wm.recent_keys) == 6
    # keys older than the overlap are pruned
    later = wm.advance([lead(rid="00Q999999999999AAA", modstamp=at(10))])
    assert len(later.recent_keys) == 1
    assert Watermark.from_json(later.to_json()) == later


def test_adaptive_poll_interval():
    s = PollSettings()
    assert next_poll_interval([], s) == timedelta(seconds=5)
    assert next_poll_interval([3], s) == timedelta(seconds=5)
    assert next_poll_interval([500], s) == timedelta(seconds=2)  # busy → tighten
    assert next_poll_interval([5, 0, 0], s) == timedelta(seconds=20)  # idle → back off
    assert next_poll_interval([0] * 30, s) == timedelta(minutes=5)  # capped
    assert next_poll_interval([3], s, budget_stretch=4) == timedelta(seconds=20)  # [R27] slow
    floor = budget_floor(15_000)  # a small org: 1,500 polls/day at most
    assert floor == timedelta(seconds=57.6)
    assert next_poll_interval([3], s, floor=floor) == floor
    assert budget_floor(1_000_000) < timedelta(seconds=5)
    with pytest.raises(ValueError):
        PollSettings(base=timedelta(seconds=1))


# --- budget [R27] -----------------------------------------------------------------------------------------------


def test_parse_limit_info():
    assert parse_limit_info("api-usage=18/5000") == ApiUsage(18, 5000)
    assert parse_limit_info("api-usage=25/15000; per-app-api-usage=17/250(appName=x)") == ApiUsage(25, 15000)
    assert parse_limit_info(None) is None and parse_limit_info("garbage") is None


@pytest.mark.parametrize(
    ("calls", "mode"),
    [
        (0, BudgetMode.NORMAL),
        (2099, BudgetMode.NORMAL),
        (2100, BudgetMode.SLOW),
        (2700, BudgetMode.DEFER_BULK),
        (3000, BudgetMode.PAUSED),
    ],
)
def test_budget_thresholds(calls, mode):
    # share = 20% of 15,000 = 3,000 calls; slow at 70%, defer bulk at 90%, pause when used up
    decision = decide_budget(ApiUsage(5000, 15000), calls, T0)
    assert decision.mode is mode and decision.share_calls == 3000
    assert decision.allows_work is (mode is not BudgetMode.PAUSED)
    assert decision.allows_bulk is (mode in (BudgetMode.NORMAL, BudgetMode.SLOW))
    if mode in (BudgetMode.SLOW, BudgetMode.DEFER_BULK):
        assert decision.poll_stretch > 1


def test_budget_pause_cases():
    assert decide_budget(ApiUsage(15000, 15000), 0, T0).mode is BudgetMode.PAUSED
    assert decide_budget(None, 10, T0).mode is BudgetMode.NORMAL
    paused = decide_budget(ApiUsage(1, 15000), 0, T0, paused_until=at(30))
    assert paused.mode is BudgetMode.PAUSED and paused.until == at(30)
    assert pause_on_limit_exceeded(T0) == T0 + BudgetPolicy().probe_after
    with pytest.raises(ValueError):
        BudgetPolicy(share=0)


def test_rolling_counter():
    counter = RollingCounter()
    for hour in range(24):
        counter = counter.add(T0 + timedelta(hours=hour), 100)
    now = T0 + timedelta(hours=23, minutes=30)
    assert counter.total(now) == 2400
    assert counter.when_below(2350, now) == T0 + timedelta(hours=25)  # when the first hour leaves the window
    assert counter.when_below(5000, now) is None
    assert RollingCounter.from_dict(counter.as_dict()) == counter
    later = counter.add(T0 + timedelta(hours=30))
    assert min(later.buckets) > T0  # old buckets dropped
    decision = decide_budget(ApiUsage(10, 15000), 3000, now, counter=counter)
    assert decision.mode is BudgetMode.PAUSED and decision.until is not None


# --- errors [R26] -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "category"),
    [
        ("UNABLE_TO_LOCK_ROW", 400, ErrorCategory.TRANSIENT),
        ("SERVER_UNAVAILABLE", 503, ErrorCategory.TRANSIENT),
        (None, 502, ErrorCategory.TRANSIENT),
        ("TIMEOUT", None, ErrorCategory.TRANSIENT),
        ("REQUIRED_FIELD_MISSING", 400, ErrorCategory.VALIDATION),
        ("INVALID_EMAIL_ADDRESS", 400, ErrorCategory.VALIDATION),
        ("FIELD_CUSTOM_VALIDATION_EXCEPTION", 400, ErrorCategory.VALIDATION),
        ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", 400, ErrorCategory.VALIDATION),
        ("DUPLICATES_DETECTED", 400, ErrorCategory.VALIDATION),
        ("CANNOT_UPDATE_CONVERTED_LEAD", 400, ErrorCategory.VALIDATION),
        ("ENTITY_IS_DELETED", 404, ErrorCategory.VALIDATION),
        ("INVALID_FIELD", 400, ErrorCategory.CONFIGURATION),
        ("INVALID_SESSION_ID", 401, ErrorCategory.AUTH),
        ("REQUEST_LIMIT_EXCEEDED", 403, ErrorCategory.LIMIT),
        ("SOMETHING_NEW", 400, ErrorCategory.VALIDATION),
    ],
)
def test_classify(code, status, category):
    assert classify(code, status).category is category


def test_classify_flags():
    assert classify("ENTITY_IS_DELETED").record_deleted
    assert classify("CANNOT_UPDATE_CONVERTED_LEAD").lead_converted
    concurrent = classify("REQUEST_LIMIT_EXCEEDED", 403, "ConcurrentPerOrgLongTxn Limit exceeded")
    assert concurrent.category is ErrorCategory.TRANSIENT


def test_parse_error_shapes():
    assert parse_errors([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])[
        0
    ].code == ("INVALID_SESSION_ID")
    e = parse_errors({"statusCode": "STRING_TOO_LONG", "message": "m", "fields": ["Title"]})[0]
    assert e == CrmError("STRING_TOO_LONG", "m", ("Title",))
    assert (
        parse_errors({"error": "invalid_grant", "error_description": "audience is invalid"})[0].code
        == "invalid_grant"
    )
    assert parse_errors(None, http_status=503)[0].code == "SERVER_UNAVAILABLE"
    assert parse_errors("oops", http_status=500)[0].code == "HTTP_500"


def test_backoff_is_jittered_exponential_and_capped():
    policy = RetryPolicy(base=timedelta(seconds=10), cap=timedelta(minutes=5))
    assert backoff_delay(1, policy, rng=lambda: 0.0) == timedelta(seconds=5)
    assert backoff_delay(1, policy, rng=lambda: 0.999999) < timedelta(seconds=10)
    assert backoff_delay(3, policy, rng=lambda: 0.0) == timedelta(seconds=20)
    assert backoff_delay(50, policy, rng=lambda: 1.0) == timedelta(minutes=5)


def test_next_retry():
    lock = CrmError("UNABLE_TO_LOCK_ROW", "locked")
    d = next_retry(lock, 1, T0, rng=lambda: 0.5)
    assert d.action is RetryAction.RETRY_AT and T0 < d.at <= T0 + timedelta(seconds=5)
    assert next_retry(lock, 10, T0).action is RetryAction.GIVE_UP
    assert next_retry(CrmError("INVALID_SESSION_ID", ""), 1, T0).action is RetryAction.REMINT_TOKEN
    assert next_retry(CrmError("INVALID_SESSION_ID", ""), 2, T0).action is RetryAction.GIVE_UP
    assert next_retry(CrmError("REQUEST_LIMIT_EXCEEDED", ""), 1, T0).action is RetryAction.PAUSE_FOR_BUDGET
    assert next_retry(CrmError("DUPLICATES_DETECTED", ""), 1, T0).action is RetryAction.WAIT_FOR_CHANGE
    assert CrmError.from_bulk(
        "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --"
    ) == (CrmError("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]", ("LastName",)))


# --- counters [R29] ---------------------------------------------------------------------------------------------


def test_counters_say_why_nothing_happened():
    c = RunCounters(fetched=5)
    c.skip(SkipReason.ECHO, 3)
    c.skip(SkipReason.NO_EMAIL, 2)
    assert c.did_nothing
    text = c.summary()
    assert text.startswith(
        "nothing written: all records skipped, mostly the connector's own writes coming back"
    )
    assert "skipped 5 (3 the connector's own writes coming back, 2 no email address)" in text
    assert RunCounters().summary().startswith("nothing written: no changes to process")
    assert RunCounters(note="connector paused").summary().startswith("nothing written: connector paused")


def test_counters_merge_and_round_trip():
    a = RunCounters(fetched=2, created=1)
    b = RunCounters(fetched=1, updated=1)
    b.fail("STRING_TOO_LONG")
    a.merge(b)
    assert (a.fetched, a.created, a.updated, a.failed) == (3, 1, 1, 1)
    assert "failed 1 (1 STRING_TOO_LONG)" in a.summary() and not a.did_nothing
    assert RunCounters.from_dict(a.as_dict()) == a


def test_overlap_count_expects_our_latest_reads_in_the_window_less_those_read_again():  # [R22]
    from loopline.connector.engine.capture import overlap_count, record_key

    me, other = "005000000000002AAA", "005000000000001AAA"
    t0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)

    def rid(i: int) -> str:
        return f"00Q00000000000{i}AAA"

    def read(i: int, seconds: int, by: str = me):
        return (rid(i), t0 + timedelta(seconds=seconds), by)

    reads = [read(1, 1), read(2, 2), read(3, 3), read(4, 4), read(6, 4, other), read(1, 3, other), read(5, 5)]
    keys = {record_key(i, m) for i, m, _ in reads}
    own = {record_key(i, m) for i, m, by in reads if by == me}
    wm = Watermark("Lead", t0 + timedelta(seconds=5), frozenset(keys), None, frozenset(own))
    assert overlap_count(wm, me, timedelta(seconds=60), threshold=10) is None  # few records: read the window again
    assert overlap_count(wm, "", timedelta(seconds=60), threshold=1) is None  # connector user unknown
    check = overlap_count(wm, me, timedelta(seconds=60), threshold=1)
    assert check is not None and check.until == t0 + timedelta(seconds=5)
    assert "SELECT COUNT() FROM Lead WHERE SystemModstamp >= " in check.count_soql()
    assert f"LastModifiedById = '{me}'" in check.count_soql()
    # Ours in [since, until): 2, 3, 4 — not 1 (last read as another user's), not 5 (at the watermark: read again),
    # not 6 (another user's).
    assert check.expected == {rid(i).lower() for i in (2, 3, 4)}
    assert check.complete(3, [])
    assert not check.complete(4, [])  # a late commit of ours
    assert check.complete(2, [rid(2)])  # 2 was written again since (read by this poll): it left the count
    assert not check.complete(3, [rid(2)])  # ... and one late commit
    assert not check.complete(2, [])  # fewer than expected (e.g. purged): read again to be safe
    # The own flags survive the row's JSON round trip.
    assert Watermark.from_json(wm.to_json()).own == wm.own
