"""Done-when of the reporting issue: a real browser opens the dashboard and the campaign ROI report and the charts
render with the right numbers ([M34], [M35]). Set ``LOOPLINE_SCREENSHOTS=1`` to also write docs/images/reports-*.png.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

SCREENSHOTS = os.environ.get("LOOPLINE_SCREENSHOTS") == "1"
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
PASSWORD = "correct-horse-battery-staple"


def _shot(page, name):
    if SCREENSHOTS:
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / name), full_page=True)


def _seed():
    from django.utils import timezone

    from loopline.accounts import services as account_services
    from loopline.accounts.models import Role
    from loopline.campaigns import services
    from loopline.campaigns.models import Campaign
    from loopline.prospects import services as prospect_services

    # A transactional test flushes the tables, including the roles the migration created.
    for key, name, scope in [("administrator", "Administrator", "all"), ("marketing", "Marketing", "all"),
                             ("sales_manager", "Sales Manager", "all"), ("sales", "Sales", "assigned")]:
        Role.objects.get_or_create(bu=None, key=key, defaults={"name": name, "prospect_scope": scope})
    bu = account_services.create_business_unit("Acme Marketing")
    user = account_services.create_user("sam@acme.test", password=PASSWORD, first_name="Sam")
    account_services.set_membership(bu, user, "marketing")
    now = timezone.now()
    camps = []
    for i, (name, kind, cost) in enumerate([("Spring webinar", "Webinar", "2000"), ("Berlin trade show", "Trade show",
                                                                                     "8000"),
                                            ("Search ads", "Paid search", None), ("Newsletter", "Email", "300")]):
        camps.append(Campaign.objects.create(bu=bu, name=name, type=kind, actual_cost=cost, status="in_progress",
                                             crm_campaign_id=f"701{i:015d}"))
    people = []
    for i in range(8):
        p = prospect_services.create_prospect(
            bu, {"email": f"buyer{i}@northwind.example", "first_name": f"Buyer{i}", "company": "Northwind"},
            extra={"crm_contact_id": f"003{i:015d}", "score": 40 + 15 * i, "source_campaign": camps[i % 4]})
        people.append(p)
    members = [{"CampaignId": camps[(i + k) % 4].crm_campaign_id, "ContactId": p.crm_contact_id, "Status": "Responded",
                "HasResponded": True, "CreatedDate": (now - dt.timedelta(days=40 - 3 * i - k)).isoformat()}
               for i, p in enumerate(people) for k in range(2)]
    services.upsert_campaign_members(bu, members)
    opps = [{"Id": f"006{i:015d}", "Name": f"Northwind deal {i}", "Amount": str(amount), "CurrencyIsoCode": "EUR",
             "StageName": stage, "IsClosed": stage.startswith("Closed"), "IsWon": stage == "Closed Won",
             "CloseDate": (now - dt.timedelta(days=3)).date().isoformat(),
             "CreatedDate": (now - dt.timedelta(days=20)).isoformat()}
            for i, (amount, stage) in enumerate([(12000, "Closed Won"), (4000, "Closed Won"), (9000, "Negotiation"),
                                                 (1500, "Closed Lost")])]
    services.upsert_opportunities(bu, opps)
    services.upsert_contact_roles(bu, [{"OpportunityId": f"006{i:015d}", "ContactId": people[2 * i].crm_contact_id,
                                        "Role": "Buyer"} for i in range(4)]
                                  + [{"OpportunityId": "006000000000000000", "ContactId": people[1].crm_contact_id}])
    return bu


@pytest.mark.django_db(transaction=True)
def test_dashboard_and_roi_charts_show_the_right_numbers(live_server, browser, monkeypatch):
    from playwright.sync_api import expect

    from loopline.accounts.access import Access
    from loopline.accounts.models import User
    from loopline.campaigns import selectors

    bu = _seed()
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    access = Access.for_user(User.objects.get(email="sam@acme.test"), bu)
    period = selectors.preset_period("30d", dt.date.today())
    expected = selectors.roi_report(access, selectors.preset_period("365d", dt.date.today()), currency="EUR")
    expected_won = {r.name: round(r.won[3], 2) for r in expected.rows if r.won[3]}
    assert sum(expected_won.values()) == pytest.approx(16000)

    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/accounts/login/?next=/reports/")
    page.get_by_label("Email").fill("sam@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("heading", name="Marketing dashboard")).to_be_visible()
    expect(page.locator("#stat-won")).to_have_text("16,000")
    expect(page.locator("#stat-pipeline")).to_have_text("9,000")
    expect(page.locator("canvas[data-chart='chart-top']")).to_have_attribute("data-rendered", "true")
    top = page.evaluate("() => { const c = window.looplineCharts['chart-top'];"
                        " return {labels: c.data.labels, data: c.data.datasets[0].data}; }")
    assert dict(zip(top["labels"], top["data"], strict=True)) == expected_won
    daily = page.evaluate("() => window.looplineCharts['chart-daily'].data.datasets[0].data"
                          ".reduce((a, b) => a + b, 0)")
    assert daily == selectors.dashboard(access, period)["new_prospects"] == 8
    _shot(page, "reports-dashboard.png")

    page.get_by_role("link", name="Campaign ROI").first.click()
    expect(page.get_by_role("heading", name="Campaign ROI")).to_be_visible()
    page.get_by_label("Period").select_option("365d")
    page.get_by_label("Attribution model").select_option("even")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("canvas[data-chart='chart-roi']")).to_have_attribute("data-rendered", "true")
    chart = page.evaluate("() => { const c = window.looplineCharts['chart-roi'];"
                          " return {labels: c.data.labels, won: c.data.datasets[0].data,"
                          " cost: c.data.datasets[2].data}; }")
    plotted = {name: won for name, won in zip(chart["labels"], chart["won"], strict=True) if won}
    assert plotted == expected_won
    assert dict(zip(chart["labels"], chart["cost"], strict=True))["Berlin trade show"] == 8000
    row = page.locator("#roi-table tr[data-campaign='Search ads']")
    expect(row.locator("td.roi")).to_contain_text("not computable: no cost recorded")
    _shot(page, "reports-roi.png")

    # Drill down to a campaign, then to an opportunity's attribution breakdown.
    page.locator("#roi-table tr[data-campaign='Spring webinar'] a").first.click()
    expect(page.get_by_role("heading", name="Spring webinar")).to_be_visible()
    page.get_by_role("link", name="Won in the period").click()
    page.get_by_role("link", name="Northwind deal 0").click()
    expect(page.locator("table.attribution").first).to_be_visible()
    _shot(page, "reports-opportunity.png")

    page.goto(f"{live_server.url}/reports/lifecycle/?period=90d")
    expect(page.locator("canvas[data-chart='chart-funnel']")).to_have_attribute("data-rendered", "true")
    counts = page.evaluate("() => window.looplineCharts['chart-funnel'].data.datasets[0].data")
    rows = selectors.lifecycle_report(access, selectors.preset_period("90d", dt.date.today()))
    assert counts == [r.count for r in rows]
    _shot(page, "reports-lifecycle.png")
