"""The program engine: every step type and wait kind, pause/resume, crash-restart without double actions ([M20], [M21])."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from loopline.automation.programs import runner, services
from loopline.automation.programs.models import Program, ProgramMember, ProgramStepLog
from loopline.prospects import services as prospect_services
from loopline.prospects.models import ActivityType, Prospect, ProspectTag

from .conftest import make_due

pytestmark = pytest.mark.django_db

TAG = {"kind": "action", "config": {"actions": [{"type": "add_tag", "tag": "nurtured"}]}}
SCORE = {"kind": "action", "config": {"actions": [{"type": "adjust_score", "points": 10}]}}
END = {"kind": "end"}


def tags_of(prospect) -> set[str]:
    return set(ProspectTag.objects.filter(prospect=prospect).values_list("tag__name", flat=True))


def test_action_step_runs_set_based_and_ledger_records_each_prospect(build, run, make_prospects):  # [M20]
    program, (tag, end) = build([{**TAG, "next": 1}, END])
    people = make_prospects(5)
    assert services.add_prospects(program, [p.pk for p in people]) == 5
    stats = run(program)
    assert stats["advanced"] == 5
    for p in people:
        assert tags_of(p) == {"nurtured"}
    assert ProgramStepLog.objects.filter(step=tag, outcome="done").count() == 5
    assert ProgramStepLog.objects.filter(step=end).count() == 5
    assert set(ProgramMember.objects.values_list("status", flat=True)) == {"finished"}
    assert run(program)["processed"] == 0  # nothing is due twice


def test_score_action_and_per_prospect_fallback_action(build, run, make_prospects, marketing_user):
    program, _steps = build([{**SCORE, "next": 1},
                            {"kind": "action", "config": {"actions": [{"type": "assign_user",
                                                                       "user_id": marketing_user.pk}]}}])
    people = make_prospects(3)
    services.add_prospects(program, [p.pk for p in people])
    run(program)
    for p in people:
        p.refresh_from_db()
        assert p.score == 10
        assert p.assigned_user_id == marketing_user.pk


def test_change_grade_action_step_moves_each_grade_once(build, run, make_prospects):  # [M14], [M20]
    program, (step,) = build([{"kind": "action", "config": {"actions": [{"type": "change_grade", "thirds": 3}]}}])
    people = make_prospects(3)
    services.add_prospects(program, [p.pk for p in people])
    assert run(program)["advanced"] == 3
    assert run(program)["processed"] == 0
    assert set(Prospect.objects.filter(pk__in=[p.pk for p in people]).values_list("grade", flat=True)) == {"C"}
    assert ProgramStepLog.objects.filter(step=step, outcome="done").count() == 3
    from loopline.automation.programs import selectors

    assert selectors.step_text(step, {}) == "Change grade: +3/3 letter"  # how the program page shows the step


def test_delay_wait_holds_the_prospect_until_due(build, run, make_prospects):
    program, (_first, second) = build([{**TAG, "next": 1},
                                      {**SCORE, "wait_kind": "delay", "wait_amount": 2, "wait_unit": "days"}])
    (p,) = make_prospects(1)
    services.add_prospects(program, [p.pk])
    before = timezone.now()
    run(program)
    member = ProgramMember.objects.get(program=program)
    assert member.step_id == second.pk and member.status == "active"
    assert before + dt.timedelta(days=2) <= member.next_run_at <= timezone.now() + dt.timedelta(days=2)
    run(program)
    p.refresh_from_db()
    assert p.score == 0  # still waiting
    make_due(program)
    run(program)
    p.refresh_from_db()
    assert p.score == 10
    assert ProgramMember.objects.get(program=program).status == "finished"


def test_wait_until_a_date(build, run, make_prospects):
    when = timezone.now() + dt.timedelta(days=10)
    program, (_first, second) = build([{**TAG, "next": 1},
                                      {**SCORE, "wait_kind": "until", "wait_until": when.isoformat()}])
    (p,) = make_prospects(1)
    services.add_prospects(program, [p.pk])
    run(program)
    member = ProgramMember.objects.get(program=program)
    assert member.step_id == second.pk
    assert abs((member.next_run_at - when).total_seconds()) < 1


def test_wait_until_a_past_date_runs_at_once(build, run, make_prospects):
    when = timezone.now() - dt.timedelta(days=1)
    program, _ = build([{**TAG, "next": 1}, {**SCORE, "wait_kind": "until", "wait_until": when.isoformat()}])
    (p,) = make_prospects(1)
    services.add_prospects(program, [p.pk])
    run(program)
    p.refresh_from_db()
    assert p.score == 10


def _trigger_program(build):
    return build([
        {"kind": "trigger", "config": {"event": "page_visit", "url_contains": "/pricing"}, "wait_kind": "up_to",
         "wait_amount": 3, "wait_unit": "days", "yes": 1, "no": 2},
        {"kind": "action", "config": {"actions": [{"type": "add_tag", "tag": "hot"}]}},
        {"kind": "action", "config": {"actions": [{"type": "add_tag", "tag": "cold"}]}},
    ])


def test_trigger_fires_as_soon_as_the_activity_arrives(build, run, make_prospects):  # [M20]
    program, (trigger, _hot, _cold) = _trigger_program(build)
    a, b = make_prospects(2)
    services.add_prospects(program, [a.pk, b.pk])
    run(program)
    members = {m.prospect_id: m for m in ProgramMember.objects.filter(program=program)}
    assert members[a.pk].step_id == trigger.pk
    assert members[a.pk].next_run_at > timezone.now() + dt.timedelta(days=2)  # listening until the deadline
    prospect_services.record_activity(a.bu_id, ActivityType.PAGE_VIEW, prospect=a, url="https://x.test/pricing")
    prospect_services.record_activity(b.bu_id, ActivityType.PAGE_VIEW, prospect=b, url="https://x.test/about")
    run(program)
    assert tags_of(a) == {"hot"}
    assert tags_of(b) == set()
    assert ProgramMember.objects.get(prospect=b).step_id == trigger.pk
    assert ProgramStepLog.objects.get(step=trigger, prospect=a).outcome == "yes"


def test_trigger_ignores_machine_events_and_activity_before_entering(build, run, make_prospects):
    program, (trigger, _hot, _cold) = _trigger_program(build)
    (a,) = make_prospects(1)
    prospect_services.record_activity(a.bu_id, ActivityType.PAGE_VIEW, prospect=a, url="https://x.test/pricing",
                                      occurred_at=timezone.now() - dt.timedelta(hours=1))
    services.add_prospects(program, [a.pk])
    prospect_services.record_activity(a.bu_id, ActivityType.PAGE_VIEW, prospect=a, url="https://x.test/pricing",
                                      is_machine=True)
    run(program)
    assert ProgramMember.objects.get(prospect=a).step_id == trigger.pk


def test_trigger_times_out_to_the_no_branch(build, run, make_prospects):
    program, (trigger, _hot, _cold) = _trigger_program(build)
    (a,) = make_prospects(1)
    services.add_prospects(program, [a.pk])
    run(program)
    past = timezone.now() - dt.timedelta(seconds=1)
    ProgramMember.objects.filter(program=program).update(deadline_at=past, next_run_at=past)
    run(program)
    assert tags_of(a) == {"cold"}
    assert ProgramStepLog.objects.get(step=trigger, prospect=a).outcome == "no"


def test_rule_step_splits_yes_and_no(build, run, make_prospects):  # [M20] with [M17] criteria
    program, (rule, _yes, _no) = build([
        {"kind": "rule", "config": {"criteria": {"match": "all", "rules": [
            {"field": "score", "op": "gte", "value": 50}]}}, "yes": 1, "no": 2},
        {"kind": "action", "config": {"actions": [{"type": "add_tag", "tag": "qualified"}]}},
        {"kind": "action", "config": {"actions": [{"type": "add_tag", "tag": "nurture-more"}]}},
    ])
    low = make_prospects(2, prefix="low")
    high = make_prospects(2, prefix="high", score=80)
    services.add_prospects(program, [p.pk for p in low + high])
    run(program)
    assert all(tags_of(p) == {"qualified"} for p in high)
    assert all(tags_of(p) == {"nurture-more"} for p in low)
    assert ProgramStepLog.objects.filter(step=rule, outcome="yes").count() == 2
    assert ProgramStepLog.objects.filter(step=rule, outcome="no").count() == 2


def test_rule_step_waits_before_checking(build, run, make_prospects):
    program, (_rule, _yes) = build([
        {"kind": "rule", "config": {"criteria": {"match": "all", "rules": [
            {"field": "score", "op": "gte", "value": 50}]}}, "wait_kind": "delay", "wait_amount": 1,
         "wait_unit": "hours", "yes": 1, "no": None},
        TAG,
    ])
    (p,) = make_prospects(1, score=70)
    services.add_prospects(program, [p.pk])
    run(program)
    assert tags_of(p) == set()
    make_due(program)
    run(program)
    assert tags_of(p) == {"nurtured"}


def test_end_step_finishes_and_missing_branch_ends_too(build, run, make_prospects):
    program, (rule, end) = build([
        {"kind": "rule", "config": {"criteria": {"match": "all", "rules": [
            {"field": "score", "op": "gte", "value": 50}]}}, "yes": 1, "no": None},
        END,
    ])
    a, b = make_prospects(2)
    Prospect.objects.filter(pk=a.pk).update(score=60)
    services.add_prospects(program, [a.pk, b.pk])
    run(program)
    ma, mb = ProgramMember.objects.get(prospect=a), ProgramMember.objects.get(prospect=b)
    assert ma.status == mb.status == "finished"
    assert ma.step_id == end.pk and mb.step_id == rule.pk
    assert ProgramStepLog.objects.filter(step=end).count() == 1


def test_pause_keeps_place_and_remaining_wait(build, run, make_prospects, marketing_access):  # [M20]
    program, (_first, second) = build([{**TAG, "next": 1},
                                      {**SCORE, "wait_kind": "delay", "wait_amount": 1, "wait_unit": "days"}])
    (p,) = make_prospects(1)
    services.add_prospects(program, [p.pk])
    run(program)
    services.pause(marketing_access, program)
    program.refresh_from_db()
    member = ProgramMember.objects.get(program=program)
    remaining = member.next_run_at - timezone.now()
    # While paused nothing moves, even when the wait is over.
    make_due(program)
    due_at = ProgramMember.objects.get(program=program).next_run_at
    assert runner.run_due(sync=False)["processed"] == 0
    p.refresh_from_db()
    assert p.score == 0
    # Paused an hour ago with a day to go: after resuming, a day is still to go (not less).
    Program.objects.filter(pk=program.pk).update(paused_at=timezone.now() - dt.timedelta(hours=1))
    ProgramMember.objects.filter(program=program).update(next_run_at=timezone.now() + remaining - dt.timedelta(hours=1))
    services.resume(marketing_access, Program.objects.get(pk=program.pk))
    member = ProgramMember.objects.get(program=program)
    assert member.step_id == second.pk
    assert member.next_run_at > timezone.now() + remaining - dt.timedelta(minutes=5)
    assert due_at is not None
    assert Program.objects.get(pk=program.pk).status == "running"


def test_crash_mid_batch_then_restart_repeats_nothing(build, run, make_prospects, monkeypatch):  # [M21]
    program, (score, _end) = build([{**SCORE, "next": 1}, END])
    people = make_prospects(6)
    services.add_prospects(program, [p.pk for p in people])
    Program.objects.filter(pk=program.pk).update(status=Program.Status.RUNNING)

    class Killed(BaseException):  # like SIGKILL: nothing in the worker gets to handle it
        pass

    real = runner._apply

    def die_after_the_actions(*args, **kwargs):
        real(*args, **kwargs)  # actions done, ledger written, members advanced... then the process dies
        raise Killed

    monkeypatch.setattr(runner, "_apply", die_after_the_actions)
    with pytest.raises(Killed):
        runner.run_due(sync=False, batch_size=4)
    monkeypatch.setattr(runner, "_apply", real)
    # The transaction died with the worker: nothing happened, the batch is still leased.
    assert ProgramStepLog.objects.count() == 0
    assert set(Prospect.objects.filter(pk__in=[p.pk for p in people]).values_list("score", flat=True)) == {0}
    leased = ProgramMember.objects.filter(program=program, locked_until__gt=timezone.now()).count()
    assert leased == 4
    # A restarted worker picks up the rest at once and the crashed batch when its lease runs out.
    runner.run_due(sync=False)
    assert ProgramStepLog.objects.filter(step=score).count() == 2
    ProgramMember.objects.filter(program=program, locked_until__isnull=False).update(
        locked_until=timezone.now() - dt.timedelta(seconds=1))
    runner.run_due(sync=False)
    assert ProgramStepLog.objects.filter(step=score).count() == 6
    assert set(Prospect.objects.filter(pk__in=[p.pk for p in people]).values_list("score", flat=True)) == {10}
    assert runner.run_due(sync=False)["processed"] == 0


def test_a_worker_whose_lease_expired_does_nothing(build, run, make_prospects):  # [M21] fencing
    from loopline.platform.queues import claim_due

    program, (score, _end) = build([{**SCORE, "next": 1}, END])
    people = make_prospects(3)
    services.add_prospects(program, [p.pk for p in people])
    Program.objects.filter(pk=program.pk).update(status=Program.Status.RUNNING)
    # Worker A claims, then stalls past its lease; worker B claims the same rows and finishes them.
    stale = claim_due(ProgramMember.objects.filter(program=program), limit=10, lease_seconds=60)
    ProgramMember.objects.filter(program=program).update(locked_until=timezone.now() - dt.timedelta(seconds=1))
    runner.run_due(sync=False)
    assert set(Prospect.objects.filter(pk__in=[p.pk for p in people]).values_list("score", flat=True)) == {10}
    # Worker A wakes up and processes its old batch: the fence stops it.
    runner._run_group(program, score, stale[0].locked_until, runner.RunStats())
    assert set(Prospect.objects.filter(pk__in=[p.pk for p in people]).values_list("score", flat=True)) == {10}
    assert ProgramStepLog.objects.filter(step=score).count() == 3


def test_one_bad_prospect_does_not_stop_the_others(build, run, make_prospects, monkeypatch):
    program, (tag, _end) = build([{**TAG, "next": 1}, END])
    people = make_prospects(3)
    services.add_prospects(program, [p.pk for p in people])
    bad = people[1].pk
    real = runner._bulk_add_tag

    def explode_for_one(program, batch, ids, params):
        if bad in ids:
            raise RuntimeError("boom")
        real(program, batch, ids, params)

    monkeypatch.setitem(runner.BULK, "add_tag", (lambda: True, explode_for_one))
    stats = run(program)
    assert stats["failed"] == 1
    assert [bool(tags_of(p)) for p in people] == [True, False, True]
    member = ProgramMember.objects.get(prospect_id=bad)
    assert "boom" in member.last_error and member.next_run_at > timezone.now()
    assert member.step_id == tag.pk and member.status == "active"


def test_deleted_prospect_leaves_the_program(build, run, make_prospects):
    program, _ = build([{**TAG, "next": 1}, END])
    a, b = make_prospects(2)
    services.add_prospects(program, [a.pk, b.pk])
    prospect_services.move_to_recycle_bin(b)
    run(program)
    assert ProgramMember.objects.get(prospect=b).status == "removed"
    assert ProgramMember.objects.get(prospect=a).status == "finished"


def test_one_prospect_per_email_address_per_program(bu, build, make_prospects):  # [M20]
    from loopline.accounts.models import BusinessUnit

    BusinessUnit.objects.filter(pk=bu.pk).update(allow_duplicate_emails=True)
    bu.refresh_from_db()
    a = make_prospects(1, target_bu=bu, prefix="same")[0]
    b = make_prospects(1, target_bu=bu, prefix="same")[0]
    assert a.email == b.email and a.pk != b.pk
    program, _ = build([TAG])
    assert services.add_prospects(program, [a.pk, b.pk]) == 1
    assert services.add_prospects(program, [a.pk, b.pk]) == 0


def test_other_bu_prospects_never_enter(build, make_prospects, other_bu):
    program, _ = build([TAG])
    outsider = make_prospects(1, target_bu=other_bu, prefix="x")[0]
    assert services.add_prospects(program, [outsider.pk]) == 0


def test_business_hours_hold_email_steps_until_opening(bu):  # [M20] business-hours sending
    program = Program(bu=bu, business_hours=True, business_days=[0, 1, 2, 3, 4], business_start=dt.time(9),
                      business_end=dt.time(17), timezone="Europe/Paris")
    saturday_noon = dt.datetime(2026, 11, 28, 11, 0, tzinfo=dt.UTC)  # 12:00 in Paris
    monday_nine = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
    assert services.next_business_time(program, saturday_noon) == monday_nine
    tuesday_ten = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
    assert services.next_business_time(program, tuesday_ten) == tuesday_ten
    tuesday_evening = dt.datetime(2026, 12, 1, 18, 0, tzinfo=dt.UTC)
    assert services.next_business_time(program, tuesday_evening) == dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)
    program.business_hours = False
    assert services.next_business_time(program, saturday_noon) == saturday_noon
