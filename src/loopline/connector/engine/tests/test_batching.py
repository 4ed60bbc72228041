"""Push planning and result mapping ([R23], [R25], [R26])."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from loopline.connector.engine.batching import (
    BatchLimits,
    OutboxItem,
    PlanMode,
    WriteOp,
    bulk_outcomes,
    composite_outcomes,
    outcomes_by_entry,
    plan_push,
)

from .factories import T0

C, U = WriteOp.CREATE, WriteOp.UPDATE


def item(key, seq, op=U, payload=None, crm_id="00Q000000000001AAA", obj="Lead", eid=None):
    return OutboxItem(
        key,
        seq,
        op,
        obj,
        payload or {},
        T0 + timedelta(seconds=seq),
        None if op is C else crm_id,
        eid if eid is not None else f"{key}-{seq}",
    )


def test_create_followed_by_updates_becomes_one_create():
    # [R23] coalesced, later values win
    plan = plan_push(
        [
            item("p1", 1, C, {"LastName": "Lee", "Title": "CEO"}),
            item("p1", 2, U, {"Title": "CTO"}, crm_id=None),
            item("p1", 3, U, {"Phone": "1"}, crm_id=None),
        ]
    )
    (write,) = plan.writes
    assert write.operation is C and dict(write.payload) == {"LastName": "Lee", "Title": "CTO", "Phone": "1"}
    assert write.entry_ids == ("p1-1", "p1-2", "p1-3")
    assert len(plan.steps) == 1 and plan.api_calls == 1


def test_update_before_create_keeps_order_in_two_steps():
    # [R19] unlinked record: updates to the old record, then a new record — two steps, in order
    plan = plan_push([item("p1", 2, C, {"LastName": "Lee"}), item("p1", 1, U, {"Title": "CEO"})])
    assert [w.operation for w in plan.writes] == [U, C]
    assert len(plan.steps) == 2


def test_update_without_crm_id_waits_for_its_create():
    plan = plan_push([item("p1", 1, U, {"Title": "x"}, crm_id=None), item("p1", 2, U, {"Title": "y"})])
    assert not plan.writes and [e.sequence for e in plan.deferred] == [1, 2]


def test_groups_by_object_and_operation_with_limits():
    entries = [item(f"p{i}", 1, U, {"Title": str(i)}, crm_id=f"00Q{i:015d}") for i in range(450)]
    entries += [item(f"c{i}", 1, C, {"LastName": "x"}, obj="Contact") for i in range(10)]
    plan = plan_push(entries, BatchLimits())
    (step,) = plan.steps
    sizes = [(c.object_type, c.operation, len(c.writes)) for r in step.requests for c in r.collections]
    assert sorted(sizes) == sorted([("Lead", U, 200), ("Lead", U, 200), ("Lead", U, 50), ("Contact", C, 10)])
    assert len(step.requests) == 1  # 4 collections ≤ 5 per composite call
    single = plan_push(entries, BatchLimits(use_composite=False))
    assert single.api_calls == 4


def test_composite_body_and_record_shape():
    plan = plan_push(
        [item("p1", 1, U, {"Title": "CEO"}), item("p2", 1, C, {"LastName": "Lee"}, obj="PersonAccount")]
    )
    body = plan.steps[0].requests[0].body("59.0")
    subs = body["compositeRequest"]
    assert body["allOrNone"] is False
    assert [(s["method"], s["url"], s["referenceId"]) for s in subs] == [
        ("PATCH", "/services/data/v59.0/composite/sobjects", "c0"),
        ("POST", "/services/data/v59.0/composite/sobjects", "c1"),
    ]
    assert subs[0]["body"]["records"] == [
        {"attributes": {"type": "Lead"}, "Title": "CEO", "Id": "00Q000000000001AAA"}
    ]
    assert subs[1]["body"]["records"] == [{"attributes": {"type": "Account"}, "LastName": "Lee"}]


def test_results_map_back_per_record_one_bad_record_does_not_block_others():
    # [R23][R26]
    plan = plan_push(
        [item("p1", 1, C, {"LastName": "A"}), item("p2", 1, C, {}), item("p3", 1, U, {"Title": "x"})]
    )
    request = plan.steps[0].requests[0]
    response = {
        "compositeResponse": [
            {
                "referenceId": "c0",
                "httpStatusCode": 200,
                "body": [
                    {"id": "00QNEW1", "success": True, "errors": []},
                    {
                        "success": False,
                        "errors": [
                            {
                                "statusCode": "REQUIRED_FIELD_MISSING",
                                "message": "Required fields are missing: [LastName]",
                                "fields": ["LastName"],
                            }
                        ],
                    },
                ],
            },
            {
                "referenceId": "c1",
                "httpStatusCode": 503,
                "body": [{"errorCode": "SERVER_UNAVAILABLE", "message": "down"}],
            },
        ]
    }
    # creates were grouped first (p1, p2), then the update (p3)
    outcomes = outcomes_by_entry(composite_outcomes(request, response))
    assert outcomes["p1-1"].success and outcomes["p1-1"].crm_id == "00QNEW1" and outcomes["p1-1"].created
    assert not outcomes["p2-1"].success and outcomes["p2-1"].errors[0].code == "REQUIRED_FIELD_MISSING"
    assert outcomes["p2-1"].errors[0].fields == ("LastName",)
    assert not outcomes["p3-1"].success and outcomes["p3-1"].errors[0].code == "SERVER_UNAVAILABLE"


def test_whole_call_failure_fails_every_write():
    plan = plan_push([item("p1", 1, U, {"Title": "x"})], BatchLimits(use_composite=False))
    request = plan.steps[0].requests[0]
    outcomes = composite_outcomes(
        request, [{"errorCode": "INVALID_SESSION_ID", "message": "Session expired"}], http_status=401
    )
    assert outcomes[0].errors[0].code == "INVALID_SESSION_ID"


def test_failed_key_later_steps_are_dropped():
    plan = plan_push(
        [
            item("p1", 1, U, {"Title": "a"}),
            item("p1", 2, C, {"LastName": "b"}),
            item("p2", 1, U, {"Title": "c"}, crm_id="00Q000000000002AAA"),
        ]
    )
    rest = plan.without_keys(["p1"], from_step=1)
    assert rest.writes == ()


def test_bulk_plan_above_threshold():
    # [R23] Bulk API 2.0 above the backlog threshold; creates stay on collections ([R25])
    entries = [
        item(f"p{i}", 1, U, {"Title": f"t{i}", "DoNotCall": i % 2 == 0}, crm_id=f"00Q{i:015d}")
        for i in range(5)
    ]
    entries.append(item("new", 1, C, {"LastName": "x"}))
    plan = plan_push(entries, BatchLimits(bulk_threshold=3))
    assert plan.mode is PlanMode.BULK
    (step,) = plan.steps
    (job,) = step.bulk_jobs
    assert job.job_body() == {
        "object": "Lead",
        "operation": "update",
        "contentType": "CSV",
        "lineEnding": "LF",
    }
    rows = list(csv.DictReader(io.StringIO(job.csv())))
    assert rows[0] == {"Id": "00Q000000000000000", "DoNotCall": "true", "Title": "t0"}
    assert [w.operation for r in step.requests for w in r.writes] == [C]
    assert plan_push(entries, backlog=10, limits=BatchLimits(bulk_threshold=20)).mode is PlanMode.COLLECTIONS
    assert plan_push(entries[:1], backlog=2001).mode is PlanMode.BULK

    outcomes = bulk_outcomes(
        job,
        successful=[{"sf__Id": "00Q000000000000000", "sf__Created": "false"}],
        failed=[
            {
                "sf__Id": "",
                "Id": "00Q000000000000001",
                "sf__Error": "STRING_TOO_LONG:Title: too long:Title --",
            }
        ],
    )
    by_id = {o.write.crm_id: o for o in outcomes}
    assert by_id["00Q000000000000000"].success
    assert by_id["00Q000000000000001"].errors[0].code == "STRING_TOO_LONG"
    assert by_id["00Q000000000000001"].errors[0].fields == ("Title",)
    assert by_id["00Q000000000000002"].errors[0].code == "UNPROCESSED"


def test_bulk_csv_nulls():
    entries = [item("p1", 1, U, {"Title": None})]
    job = plan_push(entries, BatchLimits(bulk_threshold=0)).steps[0].bulk_jobs[0]
    assert job.csv().splitlines()[1] == "00Q000000000001AAA,#N/A"
