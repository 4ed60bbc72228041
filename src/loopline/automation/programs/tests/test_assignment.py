"""Assignment ([M22]): round-robin groups (fair order, persisted pointer, skips inactive users), CRM queue, CRM
assignment rule; never takes a prospect from an existing owner."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from loopline.accounts import services as account_services
from loopline.automation.programs import services
from loopline.automation.programs.models import AssignmentGroupMember, CrmAssignmentRequest
from loopline.platform import actions
from loopline.prospects.models import Prospect

pytestmark = pytest.mark.django_db


@pytest.fixture
def reps(bu):
    users = []
    for name in ("ana", "ben", "cid"):
        user = account_services.create_user(f"{name}@acme.test", password="correct-horse-battery-staple")
        account_services.set_membership(bu, user, "sales")
        users.append(user)
    return users


@pytest.fixture
def group(marketing_access, reps):
    return services.save_group(marketing_access, {"name": "Inside sales", "user_ids": [u.pk for u in reps]})


def owners(prospects) -> list[int | None]:
    return [Prospect.objects.get(pk=p.pk).assigned_user_id for p in prospects]


def test_round_robin_goes_around_in_order(bu, group, reps, make_prospects):  # [M22]
    people = make_prospects(7)
    for p in people:
        services.assign_round_robin(bu, group, p)
    ana, ben, cid = (u.pk for u in reps)
    assert owners(people) == [ana, ben, cid, ana, ben, cid, ana]
    counts = dict(AssignmentGroupMember.objects.values_list("user_id", "assigned_count"))
    assert counts == {ana: 3, ben: 2, cid: 2}


def test_round_robin_pointer_is_persisted_and_new_members_go_first(bu, group, reps, make_prospects,
                                                                   marketing_access):
    people = make_prospects(2)
    services.assign_round_robin(bu, group, people[0])  # ana
    dan = account_services.create_user("dan@acme.test", password="correct-horse-battery-staple")
    account_services.set_membership(bu, dan, "sales")
    services.save_group(marketing_access, {"name": "Inside sales", "user_ids": [u.pk for u in reps] + [dan.pk]},
                        group)
    # The pointer lives in the database: next is whoever was assigned least recently (never-assigned first).
    services.assign_round_robin(bu, group, people[1])
    assert owners([people[1]]) == [reps[1].pk]
    more = make_prospects(2, prefix="more")
    for p in more:
        services.assign_round_robin(bu, group, p)
    assert owners(more) == [reps[2].pk, dan.pk]


def test_round_robin_skips_inactive_users_paused_members_and_ex_members(bu, group, reps, make_prospects,
                                                                       marketing_access, other_bu):
    from loopline.accounts.models import Membership, User

    User.objects.filter(pk=reps[0].pk).update(is_active=False)
    services.save_group(marketing_access, {"name": "Inside sales", "user_ids": [u.pk for u in reps],
                                           "paused_user_ids": [reps[1].pk]}, group)
    people = make_prospects(2)
    for p in people:
        services.assign_round_robin(bu, group, p)
    assert owners(people) == [reps[2].pk, reps[2].pk]
    Membership.objects.filter(user=reps[2], bu=bu).delete()
    (late,) = make_prospects(1, prefix="late")
    assert services.assign_round_robin(bu, group, late) is None
    assert owners([late]) == [None]


def test_round_robin_never_steals(bu, group, reps, make_prospects, marketing_user):  # [M22]
    (p,) = make_prospects(1)
    Prospect.objects.filter(pk=p.pk).update(assigned_user=marketing_user)
    p.refresh_from_db()
    assert services.assign_round_robin(bu, group, p) is None
    assert owners([p]) == [marketing_user.pk]
    assert AssignmentGroupMember.objects.filter(last_assigned_at__isnull=False).count() == 0  # pointer untouched


def test_round_robin_refuses_other_bu_prospects(group, other_bu, make_prospects, bu):
    (outsider,) = make_prospects(1, target_bu=other_bu, prefix="x")
    assert services.assign_round_robin(bu, group, outsider) is None
    assert owners([outsider]) == [None]


def test_group_members_must_belong_to_the_bu(marketing_access):
    stranger = account_services.create_user("stranger@else.test", password="correct-horse-battery-staple")
    with pytest.raises(ValidationError):
        services.save_group(marketing_access, {"name": "G", "user_ids": [stranger.pk]})


def test_crm_queue_sets_the_owner_through_prospect_services_and_never_steals(bu, make_prospects, marketing_user):
    from loopline.platform import events

    seen = []
    events.subscribe(events.ProspectChanged, seen.append)
    try:
        a, b = make_prospects(2)
        assert services.assign_crm_queue(bu, "00G000000000001AAA", a)
        Prospect.objects.filter(pk=b.pk).update(assigned_user=marketing_user)
        b.refresh_from_db()
        assert not services.assign_crm_queue(bu, "00G000000000001AAA", b)
    finally:
        events.unsubscribe(events.ProspectChanged, seen.append)
    assert Prospect.objects.get(pk=a.pk).crm_owner_id == "00G000000000001AAA"
    assert Prospect.objects.get(pk=b.pk).crm_owner_id == ""
    assert any(e.prospect_id == a.pk and "crm_owner_id" in e.changed_fields for e in seen)
    # A prospect that already has a CRM owner keeps it.
    assert not services.assign_crm_queue(bu, "00G000000000002AAA", Prospect.objects.get(pk=a.pk))
    with pytest.raises(ValidationError):
        services.assign_crm_queue(bu, "not-an-id", a)


def test_crm_assignment_rule_is_recorded_once(bu, make_prospects):
    (p,) = make_prospects(1)
    assert services.assign_crm_rule(bu, p, source="program")
    assert not services.assign_crm_rule(bu, p)
    assert CrmAssignmentRequest.objects.filter(prospect=p, pending=True).count() == 1


def test_action_types_are_registered_and_usable_as_completion_actions(bu, group, reps, make_prospects):
    cleaned = actions.validate_actions(bu, [{"type": "assign_round_robin", "group_id": "Inside sales"},
                                            {"type": "assign_crm_queue", "queue_id": "00G000000000001AAA"}])
    assert cleaned[0] == {"type": "assign_round_robin", "group_id": group.pk}
    (p,) = make_prospects(1)
    outcomes = actions.run_actions(cleaned, actions.ActionContext(bu=bu, prospect=p, source="form", source_id=1))
    assert [o.ok for o in outcomes] == [True, True]
    p.refresh_from_db()
    assert p.assigned_user_id == reps[0].pk
    assert p.crm_owner_id == ""  # the queue did not take an assigned prospect
    with pytest.raises(ValidationError):
        actions.validate_actions(bu, [{"type": "assign_round_robin", "group_id": 999}])
    rows = actions.rows_to_actions(bu, {"action-0-type": "assign_round_robin", "action-0-arg": "Inside sales"})
    assert rows == [{"type": "assign_round_robin", "group_id": group.pk}]


def test_program_step_assigns_round_robin(bu, group, reps, build, run, make_prospects):
    program, _ = build([{"kind": "action", "config": {"actions": [{"type": "assign_round_robin",
                                                                   "group_id": group.pk}]}}])
    people = make_prospects(3)
    services.add_prospects(program, [p.pk for p in people])
    run(program)
    assert sorted(owners(people)) == sorted(u.pk for u in reps)
