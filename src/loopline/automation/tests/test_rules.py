"""Segmentation ([M18]) and automation rules ([M19]): paused on creation, retroactive evaluation, continuous
re-evaluation, match once / repeat with eligibility days and a maximum, a log per rule."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from loopline.automation import services
from loopline.automation.models import AutomationRule, RuleLog, RuleMatch
from loopline.platform.models import Job
from loopline.prospects import services as prospect_services
from loopline.prospects.models import Prospect, ProspectTag

pytestmark = pytest.mark.django_db

HOT = {"match": "all", "rules": [{"field": "score", "op": "gte", "value": 50}]}
TAG = [{"type": "add_tag", "tag": "hot"}]


def _p(bu, email, **extra):
    return prospect_services.create_prospect(bu, {"email": email}, extra=extra)


def _rule(access, **data):
    return services.save_rule(access, {"name": "Hot", "kind": "automation", "criteria": HOT, "actions": TAG, **data})


def _tagged(p) -> bool:
    return ProspectTag.objects.filter(prospect=p, tag__name="hot").exists()


def test_created_paused_and_validated(marketing_access):  # [M19]
    rule = _rule(marketing_access)
    assert rule.status == AutomationRule.Status.PAUSED
    with pytest.raises(ValidationError) as err:
        services.save_rule(marketing_access, {"name": "", "kind": "automation", "criteria": {"rules": []},
                                              "actions": [{"type": "nope"}]})
    assert set(err.value.error_dict) == {"name", "criteria", "actions"}


def test_resume_evaluates_existing_prospects_then_follows_changes(bu, marketing_access,
                                                                  django_capture_on_commit_callbacks):  # [M19]
    hot, cold = _p(bu, "hot@x.test", score=80), _p(bu, "cold@x.test", score=5)
    rule = _rule(marketing_access)
    # nothing happens while paused
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.update_prospect(cold, {}, extra={"score": 60})
    assert not _tagged(cold)
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.update_prospect(cold, {}, extra={"score": 5})
    job = services.resume_rule(marketing_access, rule)
    assert services.run_rule(rule.pk, job.pk) == 1  # what the background task does
    assert _tagged(hot) and not _tagged(cold)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.done == 1 and job.total == 1
    with django_capture_on_commit_callbacks(execute=True):
        prospect_services.update_prospect(cold, {}, extra={"score": 70})
    assert _tagged(cold)
    assert RuleLog.objects.filter(rule=rule).count() == 2
    assert all(entry.ok for entry in RuleLog.objects.filter(rule=rule))
    # a second run (a retried task) applies nothing twice
    assert services.run_rule(rule.pk) == 0
    rule.refresh_from_db()
    assert rule.matched_total == 2


def test_match_once(bu, marketing_access):  # [M19]
    p = _p(bu, "a@x.test", score=90)
    rule = _rule(marketing_access, actions=[{"type": "adjust_score", "points": 1}])
    AutomationRule.objects.filter(pk=rule.pk).update(status="active")
    rule.refresh_from_db()
    assert services.apply_rule(rule, p)
    assert not services.apply_rule(rule, p)
    assert RuleMatch.objects.get(rule=rule, prospect=p).times == 1


def test_repeat_with_days_and_maximum(bu, marketing_access):  # [M19]
    p = _p(bu, "a@x.test", score=90)
    rule = _rule(marketing_access, repeat=True, repeat_after_days=7, max_repeats=2,
                 actions=[{"type": "adjust_score", "points": 1}])
    now = timezone.now()
    assert services.apply_rule(rule, p, now=now)
    assert not services.apply_rule(rule, p, now=now + dt.timedelta(days=6))
    assert services.apply_rule(rule, p, now=now + dt.timedelta(days=8))
    assert not services.apply_rule(rule, p, now=now + dt.timedelta(days=30))  # maximum of 2 reached
    assert RuleMatch.objects.get(rule=rule, prospect=p).times == 2
    assert Prospect.objects.get(pk=p.pk).score == 92


def test_repeat_needs_eligibility_days(marketing_access):
    with pytest.raises(ValidationError) as err:
        _rule(marketing_access, repeat=True, repeat_after_days=0)
    assert "repeat_after_days" in err.value.error_dict


def test_segmentation_rule_runs_once(bu, marketing_access):  # [M18]
    a = _p(bu, "a@x.test", score=80)
    rule = services.save_rule(marketing_access, {"name": "Seg", "kind": "segmentation", "criteria": HOT,
                                                 "actions": TAG})
    job = services.resume_rule(marketing_access, rule)
    assert services.run_rule(rule.pk, job.pk) == 1
    rule.refresh_from_db()
    assert rule.status == AutomationRule.Status.COMPLETED and _tagged(a)
    with pytest.raises(ValidationError, match="runs once"):
        services.resume_rule(marketing_access, rule)


def test_failing_action_is_logged_and_others_continue(bu, marketing_access):
    a, b = _p(bu, "a@x.test", score=80), _p(bu, "b@x.test", score=80)
    rule = _rule(marketing_access, actions=[{"type": "add_tag", "tag": "hot"}, {"type": "adjust_score", "points": 5}])
    AutomationRule.objects.filter(pk=rule.pk).update(status="active",
                                                     actions=[{"type": "adjust_score", "points": "x"}, *TAG])
    assert services.run_rule(rule.pk) == 2
    assert _tagged(a) and _tagged(b)
    assert RuleLog.objects.filter(rule=rule, ok=False).count() == 2


def test_paused_rule_ignores_changes(bu, marketing_access, django_capture_on_commit_callbacks):
    rule = _rule(marketing_access)
    services.resume_rule(marketing_access, rule)
    services.pause_rule(marketing_access, rule)
    with django_capture_on_commit_callbacks(execute=True):
        p = _p(bu, "late@x.test", score=99)
    assert not _tagged(p)
