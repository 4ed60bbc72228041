"""Scoring: the default table, incremental scoring, adjustments, retroactive rescoring, categories ([M12]-[M15])."""

from __future__ import annotations

import pytest

from loopline.platform import actions
from loopline.platform.models import Job
from loopline.prospects import services as prospect_services
from loopline.prospects.models import Activity, ActivityType, Prospect
from loopline.qualification import services
from loopline.qualification.models import CategoryScore, ScoreState
from loopline.qualification.scoring import DEFAULT_POINTS, effective_points

T = ActivityType


def _prospect(bu, email="p@example.com", **extra):
    return prospect_services.create_prospect(bu, {"email": email, **extra})


def _run(job):
    """What the worker does with the queued job (tests use the database task backend, whose worker is not running)."""
    services.run_rescore(job.pk)
    job.refresh_from_db()
    return job


def _score(p) -> int:
    return Prospect.objects.values_list("score", flat=True).get(pk=p.pk)


@pytest.mark.parametrize(("activity_type", "points"), [
    (T.PAGE_VIEW, 1), (T.VISIT, 3), (T.CUSTOM_REDIRECT_CLICK, 3), (T.FILE_ACCESS, 3), (T.SITE_SEARCH, 3),
    (T.FORM_SUCCESS, 50), (T.FORM_HANDLER_SUCCESS, 50), (T.LANDING_PAGE_SUCCESS, 50),
    (T.FORM_ERROR, -5), (T.FORM_HANDLER_ERROR, -5), (T.LANDING_PAGE_ERROR, -5),
    (T.EMAIL_OPEN, 0), (T.EMAIL_CLICK, 3), (T.OPPORTUNITY_CREATED, 50), (T.OPPORTUNITY_WON, 0),
    (T.OPPORTUNITY_LOST, -100), (T.EMAIL_SENT, 0), (T.PROSPECT_CREATED, 0),
])
def test_default_points_table_applied_incrementally(bu, activity_type, points):
    # [M12] the default points table, applied as each activity arrives
    p = _prospect(bu)
    activity = prospect_services.record_activity(bu.pk, activity_type, prospect=p)
    assert _score(p) == points
    assert Activity.objects.get(pk=activity.pk).points == points
    assert effective_points(None)[activity_type] == points if activity_type in effective_points(None) else True


def test_machine_events_score_nothing(bu):
    # [M7] scoring ignores machine events
    p = _prospect(bu)
    prospect_services.record_activity(bu.pk, T.EMAIL_CLICK, prospect=p, is_machine=True)
    assert _score(p) == 0


def test_caller_given_points_are_replaced_by_the_rules(bu):
    p = _prospect(bu)
    prospect_services.record_activity(bu.pk, T.PAGE_VIEW, prospect=p, points=7)
    assert _score(p) == 1


def test_adjust_score_action_goes_through_the_service_and_survives_rescoring(bu, admin_user):
    p = _prospect(bu)
    prospect_services.record_activity(bu.pk, T.FORM_SUCCESS, prospect=p)
    cleaned = actions.validate_actions(bu, [{"type": "adjust_score", "points": -10}])
    outcome = actions.run_actions(cleaned, actions.ActionContext(bu=bu, prospect=p, source="automation"))
    assert outcome[0].ok and _score(p) == 40
    # Form success now worth 20: the rescore moves only the activity part; the -10 stays ([M12]).
    job = services.save_rules(bu, {**DEFAULT_POINTS, T.FORM_SUCCESS: 20}, actor=admin_user)
    assert job is not None
    assert _run(job).status == Job.Status.SUCCEEDED
    assert _score(p) == 10


def test_apply_score_delta_is_scoped_by_business_unit(bu, other_bu):
    p = _prospect(bu)
    assert services.apply_score_delta(other_bu, p.pk, 5, "guess") is False
    assert services.apply_score_delta(bu, p.pk, 5, "manual") is True
    assert _score(p) == 5


