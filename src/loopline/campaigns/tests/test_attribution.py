"""Attribution models on worked examples ([M34])."""

from __future__ import annotations

import datetime as dt

import pytest

from loopline.campaigns import services
from loopline.campaigns.models import Attribution, AttributionDaily, AttributionModel

from .factories import campaign, contact, member, opportunity

pytestmark = pytest.mark.django_db

D = dt.datetime


def shares(opp, model):
    rows = Attribution.objects.filter(opportunity=opp, model=model).select_related("campaign")
    return {(r.campaign.name if r.campaign else None): round(r.weight, 6) for r in rows}


def test_four_campaigns_even_split_is_25_percent_each(bu):
    # [M34] two contacts, four campaigns between them -> 25% each; first/last touch by membership date.
    a, b = contact(bu, "a@x.test"), contact(bu, "b@x.test")
    c1, c2, c3, c4 = (campaign(bu, f"C{i}") for i in range(1, 5))
    member(bu, c1, a, D(2026, 1, 2, tzinfo=dt.UTC))
    member(bu, c2, a, D(2026, 1, 5, tzinfo=dt.UTC))
    member(bu, c3, b, D(2026, 1, 3, tzinfo=dt.UTC))
    member(bu, c4, b, D(2026, 1, 20, tzinfo=dt.UTC))
    opp = opportunity(bu, [a, b], amount="10000", won=True, close_date=dt.date(2026, 2, 1))
    assert shares(opp, AttributionModel.EVEN_SPLIT) == {"C1": 0.25, "C2": 0.25, "C3": 0.25, "C4": 0.25}
    assert shares(opp, AttributionModel.FIRST_TOUCH) == {"C1": 1.0}
    assert shares(opp, AttributionModel.LAST_TOUCH) == {"C4": 1.0}


def test_memberships_after_close_are_ignored(bu):
    a = contact(bu, "a@x.test")
    early, late = campaign(bu, "Early"), campaign(bu, "Late")
    member(bu, early, a, D(2026, 1, 2, tzinfo=dt.UTC))
    member(bu, late, a, D(2026, 3, 1, tzinfo=dt.UTC))  # after the close date: never counts
    opp = opportunity(bu, [a], won=True, close_date=dt.date(2026, 2, 1))
    for model in AttributionModel:
        assert shares(opp, model) == {"Early": 1.0}


def test_membership_on_close_day_counts_and_open_opportunity_counts_everything(bu):
    a = contact(bu, "a@x.test")
    c1, c2 = campaign(bu, "One"), campaign(bu, "Two")
    member(bu, c1, a, D(2026, 1, 2, tzinfo=dt.UTC))
    member(bu, c2, a, D(2026, 2, 1, 18, tzinfo=dt.UTC))  # on the close date itself
    closed = opportunity(bu, [a], won=True, close_date=dt.date(2026, 2, 1))
    assert shares(closed, AttributionModel.EVEN_SPLIT) == {"One": 0.5, "Two": 0.5}
    open_opp = opportunity(bu, [a])
    assert shares(open_opp, AttributionModel.LAST_TOUCH) == {"Two": 1.0}


def test_same_campaign_through_two_contacts_counts_once(bu):
    a, b = contact(bu, "a@x.test"), contact(bu, "b@x.test")
    c1, c2 = campaign(bu, "Shared"), campaign(bu, "Solo")
    member(bu, c1, a, D(2026, 1, 2, tzinfo=dt.UTC))
    member(bu, c1, b, D(2026, 1, 8, tzinfo=dt.UTC))
    member(bu, c2, b, D(2026, 1, 4, tzinfo=dt.UTC))
    opp = opportunity(bu, [a, b])
    assert shares(opp, AttributionModel.EVEN_SPLIT) == {"Shared": 0.5, "Solo": 0.5}
    assert shares(opp, AttributionModel.FIRST_TOUCH) == {"Shared": 1.0}
    assert shares(opp, AttributionModel.LAST_TOUCH) == {"Shared": 1.0}  # b joined Shared last (Jan 8)


