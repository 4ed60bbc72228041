"""Grading ([M14]): letters in thirds from a D start, weighted criteria, unknown leaves the grade, regrading."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from loopline.prospects import services as prospect_services
from loopline.prospects.models import Prospect
from loopline.qualification import grading, services
from loopline.qualification.grading import MATCH, NO_MATCH, UNKNOWN, compute_grade, evaluate_criterion


def crit(field, op, value, weight):
    return {"label": field, "field": field, "op": op, "value": value, "weight": weight}


DEFAULT_FILLED = [
    crit("employees", "gte", ["100"], 2), crit("industry", "in", ["Software", "Banking"], 2),
    crit("country", "in", ["France", "Germany"], 2), crit("job_title", "contains", ["director", "vp"], 2),
    crit("department", "in", ["Marketing"], 2),
]


def test_letters_run_in_thirds_from_f_to_a_plus():
    assert grading.LETTERS == ("F", "D-", "D", "D+", "C-", "C", "C+", "B-", "B", "B+", "A-", "A", "A+")
    assert grading.letter(grading.START) == "D"


def test_new_prospect_starts_at_d(bu):
    p = prospect_services.create_prospect(bu, {"email": "x@example.com"})
    assert Prospect.objects.get(pk=p.pk).grade == "D"


@pytest.mark.parametrize(("values", "expected"), [
    # Worked examples with the default profile's five criteria at 2/3 of a letter each:
    ({}, "D"),                                                           # all unknown: stays D
    ({"employees": 500}, "C-"),                                          # D + 2/3 = C-
    ({"employees": 500, "industry": "software"}, "C+"),                  # D + 4/3 = C+
    ({"employees": 500, "industry": "Software", "country": "France"}, "B"),      # D + 6/3 = B
    ({"employees": 500, "industry": "Software", "country": "France", "job_title": "VP Sales"}, "A-"),  # D + 8/3
    ({"employees": 500, "industry": "Software", "country": "France", "job_title": "VP Sales",
      "department": "Marketing"}, "A+"),                                 # D + 10/3 = A+
    ({"employees": 5}, "F"),                                             # D - 2/3 = F
    ({"employees": 500, "industry": "Retail"}, "D"),                     # +2/3 - 2/3
    ({"employees": 5, "industry": "Retail", "country": "Peru"}, "F"),    # floors at F
])
def test_default_profile_worked_examples(values, expected):
    assert compute_grade(DEFAULT_FILLED, values) == expected


def test_weights_of_one_third_and_one_letter():
    criteria = [crit("industry", "in", ["Software"], 1), crit("country", "in", ["France"], 3)]
    assert compute_grade(criteria, {"industry": "Software"}) == "D+"          # +1/3
    assert compute_grade(criteria, {"country": "France"}) == "C"              # +1 letter
    assert compute_grade(criteria, {"industry": "Retail"}) == "D-"            # -1/3
    assert compute_grade(criteria, {"industry": "Software", "country": "Peru"}) == "F"  # +1 -3 = D - 2/3 = F
    assert compute_grade(criteria, {"industry": "Software"}, manual_thirds=1) == "C-"  # thumbs up


def test_match_no_match_unknown():
    c = crit("employees", "between", ["10", "50"], 2)
    assert evaluate_criterion(c, 20) == MATCH
    assert evaluate_criterion(c, 70) == NO_MATCH
    assert evaluate_criterion(c, None) == UNKNOWN
    assert evaluate_criterion(c, "not a number") == UNKNOWN
    assert evaluate_criterion(crit("industry", "in", [], 2), "Software") == UNKNOWN  # not set up: no effect
    assert evaluate_criterion(crit("job_title", "starts_with", ["Head"], 2), "head of growth") == MATCH
    assert evaluate_criterion(crit("industry", "not_in", ["Retail"], 2), "Software") == MATCH


def test_profile_change_regrades_in_background_and_changes_follow_prospects(bu, admin_user):
    p = prospect_services.create_prospect(bu, {"email": "a@example.com", "industry": "Software", "employees": 400})
    q = prospect_services.create_prospect(bu, {"email": "b@example.com"})
    profile = services.default_profile(bu)
    _, job = services.save_profile(bu, profile.name, DEFAULT_FILLED, instance=profile, actor=admin_user)
    assert Prospect.objects.get(pk=p.pk).grade == "D"  # not yet: the job runs in the background
    services.run_regrade(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded" and job.done == 2
    assert Prospect.objects.get(pk=p.pk).grade == "C+"
    assert Prospect.objects.get(pk=q.pk).grade == "D"
    # A field change regrades at once.
    prospect_services.update_prospect(Prospect.objects.get(pk=q.pk), {"country": "Germany"})
    assert Prospect.objects.get(pk=q.pk).grade == "C-"


def test_thumbs_up_and_down(bu, admin_user):
    p = prospect_services.create_prospect(bu, {"email": "a@example.com"})
    assert services.thumbs(bu, p, True, actor=admin_user) == "D+"
    assert services.thumbs(bu, p, True, actor=admin_user) == "C-"
    assert services.thumbs(bu, p, False, actor=admin_user) == "D+"


def test_bad_criteria_are_refused():
    with pytest.raises(ValidationError):
        services.clean_criteria([crit("shoe_size", "in", ["42"], 2)])
    with pytest.raises(ValidationError):
        services.clean_criteria([crit("employees", "gte", ["many"], 2)])
    with pytest.raises(ValidationError):
        services.clean_criteria([crit("industry", "in", ["x"], 5)])
    assert services.clean_criteria([{"field": "", "label": "", "value": ""}]) == []


# --- The "change grade" action: the thumbs lever, usable by rules, programs and completion actions ([M14], [M19]) ---


def test_change_grade_action_is_validated():
    from loopline.platform import actions

    assert actions.validate_actions(None, [{"type": "change_grade", "thirds": "up"}]) == [
        {"type": "change_grade", "thirds": 1}]
    assert actions.validate_actions(None, [{"type": "change_grade", "thirds": "-2"}])[0]["thirds"] == -2
    for bad in ("0", "sideways", "13", "", None):
        with pytest.raises(ValidationError):
            actions.validate_actions(None, [{"type": "change_grade", "thirds": bad}])


def test_change_grade_action_moves_in_thirds_and_survives_regrading(bu):
    from loopline.platform import actions

    p = prospect_services.create_prospect(bu, {"email": "a@example.com", "industry": "Software"})
    assert Prospect.objects.get(pk=p.pk).grade == "D"
    cleaned = actions.validate_actions(bu, [{"type": "change_grade", "thirds": "2"}])
    (outcome,) = actions.run_actions(cleaned, actions.ActionContext(bu=bu, prospect=p, source="form", source_id=1))
    assert outcome.ok and outcome.detail == "grade +2/3 → C-"
    assert Prospect.objects.get(pk=p.pk).grade == "C-"
    # A profile change regrades; the shift stays on top of the profile's verdict (D + 2/3 + 2/3 = C+).
    services.save_profile(bu, "Default", [crit("industry", "in", ["Software"], 2)], services.default_profile(bu))
    services.regrade_ids(bu.pk, [p.pk])
    assert Prospect.objects.get(pk=p.pk).grade == "C+"
    actions.run_actions([{"type": "change_grade", "thirds": -12}], actions.ActionContext(bu=bu, prospect=p))
    assert Prospect.objects.get(pk=p.pk).grade == "F"  # clamped at the bottom


def test_change_grade_row_editor_and_automation_rule(bu, marketing_access):
    from django.http import QueryDict

    from loopline.automation import services as automation_services
    from loopline.automation.models import AutomationRule
    from loopline.platform import actions

    post = QueryDict(mutable=True)
    post.update({"action-0-type": "change_grade", "action-0-arg": "down"})
    cleaned = actions.rows_to_actions(bu, post)
    assert cleaned == [{"type": "change_grade", "thirds": -1}]
    assert actions.actions_to_rows(cleaned, blank=0) == [{"type": "change_grade", "arg": -1, "value": ""}]
    assert ("change_grade", "Change grade (thirds of a letter)") in actions.choices()
    rule = automation_services.save_rule(marketing_access, {
        "name": "Cold", "kind": "automation", "criteria": {"match": "all", "rules": [
            {"field": "score", "op": "lt", "value": 5}]}, "actions": cleaned})
    AutomationRule.objects.filter(pk=rule.pk).update(status="active")
    rule.refresh_from_db()
    p = prospect_services.create_prospect(bu, {"email": "cold@example.com"})
    assert automation_services.apply_rule(rule, p)
    assert Prospect.objects.get(pk=p.pk).grade == "D-"
