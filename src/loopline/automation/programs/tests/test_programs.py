"""Building programs (validation, graph rules), recipient lists and suppression lists, lifecycle ([M20])."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from loopline.automation.programs import graph, runner, services
from loopline.automation.programs.models import Program, ProgramMember, ProgramStepLog
from loopline.prospects.models import ProspectTag

pytestmark = pytest.mark.django_db

TAG = {"kind": "action", "config": {"actions": [{"type": "add_tag", "tag": "nurtured"}]}}


# --- Graph rules (pure) ---------------------------------------------------------------------------------------------


def test_graph_accepts_a_branching_flow():
    nodes = [graph.Node(1, "action", next_id=2), graph.Node(2, "rule", yes_id=3, no_id=4), graph.Node(3, "end"),
             graph.Node(4, "trigger", yes_id=3, no_id=None)]
    assert graph.problems(nodes, 1) == []
    assert graph.ordered(nodes, 1) == [1, 2, 3, 4]


def test_graph_rejects_cycles_and_unreachable_steps():
    looping = [graph.Node(1, "action", next_id=2), graph.Node(2, "rule", yes_id=1, no_id=None)]
    assert any("loops back" in p for p in graph.problems(looping, 1))
    island = [graph.Node(1, "action"), graph.Node(2, "action", label="Step 2")]
    assert graph.problems(island, 1) == ["Step 2 cannot be reached from the first step"]
    assert graph.problems([], None) == ["Add at least one step"]
    assert graph.problems([graph.Node(1, "end")], None) == ["Choose the first step"]


def test_rule_conditions_are_counted_through_nested_groups():
    tree = {"match": "all", "rules": [{"field": "a"}, {"match": "any", "rules": [{"field": "b"}, {"field": "c"}]}]}
    assert graph.count_conditions(tree) == 3


# --- Building ---------------------------------------------------------------------------------------------------------


def test_steps_are_validated_with_clear_messages(marketing_access):
    program = services.create_program(marketing_access, {"name": "P"})
    cases = [
        ({"kind": "nope"}, "Choose a step type"),
        ({"kind": "action", "config": {"actions": []}}, "at least one action"),
        ({"kind": "action", "config": {"actions": [{"type": "teleport"}]}}, "unknown type"),
        ({"kind": "trigger", "config": {"event": "email_open"}, "wait_kind": "up_to", "wait_amount": 0},
         "between 1 minute"),
        ({"kind": "trigger", "config": {"event": "page_visit"}, "wait_amount": 2}, "which page"),
        ({"kind": "action", "config": {"actions": [{"type": "add_tag", "tag": "x"}]}, "wait_kind": "up_to"},
         "does not fit"),
        ({"kind": "rule", "config": {"criteria": {"match": "all", "rules": [
            {"field": "score", "op": "gte", "value": i} for i in range(6)]}}}, "at most 5 conditions"),
        ({"kind": "rule", "config": {"criteria": {"match": "all", "rules": [
            {"field": "no_such_field", "op": "equals", "value": 1}]}}}, ""),
    ]
    for data, message in cases:
        with pytest.raises(ValidationError) as exc:
            services.add_step(marketing_access, program, data)
        assert message in " ".join(exc.value.messages), data
    assert program.steps.count() == 0


def test_steps_link_in_order_and_cycles_are_refused(marketing_access):
    program = services.create_program(marketing_access, {"name": "P"})
    a = services.add_step(marketing_access, program, TAG)
    b = services.add_step(marketing_access, program, {
        "kind": "rule", "config": {"criteria": {"match": "all", "rules": [{"field": "score", "op": "gte", "value": 5}]}}})
    program.refresh_from_db()
    a.refresh_from_db()
    assert program.start_step_id == a.pk and a.next_step_id == b.pk
    with pytest.raises(ValidationError, match="loops back"):
        services.update_step(marketing_access, b, {**b.__dict__, "config": b.config, "yes_step_id": a.pk})
    c = services.add_step(marketing_access, program, {"kind": "end", "branch": "yes"}, after=b)
    b.refresh_from_db()
    assert b.yes_step_id == c.pk
    services.delete_step(marketing_access, c)
    b.refresh_from_db()
    assert b.yes_step_id is None


def test_start_needs_a_sound_flow_and_a_recipient_list(marketing_access):
    program = services.create_program(marketing_access, {"name": "P"})
    with pytest.raises(ValidationError) as exc:
        services.start(marketing_access, program)
    assert "Add at least one step" in exc.value.messages
    assert "Choose at least one recipient list" in exc.value.messages


def test_running_programs_cannot_be_edited_until_paused(marketing_access, build):
    program, (_step,) = build([TAG])
    Program.objects.filter(pk=program.pk).update(status=Program.Status.RUNNING)
    with pytest.raises(ValidationError, match="Pause the program"):
        services.add_step(marketing_access, Program.objects.get(pk=program.pk), TAG)


def test_sales_users_cannot_build_programs(sales_access):
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        services.create_program(sales_access, {"name": "Mine"})


def test_unknown_lists_are_refused(marketing_access):
    with pytest.raises(ValidationError) as exc:
        services.create_program(marketing_access, {"name": "P", "recipient_list_ids": [999999]})
    assert "no such list" in str(exc.value)


# --- Recipients and suppression lists ------------------------------------------------------------------------------


@pytest.fixture
def lists(bu, marketing_access, make_prospects):
    from loopline.automation import services as automation_services

    recipients = automation_services.save_list(marketing_access, {"name": "Newsletter", "kind": "static"})
    suppressed = automation_services.save_list(marketing_access, {"name": "Competitors", "kind": "static"})
    people = make_prospects(4)
    automation_services.add_to_list(bu, recipients, [p.pk for p in people])
    automation_services.add_to_list(bu, suppressed, [people[3].pk])
    return recipients, suppressed, people


def test_recipient_list_minus_suppression_list_enters_and_leaves(marketing_access, lists, bu):  # [M20]
    from loopline.automation import services as automation_services

    recipients, suppressed, people = lists
    program = services.create_program(marketing_access, {"name": "P", "recipient_list_ids": [recipients.pk],
                                                          "suppression_list_ids": [suppressed.pk]})
    services.add_step(marketing_access, program, TAG)
    counts = services.start(marketing_access, program)
    assert counts["entered"] == 3
    assert not ProgramMember.objects.filter(program=program, prospect=people[3]).exists()
    # Removing a prospect from the recipient list removes it from the program; re-adding resumes at its step.
    automation_services.remove_from_list(bu, recipients, [people[0].pk])
    program.refresh_from_db()
    assert services.sync_recipients(program) == {"entered": 0, "removed": 1, "returned": 0}
    runner.run_due(sync=False)
    assert ProgramMember.objects.get(program=program, prospect=people[0]).status == "removed"
    assert not ProspectTag.objects.filter(prospect=people[0]).exists()
    assert ProgramStepLog.objects.count() == 2
    automation_services.add_to_list(bu, recipients, [people[0].pk])
    assert services.sync_recipients(program)["returned"] == 1
    runner.run_due(sync=False)
    assert ProspectTag.objects.filter(prospect=people[0]).exists()
    # Finished prospects never enter again.
    assert services.sync_recipients(program)["entered"] == 0


def test_edit_program_form_keeps_business_hours(marketing_access):
    program = services.create_program(marketing_access, {"name": "P", "business_hours": True,
                                                          "business_start": "08:30", "business_end": "18:00",
                                                          "business_days": "0,1,2", "timezone": "Europe/Berlin"})
    assert program.business_hours and program.business_days == [0, 1, 2]
    assert str(program.business_start) == "08:30:00"
    with pytest.raises(ValidationError):
        services.update_program(marketing_access, program, {"name": "P", "business_start": "18:00",
                                                             "business_end": "08:00"})
    with pytest.raises(ValidationError):
        services.update_program(marketing_access, program, {"name": "P", "timezone": "Mars/Olympus"})