def test_opportunity_without_contact_roles_is_unattributed(bu):
    opp = opportunity(bu, [], amount="500")
    for model in AttributionModel:
        assert shares(opp, model) == {None: 1.0}


def test_incremental_and_full_recompute_agree(bu):
    a, b = contact(bu, "a@x.test"), contact(bu, "b@x.test")
    c1, c2, c3 = campaign(bu, "A"), campaign(bu, "B"), campaign(bu, "C")
    member(bu, c1, a, D(2026, 1, 2, tzinfo=dt.UTC))
    opp1 = opportunity(bu, [a], amount="900", won=True, close_date=dt.date(2026, 2, 1))
    opportunity(bu, [a, b], amount="300", created=D(2026, 1, 15, tzinfo=dt.UTC))
    member(bu, c2, b, D(2026, 1, 3, tzinfo=dt.UTC))
    member(bu, c3, a, D(2026, 1, 4, tzinfo=dt.UTC))
    # The opportunity moves to another close day and amount: its old aggregate rows must go.
    services.upsert_opportunities(bu, [{"Id": opp1.crm_id, "Name": "Deal", "Amount": "1200", "CurrencyIsoCode": "EUR",
                                        "IsClosed": True, "IsWon": True, "CloseDate": "2026-02-10",
                                        "CreatedDate": "2026-01-10T09:00:00Z"}])

    def snapshot():
        return sorted((r.campaign_key, r.model, r.day.isoformat(), r.currency, round(r.opportunities, 6),
                       round(r.pipeline, 2), round(r.wins, 6), round(r.won_amount, 2))
                      for r in AttributionDaily.objects.filter(bu=bu) if r.opportunities or r.wins)

    incremental = snapshot()
    services.recompute_attribution(bu)
    assert snapshot() == incremental
    won = [row for row in incremental if row[6]]
    assert {row[2] for row in won} == {"2026-02-10"}
    assert sum(row[7] for row in won if row[1] == AttributionModel.EVEN_SPLIT) == pytest.approx(1200)


def test_bu_isolation(bu, other_bu):
    a = contact(bu, "a@x.test")
    c = campaign(bu, "Mine")
    member(bu, c, a, D(2026, 1, 2, tzinfo=dt.UTC))
    opportunity(bu, [a])
    # The other BU cannot reach our campaign or contact by CRM id.
    result = services.upsert_campaign_members(other_bu, [{"CampaignId": c.crm_campaign_id,
                                                          "ContactId": a.crm_contact_id, "CreatedDate": "2026-01-01"}])
    assert result == {"upserted": 0, "skipped": 1}
    services.recompute_attribution(other_bu)
    assert not Attribution.objects.filter(bu=other_bu).exists()


def test_contact_roles_link_later_and_removal_reattributes(bu):
    from loopline.prospects import services as prospect_services

    c = campaign(bu, "Late link")
    opp = opportunity(bu, [], amount="700")
    services.upsert_contact_roles(bu, [{"Id": "00K000000000000LLL", "OpportunityId": opp.crm_id,
                                        "ContactId": "003000000000000LLL"}])
    assert shares(opp, AttributionModel.EVEN_SPLIT) == {None: 1.0}  # the contact is not a prospect yet
    p = prospect_services.create_prospect(bu, {"email": "late@x.test"}, extra={"crm_contact_id": "003000000000000LLL"})
    member(bu, c, p, D(2026, 1, 2, tzinfo=dt.UTC))
    assert services.link_contact_roles(bu.pk) == 1
    assert shares(opp, AttributionModel.EVEN_SPLIT) == {"Late link": 1.0}
    assert services.remove_contact_roles(bu, ["00K000000000000LLL"]) == 1
    assert shares(opp, AttributionModel.FIRST_TOUCH) == {None: 1.0}
    daily = AttributionDaily.objects.filter(bu=bu, model=AttributionModel.FIRST_TOUCH)
    assert {r.campaign_key: round(r.pipeline) for r in daily if r.opportunities} == {0: 700}
