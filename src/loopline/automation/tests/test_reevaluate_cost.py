"""A prospect change re-checks every dynamic list and active automation rule of the BU with a fixed, small number of
queries — not one per list, rule or condition (the figure behind issue #8's incremental and rule-evaluation p95)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from loopline.automation import services
from loopline.automation.models import AutomationRule, ListMembership, ProspectList, RuleMatch
from loopline.prospects import services as prospect_services
from loopline.prospects.models import ActivityType, Prospect

pytestmark = pytest.mark.django_db


def _statements(captured) -> list[str]:
    """The SQL that reads or writes (transaction bookkeeping — savepoints, commits — left out)."""
    skip = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT", "BEGIN", "COMMIT")
    return [q["sql"] for q in captured.captured_queries if not q["sql"].lstrip().upper().startswith(skip)]


LISTS = [
    {
        "match": "all",
        "rules": [
            {"field": "industry", "op": "equals", "value": "Software"},
            {"field": "score", "op": "gte", "value": 100},
            {"field": "activity", "op": "has", "value": {"type": 1, "days": 30}},
        ],
    },
    {"match": "all", "rules": [{"field": "score", "op": "gte", "value": 200}]},
    {
        "match": "any",
        "rules": [
            {"field": "industry", "op": "in", "value": ["Retail", "Food"]},
            {"field": "tag", "op": "has", "value": "vip"},
        ],
    },
    {
        "match": "all",
        "rules": [
            {"field": "activity", "op": "has", "value": {"type": 14, "days": 7}},
            {"field": "opportunity", "op": "has_not", "value": {"outcome": "won"}},
        ],
    },
]
RULES = [
    {"match": "all", "rules": [{"field": "score", "op": "gte", "value": 150}]},
    {
        "match": "all",
        "rules": [{"field": "activity", "op": "has", "value": {"type": 13, "days": 30, "min_count": 3}}],
    },
    {
        "match": "any",
        "rules": [
            {"field": "tag", "op": "has", "value": "vip"},
            {"field": "grade", "op": "equals", "value": "A+"},
        ],
    },
    {"match": "all", "rules": [{"field": "activity", "op": "has", "value": {"type": 1, "days": 30}}]},
    {"match": "all", "rules": [{"field": "company", "op": "contains", "value": "99"}]},
]


@pytest.fixture
def setup(bu, marketing_access):
    lists = [
        ProspectList.objects.create(bu=bu, name=f"L{i}", kind=ProspectList.Kind.DYNAMIC, criteria=tree)
        for i, tree in enumerate(LISTS)
    ]
    rules = []
    for i, tree in enumerate(RULES):
        rule = services.save_rule(
            marketing_access,
            {
                "name": f"R{i}",
                "kind": "automation",
                "criteria": tree,
                "actions": [{"type": "add_tag", "tag": f"r{i}"}],
            },
        )
        AutomationRule.objects.filter(pk=rule.pk).update(status=AutomationRule.Status.ACTIVE)
        rules.append(rule)
    services.invalidate_bundle(bu.pk)
    return lists, rules


def test_reevaluating_one_prospect_reads_in_a_fixed_number_of_queries(bu, setup):
    lists, rules = setup
    p = prospect_services.create_prospect(bu, {"email": "a@x.test", "industry": "Retail"})
    prospect_services.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=p, title="Home")
    services.reevaluate(bu.pk, [p.pk])  # warm the BU bundle; joins L2, matches R3 (page view)
    assert set(ListMembership.objects.filter(prospect=p).values_list("prospect_list_id", flat=True)) == {
        lists[2].pk
    }
    assert list(RuleMatch.objects.filter(prospect=p).values_list("rule_id", flat=True)) == [rules[3].pk]
    with CaptureQueriesContext(connection) as reads:
        services.reevaluate(bu.pk, [p.pk])  # nothing changed: reads only
    # bundle version + the prospect with all its activity/tag/opportunity facts + memberships + earlier matches
    assert len(_statements(reads)) <= 4, "\n".join(q[:200] for q in _statements(reads))
    reader = services._bundle(bu.pk)[4]
    assert reader._single is not None  # the one-prospect read runs precompiled SQL, not a fresh ORM build
    Prospect.objects.filter(pk=p.pk).update(score=250, industry="Software")
    with CaptureQueriesContext(connection) as changed:
        services.reevaluate(bu.pk, [p.pk])
    assert set(ListMembership.objects.filter(prospect=p).values_list("prospect_list_id", flat=True)) == {
        lists[0].pk,
        lists[1].pk,
    }
    assert set(RuleMatch.objects.filter(prospect=p).values_list("rule_id", flat=True)) == {
        rules[0].pk,
        rules[3].pk,
    }
    selects = [q for q in _statements(changed) if q.lstrip().upper().startswith("SELECT")]
    assert len(selects) <= 12, "\n".join(q[:200] for q in selects)


def test_many_prospects_are_read_together(bu, setup):
    people = [prospect_services.create_prospect(bu, {"email": f"p{i}@x.test"}) for i in range(20)]
    services.reevaluate(bu.pk, [p.pk for p in people])
    with CaptureQueriesContext(connection) as reads:
        services.reevaluate(bu.pk, [p.pk for p in people])
    assert len(_statements(reads)) <= 3  # bundle version, rows with facts, memberships — for all twenty


def _version_checks(captured, bu) -> int:
    return sum(f"FROM automation_prospectlist WHERE bu_id = {bu.pk})" in sql for sql in _statements(captured))


def test_lists_and_rules_are_checked_current_once_per_flush(bu, setup, django_capture_on_commit_callbacks):
    _, rules = setup
    p = prospect_services.create_prospect(bu, {"email": "a@x.test"})
    services.reevaluate(bu.pk, [p.pk])
    with CaptureQueriesContext(connection) as outside:
        services.reevaluate(bu.pk, [p.pk])
        services.reevaluate(bu.pk, [p.pk])
    assert _version_checks(outside, bu) == 2  # outside a flush, every call asks whether lists or rules changed
    Prospect.objects.filter(pk=p.pk).update(score=160)  # R0 matches and tags: a second round follows
    with CaptureQueriesContext(connection) as flush, django_capture_on_commit_callbacks(execute=True):
        services.prospects_changed(bu.pk, [p.pk])
    assert RuleMatch.objects.filter(prospect=p, rule=rules[0]).exists()
    assert _version_checks(flush, bu) == 1, "the later rounds of one flush reuse the check"
    assert sum('FROM "prospects_prospect"' in sql and "_fact0" in sql for sql in _statements(flush)) >= 2
