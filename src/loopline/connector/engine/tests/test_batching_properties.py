"""Property tests for push planning ([R23], [R25]): for any outbox, the plan reproduces every record's final state,
keeps per-record order, never puts two writes of one record in one step, and respects the 200-record / 5-collection
limits."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.connector.engine.batching import (
    BatchLimits,
    CoalescedWrite,
    OutboxItem,
    PlanMode,
    WriteOp,
    plan_push,
)

from .factories import T0


@st.composite
def outboxes(draw: st.DrawFn) -> list[OutboxItem]:
    n_keys = draw(st.integers(1, 8))
    entries: list[OutboxItem] = []
    entry_id = 0
    for k in range(n_keys):
        n = draw(st.integers(1, 6))
        sequences = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n, unique=True))
        for seq in sequences:
            op = draw(st.sampled_from([WriteOp.CREATE, WriteOp.UPDATE, WriteOp.UPDATE]))
            obj = draw(st.sampled_from(["Lead", "Lead", "Contact"]))
            crm_id = (
                None
                if op is WriteOp.CREATE
                else draw(st.sampled_from([None, f"00Q{k:012d}AAA", f"003{k:012d}AAA"]))
            )
            payload = draw(
                st.dictionaries(st.sampled_from(["A", "B", "C", "D"]), st.integers(0, 9), max_size=3)
            )
            entries.append(
                OutboxItem(
                    f"p{k}",
                    seq,
                    op,
                    obj,
                    payload,
                    T0 + timedelta(seconds=draw(st.integers(0, 100))),
                    crm_id,
                    entry_id,
                )
            )
            entry_id += 1
    return draw(st.permutations(entries))


def _apply(
    store: dict[str, dict[str, dict[str, Any]]],
    key: str,
    op: WriteOp,
    obj: str,
    crm_id: str | None,
    payload: dict[str, Any],
    creates: dict[str, int],
) -> None:
    records = store.setdefault(key, {})
    if op is WriteOp.CREATE:
        creates[key] = creates.get(key, 0) + 1
        records[f"{obj}#new{creates[key]}"] = dict(payload)
    elif crm_id is None:
        records[f"{obj}#new{creates[key]}"].update(payload)
    else:
        records.setdefault(f"{obj}#{crm_id}", {}).update(payload)


def truth(entries: Iterable[OutboxItem]) -> dict[str, dict[str, dict[str, Any]]]:
    store: dict[str, dict[str, dict[str, Any]]] = {}
    creates: dict[str, int] = {}
    for e in sorted(entries, key=lambda e: (e.key, e.sequence)):
        _apply(store, e.key, e.operation, e.object_type, e.crm_id, dict(e.payload), creates)
    return store


def replay(writes: Iterable[CoalescedWrite]) -> dict[str, dict[str, dict[str, Any]]]:
    store: dict[str, dict[str, dict[str, Any]]] = {}
    creates: dict[str, int] = {}
    for w in writes:
        _apply(store, w.key, w.operation, w.object_type, w.crm_id, dict(w.payload), creates)
    return store


LIMITS = st.builds(
    BatchLimits,
    max_records=st.integers(1, 200),
    max_collections_per_request=st.integers(1, 5),
    use_composite=st.booleans(),
    bulk_threshold=st.sampled_from([2000, 10]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outboxes(), LIMITS)
def test_plan_preserves_final_state_order_and_limits(entries, limits):
    plan = plan_push(entries, limits)
    deferred = {e.entry_id for e in plan.deferred}
    executed = [e for e in entries if e.entry_id not in deferred]

    # Every entry is either in exactly one write or deferred.
    covered = [i for w in plan.writes for i in w.entry_ids]
    assert sorted(covered + sorted(deferred)) == sorted(e.entry_id for e in entries)

    # Deferred entries of a key are a suffix: nothing after them runs ([R23] per-record order).
    for e in plan.deferred:
        later = [x for x in executed if x.key == e.key and x.sequence > e.sequence]
        assert not later

    # Steps in order, writes in any order inside a step → same final state as the raw entries in sequence order.
    writes_in_step_order = [w for step in plan.steps for w in reversed(step.writes)]
    assert replay(writes_in_step_order) == truth(executed)

    last_seq: dict[str, int] = {}
    for step in plan.steps:
        keys = [w.key for w in step.writes]
        assert len(keys) == len(set(keys)), "two writes of one record in one step"
        for w in step.writes:
            assert w.first_sequence > last_seq.get(w.key, -1)
            last_seq[w.key] = w.last_sequence
        for request in step.requests:
            assert (
                1
                <= len(request.collections)
                <= (limits.max_collections_per_request if limits.use_composite else 1)
            )
            for c in request.collections:
                assert 1 <= len(c.writes) <= limits.max_records <= 200
                assert {w.object_type for w in c.writes} == {c.object_type}
                assert {w.operation for w in c.writes} == {c.operation}
        step_writes = {id(w) for w in step.writes}
        in_requests = [id(w) for r in step.requests for w in r.writes]
        in_jobs = [id(w) for j in step.bulk_jobs for w in j.writes]
        assert sorted(in_requests + in_jobs) == sorted(step_writes)
        if plan.mode is PlanMode.BULK:
            assert all(
                w.operation is WriteOp.CREATE for r in step.requests for w in r.writes
            )  # creates never bulk
        else:
            assert not step.bulk_jobs


@settings(max_examples=100, deadline=None)
@given(outboxes())
def test_without_keys_drops_only_those_keys(entries):
    plan = plan_push(entries)
    if not plan.writes:
        return
    failed = plan.writes[0].key
    rest = plan.without_keys([failed])
    assert all(w.key != failed for w in rest.writes)
    assert sorted(i for w in rest.writes for i in w.entry_ids) == sorted(
        i for w in plan.writes if w.key != failed for i in w.entry_ids
    )
