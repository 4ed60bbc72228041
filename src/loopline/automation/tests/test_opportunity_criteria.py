"""Opportunity conditions in the criteria language ([M17], opportunities from the CRM [R40]): "has an opportunity"
with outcome, stage, minimum amount and age; the same answer from the SQL query and the in-memory evaluation; the
builder's inputs; a dynamic list that uses one."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.http import QueryDict

from loopline.automation import builder, criteria
from loopline.automation.models import ListMembership, ProspectList
from loopline.campaigns.models import Opportunity, OpportunityContactRole
from loopline.prospects import services as prospect_services

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def _opp(bu, prospect, crm_id, *, stage="Prospecting", outcome="open", amount=None, age_days=1):
    created = NOW - dt.timedelta(days=age_days)
    opp = Opportunity.objects.create(
        bu=bu,
        crm_id=crm_id,
        stage=stage,
        amount=amount,
        is_closed=outcome != "open",
        is_won=outcome == "won",
        crm_created_at=created,
        created_day=created.date(),
    )
    OpportunityContactRole.objects.create(
        bu=bu, opportunity=opp, crm_contact_id="003" + crm_id[3:], prospect=prospect
    )
    return opp


@pytest.fixture
def people(bu, other_bu):
    won = prospect_services.create_prospect(bu, {"email": "won@x.test"})
    lost = prospect_services.create_prospect(bu, {"email": "lost@x.test"})
    fresh = prospect_services.create_prospect(bu, {"email": "fresh@x.test"})
    none = prospect_services.create_prospect(bu, {"email": "none@x.test"})
    _opp(bu, won, "006A", stage="Closed Won", outcome="won", amount=Decimal("50000"), age_days=200)
    _opp(bu, lost, "006B", stage="Closed Lost", outcome="lost", amount=Decimal("900"), age_days=40)
    _opp(bu, fresh, "006C", stage="Negotiation", amount=Decimal("12000.50"), age_days=3)
    # Another BU's opportunity never counts, even for a prospect with the same email there.
    other = prospect_services.create_prospect(other_bu, {"email": "none@x.test"})
    _opp(other_bu, other, "006D", outcome="won", amount=Decimal("1"))
    return {"won": won, "lost": lost, "fresh": fresh, "none": none}


def _both(bu, value, op="has"):
    tree = criteria.validate(
        bu, {"match": "all", "rules": [{"field": "opportunity", "op": op, "value": value}]}
    )
    in_sql = set(criteria.matching_prospects(bu, tree, now=NOW).values_list("email", flat=True))
    in_memory = {
        p.email
        for p in criteria.matching_prospects(bu, {"match": "all", "rules": []}, now=NOW)
        if criteria.evaluate(bu, tree, p, now=NOW)
    }
    assert in_sql == in_memory, criteria.describe(bu, tree)
    return {email.split("@")[0] for email in in_sql}


def test_opportunity_conditions(bu, people):
    assert _both(bu, {}) == {"won", "lost", "fresh"}  # any opportunity at all
    assert _both(bu, {}, op="has_not") == {"none"}
    assert _both(bu, {"outcome": "won"}) == {"won"}
    assert _both(bu, {"outcome": "lost"}) == {"lost"}
    assert _both(bu, {"outcome": "open"}) == {"fresh"}
    assert _both(bu, {"stage": "negotiation"}) == {"fresh"}  # stage ignores case
    assert _both(bu, {"min_amount": "12000.50"}) == {"won", "fresh"}
    assert _both(bu, {"min_amount": 12001}) == {"won"}
    assert _both(bu, {"days": 30}) == {"fresh"}
    assert _both(bu, {"days": 60, "outcome": "lost", "min_amount": 500}) == {"lost"}
    assert _both(bu, {"outcome": "won", "days": 30}) == set()
    assert _both(bu, {"outcome": "won"}, op="has_not") == {"lost", "fresh", "none"}


def test_opportunity_condition_validation_and_description(bu):
    rule = {
        "field": "opportunity",
        "op": "has",
        "value": {"outcome": "WON", "stage": " Negotiation ", "min_amount": "5,000", "days": "30"},
    }
    cleaned = criteria.validate(bu, {"match": "all", "rules": [rule]})
    assert cleaned["rules"][0]["value"] == {
        "outcome": "won",
        "stage": "Negotiation",
        "min_amount": 5000,
        "days": 30,
    }
    assert criteria.describe(bu, cleaned) == (
        'All of: has an opportunity won, stage "Negotiation", amount at least '
        "5000, created in the last 30 days"
    )
    for bad, message in (
        ({"outcome": "maybe"}, "open, won or lost"),
        ({"min_amount": "lots"}, "not a number"),
        ({"days": "0"}, "between 1 and 3650"),
        ("a string", "describe the opportunity"),
    ):
        with pytest.raises(ValidationError, match=message):
            criteria.validate(
                bu, {"match": "all", "rules": [{"field": "opportunity", "op": "has", "value": bad}]}
            )


def test_builder_inputs_round_trip(bu):
    post = QueryDict(mutable=True)
    post.update(
        {
            "c__r__kind": "group",
            "c__r__match": "all",
            "c__r-0__kind": "rule",
            "c__r-0__field": "opportunity",
            "c__r-0__op": "has",
            "c__r-0__outcome": "won",
            "c__r-0__stage": "",
            "c__r-0__min_amount": "1000",
            "c__r-0__days": "",
        }
    )
    tree = builder.tree_from_post(post)
    assert tree["rules"][0]["value"] == {"outcome": "won", "stage": "", "min_amount": "1000", "days": ""}
    assert criteria.validate(bu, tree)["rules"][0]["value"] == {"outcome": "won", "min_amount": 1000}
    node = builder.render_nodes(tree, criteria.field_catalogue(bu))["children"][0]
    assert node["kind"] == "opportunity" and node["opportunity"]["min_amount"] == "1000"


def test_dynamic_list_with_an_opportunity_condition_in_the_ui(
    client, marketing_user, bu, people
):  # [M16] [M17]
    client.force_login(marketing_user)
    redraw = client.post(
        "/automation/criteria/builder/",
        {"c__r__kind": "group", "c__r__match": "all", "c__r-0__kind": "rule", "c__r-0__field": "opportunity"},
        HTTP_HX_REQUEST="true",
    )
    content = redraw.content.decode()
    assert (
        redraw.status_code == 200
        and "has an opportunity" in content
        and 'name="c__r-0__min_amount"' in content
    )
    assert '<option value="Closed Won">' in content  # the stages the CRM uses are offered
    response = client.post(
        "/automation/lists/new/",
        {
            "name": "Customers",
            "kind": "dynamic",
            "c__r__kind": "group",
            "c__r__match": "all",
            "c__r-0__kind": "rule",
            "c__r-0__field": "opportunity",
            "c__r-0__op": "has",
            "c__r-0__outcome": "won",
        },
    )
    assert response.status_code == 302
    pl = ProspectList.objects.get(bu=bu, name="Customers")
    assert list(ListMembership.objects.filter(prospect_list=pl).values_list("prospect_id", flat=True)) == [
        people["won"].pk
    ]
    assert "has an opportunity won" in client.get(f"/automation/lists/{pl.pk}/").content.decode()
