"""[M17] The criteria language has one meaning: the compiled SQL query and the in-memory evaluation agree on random
prospects and random rule trees (hypothesis), on SQLite and PostgreSQL — opportunity conditions included."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.automation import criteria
from loopline.automation.models import ListMembership, ProspectList
from loopline.campaigns.models import Opportunity, OpportunityContactRole
from loopline.prospects.models import Activity, CustomField, Prospect, ProspectTag, Tag

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
WORDS = ["", "Software", "software", "SOFT", "Retail", "Réseau", "réseau", "a_b%c", "Soft ware", "x\\y"]
TAGS = ["vip", "Webinar"]
STAGES = ["Prospecting", "Negotiation", "Closed Won", "Closed Lost"]
opportunity = st.tuples(st.sampled_from([*STAGES, "negotiation"]), st.sampled_from(["open", "won", "lost"]),
                        st.one_of(st.none(), st.sampled_from([Decimal("0"), Decimal("999.99"), Decimal("1000"),
                                                              Decimal("25000.50")])), st.integers(0, 120))
ACTIVITY_TYPES = [1, 4, 13]

text = st.sampled_from(WORDS)
json_any = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.sampled_from([2.5, -0.5, 10.0]),
                     text, st.lists(st.sampled_from(["a", "b", "c"]), max_size=3))


@st.composite
def prospect_data(draw):
    custom = {}
    for key, strategy in (("tier", st.one_of(text, json_any)), ("size", st.one_of(st.integers(-5, 50), json_any)),
                          ("vip", st.one_of(st.booleans(), json_any)), ("renewal", st.one_of(
                              st.sampled_from(["2026-01-01", "2026-06-01", "2027-03-15"]), json_any)),
                          ("products", st.one_of(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3), json_any))):
        if draw(st.booleans()):
            custom[key] = draw(strategy)
    return {
        "industry": draw(text), "company": draw(text), "crm_owner_id": draw(st.sampled_from(["", "005A"])),
        "employees": draw(st.one_of(st.none(), st.integers(0, 100))),
        "annual_revenue": draw(st.one_of(st.none(), st.sampled_from([Decimal("0"), Decimal("10.5"),
                                                                      Decimal("99.99"), Decimal("1000")]))),
        "score": draw(st.integers(-10, 100)), "grade": draw(st.sampled_from(criteria.GRADES)),
        "opted_out": draw(st.booleans()), "starred": draw(st.booleans()),
        "crm_lead_id": draw(st.sampled_from(["", "00Q000000000001"])),
        "last_activity_at": draw(st.one_of(st.none(), st.integers(0, 90).map(lambda d: NOW - dt.timedelta(days=d)))),
        "custom": custom,
        "tags": draw(st.lists(st.sampled_from(TAGS), unique=True)),
        "lists": draw(st.sampled_from([None, False, True])),  # no row, member, unsubscribed
        "activities": draw(st.lists(st.tuples(st.sampled_from(ACTIVITY_TYPES), st.integers(0, 60), st.booleans(),
                                              st.sampled_from(["", "https://x.test/Pricing", "https://x.test/blog"])),
                                    max_size=4)),
        "opportunities": draw(st.lists(opportunity, max_size=2)),
        "deleted": draw(st.integers(0, 9)) == 0,
    }


def leaf(list_id: int):
    n = st.one_of(st.integers(-5, 60), st.sampled_from(["2.5", "10.5", "-0.5"]))
    activity = st.fixed_dictionaries(
        {"type": st.sampled_from(ACTIVITY_TYPES)},
        optional={"days": st.integers(1, 45), "min_count": st.integers(1, 3),
                  "url_contains": st.sampled_from(["pricing", "BLOG"])})
    text_ops = st.sampled_from(["equals", "not_equals", "contains", "not_contains", "starts_with"])
    num_ops = st.sampled_from(["equals", "not_equals", "gt", "gte", "lt", "lte"])
    empties = st.sampled_from(["is_empty", "is_not_empty"])
    nonblank = st.sampled_from([w for w in WORDS if w])
    return st.one_of(
        st.builds(lambda f, o, v: {"field": f, "op": o, "value": v},
                  st.sampled_from(["industry", "company", "custom.tier"]), text_ops, nonblank),
        st.builds(lambda f, o, v: {"field": f, "op": o, "value": v},
                  st.sampled_from(["industry", "custom.tier"]), st.sampled_from(["in", "not_in"]),
                  st.lists(nonblank, min_size=1, max_size=3)),
        st.builds(lambda f, o: {"field": f, "op": o},
                  st.sampled_from(["industry", "custom.tier", "employees", "custom.size", "custom.renewal",
                                   "custom.products", "assigned_user", "crm_id", "last_activity_at",
                                   "annual_revenue"]), empties),
        st.builds(lambda f, o, v: {"field": f, "op": o, "value": v},
                  st.sampled_from(["score", "employees", "annual_revenue", "custom.size"]), num_ops, n),
        st.builds(lambda f, o: {"field": f, "op": o}, st.sampled_from(["opted_out", "starred", "custom.vip"]),
                  st.sampled_from(["is_true", "is_false"])),
        st.builds(lambda o, v: {"field": "grade", "op": o, "value": v},
                  st.sampled_from(["equals", "not_equals", "at_least", "below"]), st.sampled_from(criteria.GRADES)),
        st.builds(lambda o, v: {"field": "custom.renewal", "op": o, "value": v},
                  st.sampled_from(["equals", "before", "after"]), st.sampled_from(["2026-01-01", "2026-06-01"])),
        st.builds(lambda o, v: {"field": "custom.products", "op": o, "value": v},
                  st.sampled_from(["includes", "excludes"]), st.lists(st.sampled_from(["a", "b", "z"]), min_size=1)),
        st.builds(lambda o, v: {"field": "tag", "op": o, "value": v}, st.sampled_from(["has", "has_not"]),
                  st.sampled_from(["VIP", "webinar", "nope"])),
        st.builds(lambda o: {"field": "list", "op": o, "value": list_id}, st.sampled_from(["member", "not_member"])),
        st.builds(lambda o, v: {"field": "last_activity_at", "op": o, "value": v},
                  st.sampled_from(["within_days", "not_within_days"]), st.integers(1, 60)),
        st.builds(lambda o, v: {"field": "activity", "op": o, "value": v}, st.sampled_from(["has", "has_not"]),
                  activity),
        st.builds(lambda o: {"field": "crm_owner_id", "op": o, "value": "005a"},
                  st.sampled_from(["equals", "not_equals"])),
        st.builds(lambda o, v: {"field": "opportunity", "op": o, "value": v}, st.sampled_from(["has", "has_not"]),
                  st.fixed_dictionaries({}, optional={
                      "stage": st.sampled_from(["NEGOTIATION", "Closed Won", "Nope"]),
                      "outcome": st.sampled_from(["open", "won", "lost"]),
                      "min_amount": st.sampled_from([0, 1000, "999.99", "25000.5"]),
                      "days": st.integers(1, 90)})),
    )


def trees(list_id: int):
    return st.recursive(
        st.builds(lambda m, r: {"match": m, "rules": r}, st.sampled_from(["all", "any"]),
                  st.lists(leaf(list_id), min_size=1, max_size=3)),
        lambda inner: st.builds(lambda m, r: {"match": m, "rules": r}, st.sampled_from(["all", "any"]),
                                st.lists(st.one_of(leaf(list_id), inner), min_size=1, max_size=3)),
        max_leaves=6,
    )


@pytest.fixture
def setup_bu(bu):
    for api_name, kind in (("tier", "text"), ("size", "number"), ("vip", "checkbox"), ("renewal", "date"),
                           ("products", "multiselect")):
        CustomField.objects.create(bu=bu, name=api_name.title(), api_name=api_name, type=kind,
                                   options=["a", "b", "c"] if kind == "multiselect" else [])
    pl = ProspectList.objects.create(bu=bu, name="Ref")
    tags = {name: Tag.objects.create(bu=bu, name=name) for name in TAGS}
    return bu, pl, tags


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_sql_equals_in_memory(setup_bu, data):
    bu, pl, tags = setup_bu
    people = data.draw(st.lists(prospect_data(), min_size=1, max_size=6), label="prospects")
    tree = data.draw(trees(pl.pk), label="tree")
    sid = transaction.savepoint_create()
    try:
        created = []
        for i, d in enumerate(people):
            p = Prospect.objects.create(
                bu=bu, email=f"p{i}@x.test", industry=d["industry"], company=d["company"],
                crm_owner_id=d["crm_owner_id"], employees=d["employees"], annual_revenue=d["annual_revenue"],
                score=d["score"], grade=d["grade"], opted_out=d["opted_out"], starred=d["starred"],
                crm_lead_id=d["crm_lead_id"], last_activity_at=d["last_activity_at"], custom=d["custom"],
                is_deleted=d["deleted"])
            for name in d["tags"]:
                ProspectTag.objects.create(prospect=p, tag=tags[name])
            if d["lists"] is not None:
                ListMembership.objects.create(prospect_list=pl, prospect=p, opted_out=d["lists"])
            for n, (stage, outcome, amount, age) in enumerate(d["opportunities"]):
                created_at = NOW - dt.timedelta(days=age)
                opp = Opportunity.objects.create(
                    bu=bu, crm_id=f"006{i:03d}{n:03d}", stage=stage, amount=amount, is_closed=outcome != "open",
                    is_won=outcome == "won", crm_created_at=created_at, created_day=created_at.date())
                OpportunityContactRole.objects.create(bu=bu, opportunity=opp, crm_contact_id=f"003{i:03d}", prospect=p)
            for kind, days, machine, url in d["activities"]:
                Activity.objects.create(bu=bu, prospect=p, type=kind, occurred_at=NOW - dt.timedelta(days=days),
                                        is_machine=machine, url=url)
            created.append(p)
        cleaned = criteria.validate(bu, tree)
        in_sql = set(criteria.matching_prospects(bu, cleaned, now=NOW).values_list("pk", flat=True))
        fresh = Prospect.objects.filter(pk__in=[p.pk for p in created])
        in_memory = {p.pk for p in fresh if criteria.evaluate(bu, cleaned, p, now=NOW)}
        assert in_sql == in_memory, criteria.describe(bu, cleaned)
        # The path prospect changes take: related-rows conditions read with the prospect row, in one query.
        annotated, names = criteria.with_facts(bu, fresh, [cleaned], now=NOW)
        with_facts = {p.pk for p in annotated if criteria.evaluate(
            bu, cleaned, p, context=criteria.EvalContext(p, now=NOW, facts=criteria.facts_of(p, names)))}
        assert in_sql == with_facts, criteria.describe(bu, cleaned)
        # One prospect at a time through the precompiled query (marker id and time swapped for the real ones).
        reader = criteria.FactReader(bu, [cleaned])
        one_by_one = set()
        for p in created:
            rows, names = reader.read([p.pk], NOW)
            one_by_one |= {r.pk for r in rows if criteria.evaluate(
                bu, cleaned, r, context=criteria.EvalContext(r, now=NOW, facts=criteria.facts_of(r, names)))}
        assert in_sql == one_by_one, criteria.describe(bu, cleaned)
    finally:
        transaction.savepoint_rollback(sid)