def test_rescoring_all_prospects_after_a_rule_change(bu, other_bu, admin_user):
    a, b = _prospect(bu, "a@example.com"), _prospect(bu, "b@example.com")
    outsider = _prospect(other_bu, "a@example.com")
    for _ in range(3):
        prospect_services.record_activity(bu.pk, T.PAGE_VIEW, prospect=a)
    prospect_services.record_activity(bu.pk, T.FORM_SUCCESS, prospect=b)
    prospect_services.record_activity(bu.pk, T.EMAIL_OPEN, prospect=b)
    prospect_services.record_activity(bu.pk, T.EMAIL_OPEN, prospect=b, is_machine=True)
    prospect_services.record_activity(other_bu.pk, T.PAGE_VIEW, prospect=outsider)
    Prospect.objects.filter(pk=a.pk).update(score=1000 + 3)  # e.g. an imported starting score
    assert (_score(a), _score(b)) == (1003, 50)

    job = services.save_rules(bu, {**DEFAULT_POINTS, T.PAGE_VIEW: 5, T.EMAIL_OPEN: 2}, actor=admin_user)
    assert job.status == Job.Status.QUEUED
    assert (_score(a), _score(b)) == (1003, 50)  # nothing moves until the background job runs
    _run(job)
    assert job.status == Job.Status.SUCCEEDED and job.done == job.total == 2
    assert (_score(a), _score(b), _score(outsider)) == (1015, 52, 1)  # machine open still 0; other BU untouched
    assert ScoreState.objects.get(pk=b.pk).activity_points == 52
    # New activity after the change uses the new points, and a second rescore is a no-op.
    prospect_services.record_activity(bu.pk, T.PAGE_VIEW, prospect=a)
    assert _score(a) == 1020
    services.run_rescore(services.start_rescore(bu).pk)
    assert (_score(a), _score(b)) == (1020, 52)
    # Back to the defaults.
    _run(services.reset_rules(bu, actor=admin_user))
    assert (_score(a), _score(b)) == (1004, 50)


def test_unchanged_rules_start_no_rescore(bu):
    assert services.save_rules(bu, DEFAULT_POINTS) is None


def test_clean_points_reports_bad_rows(bu):
    from django.core.exceptions import ValidationError

    raw = {str(t): str(p) for t, p in effective_points(None).items()}
    raw[str(int(T.PAGE_VIEW))] = "lots"
    with pytest.raises(ValidationError) as exc:
        services.clean_points(raw)
    assert "Page view" in str(exc.value)


def test_merge_keeps_activity_points_consistent(bu):
    a, b = _prospect(bu, "a@example.com"), _prospect(bu, "b@example.com")
    prospect_services.record_activity(bu.pk, T.PAGE_VIEW, prospect=a)
    prospect_services.record_activity(bu.pk, T.FORM_SUCCESS, prospect=b)
    prospect_services.merge_prospects(a, b)
    assert _score(a) == 51
    assert ScoreState.objects.get(pk=a.pk).activity_points == 51
    services.run_rescore(services.start_rescore(bu).pk)
    assert _score(a) == 51


def test_score_categories(bu):
    # [M13] a score per category, from activity on its assets or pages
    p = _prospect(bu)
    category = services.save_category(bu, {"name": "Widgets", "assets": "form:7",
                                           "url_prefixes": "https://shop.test/widgets/"})
    prospect_services.record_activity(bu.pk, T.FORM_SUCCESS, prospect=p, asset_type="form", asset_id=7)
    prospect_services.record_activity(bu.pk, T.PAGE_VIEW, prospect=p, url="https://shop.test/widgets/blue")
    prospect_services.record_activity(bu.pk, T.PAGE_VIEW, prospect=p, url="https://shop.test/gadgets/")
    assert CategoryScore.objects.get(category=category, prospect=p).score == 51
    CategoryScore.objects.all().delete()
    services.rebuild_category_scores(bu.pk)
    assert CategoryScore.objects.get(category=category, prospect=p).score == 51


def test_category_input_is_validated(bu):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        services.save_category(bu, {"name": "X", "assets": "brochure"})
    with pytest.raises(ValidationError):
        services.save_category(bu, {"name": "X", "url_prefixes": "javascript:alert(1)"})


def test_all_zero_rules_take_every_activity_point_away(bu):
    p = _prospect(bu)
    prospect_services.record_activity(bu.pk, T.FORM_SUCCESS, prospect=p)
    services.apply_score_delta(bu, p.pk, 7, "manual")
    _run(services.save_rules(bu, dict.fromkeys(effective_points(None), 0)))
    assert _score(p) == 7


def test_save_rules_while_a_rescore_waits_reuses_it(bu):
    first = services.save_rules(bu, {**DEFAULT_POINTS, T.PAGE_VIEW: 2})
    second = services.save_rules(bu, {**DEFAULT_POINTS, T.PAGE_VIEW: 4})
    assert first is not None and second is not None and first.pk == second.pk
