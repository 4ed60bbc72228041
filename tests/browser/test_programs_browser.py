"""Issue #8, program half of the browser test: build a two-step engagement program in the UI, start it, and watch a
prospect move through it in the live report ([M20]).

The engine runs in this process between page checks (``runner.run_due``), as the ``programs.tick`` task or
``loopline programs worker`` would. Set ``LOOPLINE_SCREENSHOTS=1`` to write docs/images/programs.png.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

SCREENSHOTS = os.environ.get("LOOPLINE_SCREENSHOTS") == "1"
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
PASSWORD = "correct-horse-battery-staple"


def _seed():
    from loopline.accounts import services as account_services
    from loopline.accounts.access import Access
    from loopline.automation import services as automation_services
    from loopline.prospects import services

    bu = account_services.create_business_unit("Acme Marketing")
    user = account_services.create_user("sam@acme.test", password=PASSWORD, first_name="Sam", last_name="Lee")
    account_services.set_membership(bu, user, "marketing")
    access = Access.for_user(user, bu)
    webinar = automation_services.save_list(access, {"name": "Webinar attendees", "kind": "static"})
    jane = services.create_prospect(bu, {"email": "jane.doe@northwind.test", "first_name": "Jane",
                                         "last_name": "Doe", "company": "Northwind Traders"})
    automation_services.add_to_list(bu, webinar, [jane.pk])
    return jane


@pytest.mark.django_db(transaction=True)
def test_build_a_two_step_program_and_watch_a_prospect_move_through_it(live_server, browser, monkeypatch):
    from django.utils import timezone
    from playwright.sync_api import expect

    from loopline.automation.programs import runner
    from loopline.automation.programs.models import ProgramMember
    from loopline.prospects.models import Prospect, ProspectTag

    jane = _seed()
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.set_default_timeout(30_000)  # a shared, busy CI machine

    page.goto(f"{live_server.url}/accounts/login/", timeout=60_000)
    page.get_by_label("Email").fill("sam@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    # A new program for the webinar attendees.
    page.goto(f"{live_server.url}/automation/programs/")
    page.get_by_role("link", name="New program").click()
    page.get_by_label("Name").fill("Webinar follow-up")
    page.get_by_label("Recipient lists").select_option(label="Webinar attendees")
    page.get_by_role("button", name="Save program").click()
    expect(page.get_by_role("heading", name="Webinar follow-up")).to_be_visible()

    # Step 1: tag them at once (the form opens in place, through htmx).
    page.locator("#add-action").click()
    form = page.locator("#step-form")
    expect(form).to_be_visible()
    form.get_by_label("Action 1").select_option("add_tag")
    form.get_by_label("Argument 1").fill("webinar-followup")
    form.get_by_role("button", name="Save step").click()
    expect(page.locator("li.flow-step").first).to_contain_text("webinar-followup")

    # Step 2: a minute later, add 15 points.
    page.locator("#add-action").click()
    form = page.locator("#step-form")
    form.get_by_label("Action 1").select_option("adjust_score")
    form.get_by_label("Argument 1").fill("15")
    form.get_by_label("Run this step").select_option("delay")
    form.get_by_label("Wait", exact=True).fill("1")
    form.get_by_label("Unit").select_option("minutes")
    form.get_by_role("button", name="Save step").click()
    steps = page.locator("li.flow-step")
    expect(steps).to_have_count(2)
    expect(steps.nth(0)).to_contain_text("Then → Step 2")
    expect(steps.nth(1)).to_contain_text("After waiting 1 minute")

    page.get_by_role("button", name="Start program").click()
    expect(page.get_by_text("1 prospect(s) entered")).to_be_visible()
    report = page.locator("#step-report")

    # The engine moves Jane through step 1; the report (polled every few seconds) shows her waiting at step 2.
    runner.run_due()
    expect(report.locator('tr[data-step="1"] .report-passed')).to_have_text("1", timeout=20_000)
    expect(report.locator('tr[data-step="2"] .report-waiting')).to_have_text("1")
    assert ProspectTag.objects.filter(prospect_id=jane.pk, tag__name="webinar-followup").exists()
    if SCREENSHOTS:
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / "programs.png"), full_page=True)

    # The minute is up: step 2 runs and she finishes the program.
    ProgramMember.objects.filter(prospect_id=jane.pk).update(next_run_at=timezone.now() - dt.timedelta(seconds=1))
    runner.run_due()
    expect(report.locator('tr[data-step="2"] .report-passed')).to_have_text("1", timeout=20_000)
    expect(page.locator("#count-finished")).to_have_text("1")
    assert Prospect.objects.get(pk=jane.pk).score == 15

    # Pausing and resuming from the page.
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
