"""Reconciliation maths ([R22]): drift that polling missed is found by range summaries, then by key."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.connector.engine.reconcile import bucket_of, compare, differing_buckets, summarise


def test_compare_finds_missing_and_changed():
    loopline = {"00Q000000000001AAA": "h1", "00Q000000000002AAA": "h2", "00Q000000000003AAA": "h3"}
    crm = {"00Q000000000001AAA": "h1", "00Q000000000002AAA": "CHANGED", "00Q000000000004AAA": "h4"}
    diff = compare(loopline, crm, buckets=4)
    assert diff.changed == ("00Q000000000002AAA",)
    assert diff.missing_in_crm == ("00Q000000000003AAA",)
    assert diff.missing_in_loopline == ("00Q000000000004AAA",)
    assert set(diff.to_refetch) == {"00Q000000000002AAA", "00Q000000000004AAA"}
    assert compare(loopline, dict(loopline)).in_sync


def test_id_forms_share_a_bucket():
    assert bucket_of("001A0000006Vm9r") == bucket_of("001A0000006VM9RIAC")


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # no timing: the machine may be busy
@given(
    st.dictionaries(
        st.from_regex(r"00Q[0-9A-Za-z]{15}", fullmatch=True), st.sampled_from(["a", "b"]), max_size=30
    ),
    st.dictionaries(
        st.from_regex(r"00Q[0-9A-Za-z]{15}", fullmatch=True), st.sampled_from(["a", "b"]), max_size=30
    ),
)
def test_compare_equals_naive_diff(left, right):
    diff = compare(left, right, buckets=8)
    lk = {k.lower(): v for k, v in left.items()}
    rk = {k.lower(): v for k, v in right.items()}
    assert {k.lower() for k in diff.missing_in_loopline} == set(rk) - set(lk)
    assert {k.lower() for k in diff.missing_in_crm} == set(lk) - set(rk)
    assert {k.lower() for k in diff.changed} == {k for k in set(lk) & set(rk) if lk[k] != rk[k]}
    if diff.in_sync:
        assert not differing_buckets(summarise(left, 8), summarise(right, 8))
