"""Report pages: rendering, drill-down, CSV export, scheduled delivery, settings, scoping ([M1], [M33]-[M36])."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.core import mail
from django.utils import timezone

from loopline.accounts import services as account_services
from loopline.campaigns import services
from loopline.campaigns.models import ScheduledReport

from .factories import campaign, contact, member, opportunity

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(bu, sales_user):
    today = timezone.now().astimezone(dt.UTC)
    webinar = campaign(bu, "Webinar", cost="1000")
    ads = campaign(bu, "Ads", cost=None, type_="Paid search")
    a = contact(bu, "a@x.test", assigned_user=sales_user)
    b = contact(bu, "b@x.test")
    member(bu, webinar, a, today - dt.timedelta(days=20))
    member(bu, ads, b, today - dt.timedelta(days=19))
    won = opportunity(bu, [a], amount="5000", won=True, close_date=(today - dt.timedelta(days=2)).date(),
                      created=today - dt.timedelta(days=10), name="Big deal")
    other = opportunity(bu, [b], amount="800", created=today - dt.timedelta(days=5), name="Other deal")
    return {"webinar": webinar, "ads": ads, "a": a, "b": b, "won": won, "other": other}


def test_pages_render_for_marketing(client, marketing_user, data):
    client.force_login(marketing_user)
    for url in ("/reports/", "/reports/roi/", "/reports/lifecycle/", "/reports/opportunities/",
                f"/reports/opportunities/{data['won'].pk}/", f"/reports/roi/campaign/{data['webinar'].pk}/",
                "/reports/roi/unattributed/", "/reports/lifecycle/mql/", "/reports/lifecycle/prospect/",
                "/reports/schedules/", "/reports/settings/"):
        response = client.get(url)
        assert response.status_code == 200, url
    page = client.get("/reports/roi/?period=30d&model=even&currency=EUR").content.decode()
    assert "Webinar" in page and "400%" in page  # (5000 - 1000) / 1000 [M35]
    assert "not computable: no cost recorded" in page  # Ads has no cost
    drill = client.get(f"/reports/roi/campaign/{data['webinar'].pk}/?period=30d").content.decode()
    assert "Members (1: 1 responded)" in drill and "Big deal" in drill
    detail = client.get(f"/reports/opportunities/{data['won'].pk}/").content.decode()
    assert "Webinar" in detail and "100%" in detail


def test_bad_filters_fall_back_with_a_message(client, marketing_user, data):
    client.force_login(marketing_user)
    response = client.get("/reports/roi/?start=garbage&end=2026-01-01&model=nope&currency=ZZZ")
    assert response.status_code == 200
    assert b"Dates must look like" in response.content
    assert client.get("/reports/lifecycle/nonsense/").status_code == 404
    assert client.get("/reports/roi/?start=2026-05-02&end=2026-05-01").status_code == 200


def test_roi_csv_export(client, marketing_user, data):
    client.force_login(marketing_user)
    response = client.get("/reports/roi/?period=30d&model=first&currency=EUR&format=csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    webinar = next(r for r in rows if r["Campaign"] == "Webinar")
    assert webinar["Won (first touch)"] == "5000.00" and webinar["ROI"] == "4.0000"
    ads = next(r for r in rows if r["Campaign"] == "Ads")
    assert ads["ROI"] == "" and ads["Pipeline"] == "800.00"
    lifecycle = client.get("/reports/lifecycle/?period=30d&format=csv").content.decode()
    assert "Prospects" in lifecycle and "Won" in lifecycle
    drill = client.get("/reports/lifecycle/prospect/?period=30d&format=csv").content.decode()
    assert "a@x.test" in drill and "b@x.test" in drill
    opps = client.get("/reports/opportunities/?format=csv").content.decode()
    assert "Big deal" in opps and "Other deal" in opps


def test_csv_cells_never_become_formulas(client, marketing_user, bu, data):
    data["webinar"].name = "=HYPERLINK(1)"
    data["webinar"].save()
    client.force_login(marketing_user)
    content = client.get("/reports/roi/?period=30d&format=csv").content.decode()
    assert "'=HYPERLINK(1)" in content


def test_sales_scoping(client, bu, data, sales_user):
    # Sales has no reports ability at all ([M1]).
    client.force_login(sales_user)
    assert client.get("/reports/").status_code == 403
    # A custom role limited to assigned prospects but allowed reports sees only its prospects' data.
    admin = account_services.create_user("boss@acme.test", password="x" * 20)
    account_services.set_membership(bu, admin, "administrator")
    from loopline.accounts.access import Access

    role = account_services.save_custom_role(Access.for_user(admin, bu), "Field sales",
                                             ["prospects.view", "reports.view", "reports.report"])
    role.prospect_scope = "assigned"
    role.save()
    account_services.set_membership(bu, sales_user, role)
    client.force_login(sales_user)
    opps = client.get("/reports/opportunities/?format=csv").content.decode()
    assert "Big deal" in opps and "Other deal" not in opps
    assert client.get(f"/reports/opportunities/{data['other'].pk}/").status_code == 404
    rows = list(csv.DictReader(io.StringIO(client.get("/reports/roi/?period=30d&format=csv&currency=EUR")
                                             .content.decode())))
    assert next(r for r in rows if r["Campaign"] == "Ads")["Pipeline"] == "0.00"
    assert next(r for r in rows if r["Campaign"] == "Webinar")["Won (even split)"] == "5000.00"
    drill = client.get("/reports/lifecycle/prospect/?period=30d&format=csv").content.decode()
    assert "a@x.test" in drill and "b@x.test" not in drill
    page = client.get("/reports/lifecycle/").content.decode()
    assert "not shown for your role" in page


def test_other_bu_cannot_reach_reports_objects(client, marketing_user, other_bu, data):
    foreign_campaign = campaign(other_bu, "Theirs")
    foreign = opportunity(other_bu, [], name="Their deal")
    client.force_login(marketing_user)
    assert client.get(f"/reports/opportunities/{foreign.pk}/").status_code == 404
    assert client.get(f"/reports/roi/campaign/{foreign_campaign.pk}/").status_code == 404
    assert "Their deal" not in client.get("/reports/opportunities/").content.decode()


def test_schedule_and_send_report_by_email(client, marketing_user, bu, data):
    client.force_login(marketing_user)
    bad = client.post("/reports/schedules/", {"report": "roi", "frequency": "weekly", "recipients": "not-an-email",
                                              "period": "30d", "model": "even"})
    assert bad.status_code == 400 and b"Not an email address" in bad.content
    ok = client.post("/reports/schedules/", {"report": "roi", "frequency": "weekly", "period": "30d",
                                             "recipients": "boss@acme.test, cfo@acme.test", "model": "first"})
    assert ok.status_code == 302
    row = ScheduledReport.objects.get(bu=bu)
    assert row.next_run_at > timezone.now()
    mail.outbox.clear()
    assert services.send_due_reports(now=row.next_run_at) == 1
    assert services.send_due_reports(now=row.next_run_at) == 0  # the slot was claimed: sent once
    sent = [m for m in mail.outbox if "Campaign ROI" in m.subject]
    assert sent and "Webinar" in sent[0].body and "5,000.00" in sent[0].body
    row.refresh_from_db()
    assert row.last_sent_at is not None and row.next_run_at > row.last_sent_at
    assert client.post(f"/reports/schedules/{row.pk}/delete/").status_code == 302
    assert not ScheduledReport.objects.filter(pk=row.pk).exists()


def test_settings_validation_and_save(client, marketing_user, bu, sales_manager_user):
    client.force_login(marketing_user)
    bad = client.post("/reports/settings/", {"mql_score": "lots", "mql_grade": "", "mql_rule": "or"})
    assert bad.status_code == 400 and b"whole number" in bad.content
    none = client.post("/reports/settings/", {"mql_score": "", "mql_grade": "", "mql_rule": "or"})
    assert none.status_code == 400 and b"Set a score or a grade" in none.content
    ok = client.post("/reports/settings/", {"mql_score": "50", "mql_grade": "B", "mql_rule": "and",
                                            "default_currency": "usd"})
    assert ok.status_code == 302
    saved = services.report_settings(bu.pk)
    assert (saved.mql_score, saved.mql_grade, saved.mql_rule, saved.default_currency) == (50, "B", "and", "USD")
    client.force_login(sales_manager_user)
    assert client.get("/reports/settings/").status_code == 403
    assert client.get("/reports/").status_code == 200
