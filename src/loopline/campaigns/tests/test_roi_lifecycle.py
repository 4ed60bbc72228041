"""ROI arithmetic and edge cases ([M35]); lifecycle monotonicity and detection ([M36]); membership ([M33])."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from loopline.campaigns import metrics, selectors, services
from loopline.campaigns.models import AttributionModel, CampaignMember, DailyMetric
from loopline.platform import actions
from loopline.prospects import services as prospect_services
from loopline.prospects.models import Activity, ActivityType, Prospect

from .factories import campaign, contact, member, opportunity

pytestmark = pytest.mark.django_db
UTC = dt.UTC
YEAR = selectors.Period(dt.date(2026, 1, 1), dt.date(2026, 12, 31))


def test_roi_figures_never_divide_by_zero():
    f = selectors.roi_figures(None, prospects=0, opportunities=0, wins=0, won_amount=0)
    assert {x.reason for x in f.values()} == {"not computable: no cost recorded"}
    f = selectors.roi_figures(Decimal("0"), prospects=3, opportunities=1, wins=1, won_amount=500)
    assert f["roi"].value is None and f["roi"].reason == "not computable: the cost is zero"
    assert f["cost_per_prospect"].value == 0
    f = selectors.roi_figures(Decimal("1000"), prospects=0, opportunities=0, wins=0, won_amount=0)
    assert f["roi"].value == -1.0  # nothing won: the whole cost is lost
    assert f["cost_per_prospect"].reason == "no prospects in this period"
    assert f["cost_per_win"].reason == "no won opportunities in this period"
    f = selectors.roi_figures(Decimal("1000"), prospects=4, opportunities=2, wins=0.5, won_amount=3000)
    assert f["roi"].value == 2.0 and f["cost_per_prospect"].value == 250 and f["cost_per_win"].value == 2000


def _report(access, **kw):
    return selectors.roi_report(access, YEAR, **kw)


def test_roi_report_arithmetic_per_model(bu, marketing_access):
    a, b = contact(bu, "a@x.test"), contact(bu, "b@x.test")
    c1, c2 = campaign(bu, "C1", cost="1000"), campaign(bu, "C2", cost="500", type_="Email")
    member(bu, c1, a, dt.datetime(2026, 1, 2, tzinfo=UTC))
    member(bu, c2, b, dt.datetime(2026, 1, 5, tzinfo=UTC))
    opportunity(bu, [a, b], amount="6000", won=True, close_date=dt.date(2026, 3, 1),
                created=dt.datetime(2026, 2, 1, tzinfo=UTC))
    report = _report(marketing_access, model=AttributionModel.EVEN_SPLIT, currency="EUR")
    rows = {r.name: r for r in report.rows}
    assert rows["C1"].won == {1: 6000.0, 2: 0.0, 3: 3000.0}
    assert rows["C2"].won == {1: 0.0, 2: 6000.0, 3: 3000.0}
    assert rows["C1"].figures["roi"].value == pytest.approx(2.0)  # (3000 - 1000) / 1000
    assert rows["C2"].figures["roi"].value == pytest.approx(5.0)
    assert rows["C1"].opportunities == 0.5 and rows["C1"].pipeline == 3000
    assert rows["C1"].prospects == 0  # prospects created without a source campaign here
    types = {t.name: t for t in report.types}
    assert types["Email"].won[3] == 3000 and types["Webinar"].cost == Decimal("1000")
    assert report.total.won[3] == 6000 and report.total.cost == Decimal("1500")


def test_roi_edge_cases_amounts_currencies_empty_period(bu, marketing_access):
    a = contact(bu, "a@x.test")
    c = campaign(bu, "Only", cost="100")
    member(bu, c, a, dt.datetime(2026, 1, 2, tzinfo=UTC))
    created = dt.datetime(2026, 2, 1, tzinfo=UTC)
    opportunity(bu, [a], amount=None, won=True, close_date=dt.date(2026, 3, 1), created=created)
    opportunity(bu, [a], amount="-50", won=True, close_date=dt.date(2026, 3, 1), created=created)
    opportunity(bu, [a], amount="0", won=True, close_date=dt.date(2026, 3, 1), created=created)
    opportunity(bu, [a], amount="900", won=True, close_date=dt.date(2026, 3, 1), created=created, currency="USD")
    opportunity(bu, [a], amount="not a number", created=created)
    eur = _report(marketing_access, model=AttributionModel.FIRST_TOUCH, currency="EUR")
    row = eur.rows[0]
    assert row.won[1] == 0 and row.wins == 3 and row.opportunities == 4
    assert row.figures["roi"].value == -1.0 and row.figures["cost_per_win"].value == pytest.approx(100 / 3)
    notes = " ".join(eur.notes)
    assert "2 opportunities have no amount" in notes and "1 opportunities have a negative amount" in notes
    assert "1 opportunities in other currencies" in notes
    usd = _report(marketing_access, model=AttributionModel.FIRST_TOUCH, currency="USD")
    assert usd.rows[0].won[1] == 900 and usd.rows[0].figures["roi"].value == pytest.approx(8.0)
    assert set(eur.currencies) == {"EUR", "USD"}
    empty = selectors.roi_report(marketing_access, selectors.Period(dt.date(2020, 1, 1), dt.date(2020, 1, 31)),
                                 currency="EUR")
    assert empty.rows[0].won[3] == 0 and empty.rows[0].figures["cost_per_prospect"].reason == \
        "no prospects in this period"
    assert any("Nothing happened" in n for n in empty.notes)


def test_aggregates_agree_with_raw_data(bu, marketing_access):
    people = [contact(bu, f"p{i}@x.test") for i in range(6)]
    camps = [campaign(bu, f"K{i}", cost=str(100 * (i + 1))) for i in range(4)]
    for i, p in enumerate(people):
        for j in range(i % 4 + 1):
            member(bu, camps[(i + j) % 4], p, dt.datetime(2026, 1, 1 + i + j, tzinfo=UTC))
    for i in range(5):
        opportunity(bu, people[i:i + 2], amount=str(1000 * (i + 1)), won=i % 2 == 0,
                    close_date=dt.date(2026, 2, 1 + i) if i % 2 == 0 else None,
                    created=dt.datetime(2026, 1, 5 + i, tzinfo=UTC))
    for model in AttributionModel:
        aggregated = selectors._roi_sums(marketing_access, YEAR, "EUR")[0]
        live = selectors._roi_sums_live(marketing_access, YEAR, "EUR")[0]
        for key in set(aggregated) | set(live):
            if key[1] != model:
                continue
            for name in ("opportunities", "pipeline", "wins", "won"):
                assert aggregated[key][name] == pytest.approx(live[key][name]), (key, name)
        total_won = sum(v["won"] for k, v in live.items() if k[1] == model)
        assert total_won == pytest.approx(1000 + 3000 + 5000)  # every model credits all won revenue once


def test_mark_lifecycle_is_monotonic_and_fills_skipped_stages(bu):
    p = prospect_services.create_prospect(bu, {"email": "m@x.test"})
    t1 = timezone.now() + dt.timedelta(hours=1)
    assert services.mark_lifecycle(bu, p.pk, "opportunity", t1)
    p.refresh_from_db()
    assert p.mql_at == p.sql_at == p.opportunity_at == t1 and p.won_at is None
    # Never moves, neither back nor forward.
    assert not services.mark_lifecycle(bu, p.pk, "mql", t1 - dt.timedelta(days=30))
    assert not services.mark_lifecycle(bu, p.pk, "opportunity", t1 + dt.timedelta(days=3))
    p.refresh_from_db()
    assert p.mql_at == t1 and p.opportunity_at == t1
    # A later stage is never dated before the earlier one.
    assert services.mark_lifecycle(bu, p.pk, "won", t1 - dt.timedelta(days=5))
    p.refresh_from_db()
    assert p.won_at == t1
    with pytest.raises(ValueError):
        services.mark_lifecycle(bu, p.pk, "customer", t1)
    counted = {m.metric: m.count for m in DailyMetric.objects.filter(bu=bu) if m.metric != "prospect"}
    assert counted == {"mql": 1, "sql": 1, "opportunity": 1, "won": 1}


def test_mql_and_sql_detected_from_prospect_changes(bu, marketing_user, marketing_access):
    services.save_report_settings(marketing_access, mql_score=50, mql_grade="", mql_rule="or", default_currency="")
    p = prospect_services.create_prospect(bu, {"email": "q@x.test"})
    assert Prospect.objects.get(pk=p.pk).mql_at is None
    prospect_services.update_prospect(p, {}, extra={"score": 60})
    p.refresh_from_db()
    assert p.mql_at is not None and p.sql_at is None
    prospect_services.assign_prospect(p, marketing_user)
    p.refresh_from_db()
    assert p.sql_at is not None and p.sql_at >= p.mql_at
    # A score moved without an event is caught by the sweep.
    q = prospect_services.create_prospect(bu, {"email": "r@x.test"})
    Prospect.objects.filter(pk=q.pk).update(score=99, crm_lead_id="00Q000000000001AAA")
    assert services.sweep_lifecycle(bu.pk) == {"mql": 1, "sql": 1}


def test_bulk_change_dates_mql_then_sql_for_the_same_prospects(bu, marketing_access):
    # [M36] The connector's bulk pull: one event, prospects both over the MQL score and synced (SQL); the dates the
    # MQL pass sets must be seen by the SQL pass that follows (it reuses the rows the check read).
    from loopline.platform import events

    services.save_report_settings(marketing_access, mql_score=50, mql_grade="", mql_rule="or", default_currency="")
    ids = [prospect_services.create_prospect(bu, {"email": f"b{i}@x.test"}).pk for i in range(3)]
    Prospect.objects.filter(pk__in=ids[:2]).update(score=80, crm_lead_id="00Q000000000009AAA")
    Prospect.objects.filter(pk=ids[2]).update(crm_lead_id="00Q000000000010AAA")
    events.publish(events.ProspectsBulkChanged(bu_id=bu.pk, prospect_ids=tuple(ids), source="crm"))
    rows = {p.pk: p for p in Prospect.objects.filter(pk__in=ids)}
    for pk in ids:
        assert rows[pk].mql_at is not None and rows[pk].sql_at is not None
        assert rows[pk].sql_at >= rows[pk].mql_at
    counted = {m.metric: m.count for m in DailyMetric.objects.filter(bu=bu) if m.metric in ("mql", "sql")}
    assert counted == {"mql": 3, "sql": 3}  # the third skipped MQL: reaching SQL dates it too
    # A second event changes nothing: dates never move.
    before = {pk: (rows[pk].mql_at, rows[pk].sql_at) for pk in ids}
    events.publish(events.ProspectsBulkChanged(bu_id=bu.pk, prospect_ids=tuple(ids), source="crm"))
    assert {p.pk: (p.mql_at, p.sql_at) for p in Prospect.objects.filter(pk__in=ids)} == before


def test_lifecycle_report_rates_and_times(bu, marketing_access):
    base = timezone.now() - dt.timedelta(days=10)
    people = [prospect_services.create_prospect(bu, {"email": f"l{i}@x.test"}) for i in range(4)]
    Prospect.objects.filter(pk__in=[p.pk for p in people]).update(created_at=base)
    metrics.rebuild(bu.pk)
    services.mark_lifecycle(bu, people[0].pk, "mql", base + dt.timedelta(days=2))
    services.mark_lifecycle(bu, people[1].pk, "mql", base + dt.timedelta(days=4))
    services.mark_lifecycle(bu, people[1].pk, "sql", base + dt.timedelta(days=5))
    period = selectors.preset_period("30d", timezone.now().date())
    rows = {r.key: r for r in selectors.lifecycle_report(marketing_access, period)}
    assert rows["prospect"].count == 4 and rows["mql"].count == 2 and rows["sql"].count == 1
    assert rows["mql"].conversion.value == 50.0 and rows["mql"].mean_days.value == pytest.approx(3.0)
    assert rows["sql"].mean_days.value == pytest.approx(1.0)
    assert rows["opportunity"].conversion.value == 0.0
    assert rows["won"].conversion.reason == "no opportunities in this period"
    assert rows["won"].mean_days.reason == "nobody reached this stage"
    before = {(m.metric, m.day, m.campaign_key): (m.count, round(m.seconds)) for m in DailyMetric.objects.filter(bu=bu)}
    metrics.rebuild(bu.pk)  # the set-based rebuild agrees with the incremental counters
    after = {(m.metric, m.day, m.campaign_key): (m.count, round(m.seconds)) for m in DailyMetric.objects.filter(bu=bu)}
    assert before == after


def test_opportunity_activities_on_timeline_once(bu):
    a = contact(bu, "a@x.test")
    opp = opportunity(bu, [a], amount="10", created=dt.datetime(2026, 1, 3, tzinfo=UTC))
    services.upsert_opportunities(bu, [{"Id": opp.crm_id, "Amount": "10", "IsClosed": True, "IsWon": True,
                                        "CloseDate": "2026-02-01", "CreatedDate": "2026-01-03T00:00:00Z"}])
    services.upsert_opportunities(bu, [{"Id": opp.crm_id, "Amount": "10", "IsClosed": True, "IsWon": True,
                                        "CloseDate": "2026-02-01", "CreatedDate": "2026-01-03T00:00:00Z"}])
    types = list(Activity.objects.filter(prospect=a).values_list("type", flat=True))
    assert types.count(ActivityType.OPPORTUNITY_CREATED) == 1 and types.count(ActivityType.OPPORTUNITY_WON) == 1
    a.refresh_from_db()
    # The contact was synced (sales-qualified) today: later stages are never dated before it ([M36]).
    assert a.sql_at is not None and a.opportunity_at >= a.sql_at and a.won_at >= a.opportunity_at


def test_add_to_campaign_action_creates_membership_and_source(bu):
    c = campaign(bu, "Action campaign")
    p = prospect_services.create_prospect(bu, {"email": "act@x.test"})
    cleaned = actions.validate_actions(bu, [{"type": "add_to_campaign", "campaign_id": c.pk}])
    outcomes = actions.run_actions(cleaned, actions.ActionContext(bu=bu, prospect=p, source="form"))
    assert outcomes[0].ok, outcomes
    m = CampaignMember.objects.get(campaign=c, prospect=p)
    assert m.has_responded and m.first_responded_at is not None
    p.refresh_from_db()
    assert p.source_campaign_id == c.pk
    # Running again keeps one membership; a second campaign does not replace the source (first touch, [M33]).
    actions.run_actions(cleaned, actions.ActionContext(bu=bu, prospect=p, source="form"))
    other = campaign(bu, "Later")
    actions.run_actions(actions.validate_actions(bu, [{"type": "add_to_campaign", "campaign_id": other.pk}]),
                        actions.ActionContext(bu=bu, prospect=p, source="form"))
    assert CampaignMember.objects.filter(prospect=p).count() == 2
    p.refresh_from_db()
    assert p.source_campaign_id == c.pk


def test_tracked_touch_with_campaign_makes_a_member(bu):
    c = campaign(bu, "Clicks")
    p = prospect_services.create_prospect(bu, {"email": "click@x.test"})
    prospect_services.record_activity(bu.pk, ActivityType.CUSTOM_REDIRECT_CLICK, prospect=p, campaign_id=c.pk)
    assert CampaignMember.objects.filter(campaign=c, prospect=p, has_responded=True).exists()
    p.refresh_from_db()
    assert p.source_campaign_id == c.pk
    prospect_services.record_activity(bu.pk, ActivityType.CUSTOM_REDIRECT_CLICK, prospect=p, campaign_id=c.pk,
                                      is_machine=True)
    assert CampaignMember.objects.filter(prospect=p).count() == 1


def test_upsert_campaigns_connects_crm_campaigns(bu):
    result = services.upsert_campaigns(bu, [
        {"Id": "701000000000001AAA", "Name": "Parent", "Type": "Event", "Status": "In Progress", "ActualCost": "250"},
        {"Id": "701000000000002AAA", "Name": "Child", "ParentId": "701000000000001AAA", "ActualCost": "-3"},
        {"Id": "bad", "Name": "Skipped"}])
    assert result == {"created": 2, "updated": 0, "skipped": 1}
    from loopline.campaigns.models import Campaign

    child = Campaign.objects.get(bu=bu, name="Child")
    assert child.parent.name == "Parent" and child.actual_cost is None
    assert Campaign.objects.get(bu=bu, name="Parent").status == "in_progress"
