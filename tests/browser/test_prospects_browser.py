"""Done-when of the foundation issue: a real browser logs in, lists, searches, opens and edits a prospect.

Drives Debian's chromium through playwright against the real app (pytest-django's ``live_server``).
Set ``LOOPLINE_SCREENSHOTS=1`` to also write the user-guide screenshots into docs/images/.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from pathlib import Path

import pytest

SCREENSHOTS = os.environ.get("LOOPLINE_SCREENSHOTS") == "1"
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
PASSWORD = "correct-horse-battery-staple"


FIRST = ["Ana", "Ben", "Chloé", "David", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kara", "Liam", "Maya",
         "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
LAST = ["Alvarez", "Brennan", "Chen", "Dubois", "Eriksen", "Fischer", "Garcia", "Hansen", "Ito", "Jensen", "Kowalski",
        "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quint", "Rossi", "Schmidt", "Tanaka", "Ueda", "Varga"]
COMPANIES = ["Northwind Traders", "Contoso Ltd", "Fabrikam", "Tailspin Toys", "Wide World Importers", "Litware",
             "Adventure Works", "Proseware", "Lucerne Publishing", "Coho Winery", "Blue Yonder Airlines"]
TITLES = ["Marketing Manager", "VP Sales", "CTO", "Head of Operations", "Product Owner", "CFO", "IT Director"]


def _seed():
    """A business unit that looks like real use: users in each role, a custom field, campaigns, tagged prospects."""
    from django.utils import timezone

    from loopline.accounts import services as account_services
    from loopline.accounts.access import Access
    from loopline.campaigns.models import Campaign
    from loopline.prospects import services
    from loopline.prospects.models import ActivityType

    rng = random.Random(7)
    bu = account_services.create_business_unit("Acme Marketing")
    europe = account_services.create_business_unit("Acme Nordics")
    admin = account_services.create_user("alex@acme.test", password=PASSWORD, first_name="Alex", last_name="Morgan")
    account_services.set_membership(bu, admin, "administrator")
    account_services.set_membership(europe, admin, "marketing")
    for email, first, last, role in [("sam@acme.test", "Sam", "Lee", "marketing"),
                                     ("rita@acme.test", "Rita", "Patel", "sales_manager"),
                                     ("tom@acme.test", "Tom", "Novak", "sales")]:
        user = account_services.create_user(email, password=PASSWORD, first_name=first, last_name=last)
        account_services.set_membership(bu, user, role)
    access = Access.for_user(admin, bu)
    account_services.save_custom_role(access, "Events team", ["prospects.view", "campaigns.view", "campaigns.edit"])
    services.save_custom_field(access, {"name": "Product interest", "api_name": "product_interest",
                                        "type": "multiselect", "options": ["CRM", "Email", "Analytics"]})
    services.save_custom_field(access, {"name": "Seats", "api_name": "seats", "type": "number", "min_value": 1,
                                        "max_value": 10000, "default_merge_value": "1"})
    webinar = Campaign.objects.create(bu=bu, name="Spring webinar 2026", type="Webinar", status="in_progress")
    Campaign.objects.create(bu=bu, name="Trade show Berlin", type="Trade show", status="planned")
    now = timezone.now()
    grades = ["A", "A-", "B+", "B", "B-", "C+", "C", "D"]
    for i in range(36):
        first, last = FIRST[i % len(FIRST)], LAST[(i * 7) % len(LAST)]
        company = COMPANIES[i % len(COMPANIES)]
        email = f"{first.lower().replace('é', 'e')}.{last.lower()}@{company.split()[0].lower()}.example"
        prospect = services.create_prospect(bu, {
            "email": email, "first_name": first, "last_name": last, "company": company,
            "job_title": TITLES[i % len(TITLES)], "city": rng.choice(["Berlin", "Lyon", "Austin", "Leeds", "Osaka"]),
            "custom.product_interest": rng.sample(["CRM", "Email", "Analytics"], k=1 + i % 2),
        }, extra={"score": rng.randint(0, 180), "grade": rng.choice(grades),
                  "assigned_user": admin if i % 3 == 0 else None, "source_campaign": webinar if i % 4 == 0 else None,
                  "starred": i % 9 == 0})
        if i % 5 == 0:
            services.add_tags(prospect, ["Webinar 2026"] + (["VIP"] if i % 10 == 0 else []))
        for j in range(1 + i % 4):
            services.record_activity(bu.pk, rng.choice([ActivityType.PAGE_VIEW, ActivityType.EMAIL_OPEN,
                                                        ActivityType.EMAIL_CLICK, ActivityType.FORM_SUCCESS]),
                                     prospect=prospect, title=rng.choice(["Pricing", "Newsletter March",
                                                                          "Contact us", "Product tour"]),
                                     occurred_at=now - dt.timedelta(hours=3 * j + i))
    target = services.create_prospect(bu, {"email": "jane.doe@globex.example", "first_name": "Jane",
                                           "last_name": "Doe", "company": "Globex", "job_title": "Buyer",
                                           "city": "Springfield", "custom.seats": 25},
                                      extra={"score": 120, "grade": "A-", "assigned_user": admin,
                                             "source_campaign": webinar})
    services.add_tags(target, ["Webinar 2026", "Hot lead"])
    for title, kind, hours in [("Pricing page", ActivityType.PAGE_VIEW, 2), ("Demo request", ActivityType.FORM_SUCCESS, 5),
                               ("Newsletter March", ActivityType.EMAIL_CLICK, 30)]:
        services.record_activity(bu.pk, kind, prospect=target, title=title, occurred_at=now - dt.timedelta(hours=hours),
                                 points=3 if kind != ActivityType.FORM_SUCCESS else 50)
    return target


def _shot(page, name):
    if SCREENSHOTS:
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / name), full_page=False)


@pytest.mark.django_db(transaction=True)
def test_login_list_search_open_and_edit_a_prospect(live_server, browser, monkeypatch):
    from playwright.sync_api import expect

    target = _seed()
    target_pk = target.pk
    # playwright's sync API runs an event loop in this thread; our ORM calls below happen outside page actions.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")

    page = browser.new_page(viewport={"width": 1366, "height": 860})
    page.set_default_timeout(15_000)

    # Sign in through the login page.
    page.goto(f"{live_server.url}/")
    expect(page).to_have_url(f"{live_server.url}/accounts/login/?next=/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Email").fill("alex@acme.test")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("don't match")).to_be_visible()
    page.get_by_label("Email").fill("alex@acme.test")
    page.get_by_label("Password").fill("")
    _shot(page, "login.png")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    # Home is the marketing dashboard; the side navigation leads to the prospect list.
    expect(page.get_by_role("heading", name="Marketing dashboard")).to_be_visible()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Prospects").click()

    # The prospect list.
    expect(page.get_by_role("heading", name="Prospects", exact=True)).to_be_visible()
    expect(page.locator("#result-count")).to_contain_text("of 37")
    rows = page.locator("#prospect-table tbody tr")
    expect(rows).to_have_count(37)
    _shot(page, "prospect-list.png")

    # Live search (htmx replaces the table as you type) and the URL follows.
    page.get_by_label("Search").press_sequentially("doe", delay=40)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("jane.doe@globex.example")
    expect(page).to_have_url(f"{live_server.url}/prospects/?q=doe", timeout=5_000)

    # Sort by score through the column header.
    page.get_by_label("Search").fill("")
    page.get_by_label("Search").press("Backspace")
    expect(rows).to_have_count(37)
    page.get_by_role("link", name="Score").click()
    expect(page.locator("th[aria-sort=ascending]")).to_contain_text("Score")
    expect(page).to_have_url(f"{live_server.url}/prospects/?sort=score")
    # A filter change keeps the sort chosen on the header.
    page.get_by_label("Grade").select_option("A-")
    expect(page).to_have_url(f"{live_server.url}/prospects/?grade=A-&sort=score")
    expect(page.locator("th[aria-sort=ascending]")).to_contain_text("Score")
    expect(rows).not_to_have_count(37)
    filtered = rows.count()
    page.get_by_label("Grade").select_option("")
    expect(page).to_have_url(f"{live_server.url}/prospects/?sort=score")
    expect(rows).to_have_count(37)
    # Back restores the previous list state as a whole page (htmx history restore), not a bare table.
    page.go_back()
    expect(page).to_have_url(f"{live_server.url}/prospects/?grade=A-&sort=score")
    expect(page.get_by_label("Grade")).to_have_value("A-")
    expect(page.locator("nav.sidenav")).to_have_count(1)
    expect(rows).to_have_count(filtered)
    page.get_by_role("link", name="Prospects", exact=True).click()
    expect(page).to_have_url(f"{live_server.url}/prospects/")
    expect(rows).to_have_count(37)

    # Open the prospect.
    page.get_by_label("Search").fill("jane.doe@")
    page.get_by_label("Search").press("e")  # keyup triggers the live search
    page.get_by_label("Search").press("Backspace")
    expect(rows).to_have_count(1)
    rows.first.get_by_role("link").click()
    expect(page.locator("#prospect-name")).to_have_text("Jane Doe")
    expect(page.locator("#timeline")).to_contain_text("Demo request")
    expect(page.locator("#tags")).to_contain_text("Hot lead")
    # Add a tag without reloading.
    page.get_by_placeholder("Add a tag…").fill("Budget approved")
    page.locator("#tags").get_by_role("button", name="Add").click()
    expect(page.locator("#tags")).to_contain_text("Budget approved")
    _shot(page, "prospect-detail.png")

    # Edit a field and save.
    page.get_by_role("link", name="Edit", exact=True).click()
    expect(page.get_by_role("heading", name="Edit Jane Doe")).to_be_visible()
    page.get_by_label("Job title").fill("Head of Procurement")
    page.get_by_label("Seats").fill("-3")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_text("Seats: must be at least 1")).to_be_visible()
    expect(page.get_by_label("Job title")).to_have_value("Head of Procurement")  # input kept
    page.get_by_label("Seats").fill("40")
    page.get_by_role("button", name="Save changes").click()

    # The new value is on the detail page, with the change summary and a fresh "Updated" time.
    expect(page.locator("#prospect-name")).to_have_text("Jane Doe")
    expect(page.get_by_text("Saved. Changed:")).to_contain_text("Job title")
    expect(page.locator("[data-field=job_title] dd")).to_have_text("Head of Procurement")
    expect(page.locator("[data-field='custom.seats'] dd")).to_have_text("40")

    # The admin's users page (for the guide).
    page.get_by_role("link", name="Users and roles").click()
    expect(page.get_by_role("heading", name="Users and roles")).to_be_visible()
    expect(page.get_by_role("cell", name="tom@acme.test", exact=True)).to_be_visible()
    _shot(page, "users.png")

    # Sign out.
    page.locator(".user-menu summary").click()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    from loopline.prospects.models import Prospect

    saved = Prospect.objects.get(pk=target_pk)
    assert saved.job_title == "Head of Procurement"
    assert saved.custom["seats"] == 40
    assert "job_title" in saved.field_changed_at
    assert saved.tags.filter(name="Budget approved").exists()
