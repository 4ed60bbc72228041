"""[M16] [M17] A marketer builds a dynamic list with the criteria builder (nested group included) in a real browser,
sees the matching prospect in it, and sees membership follow a prospect change."""

from __future__ import annotations

import pytest

PASSWORD = "correct-horse-battery-staple"


def _seed():
    from loopline.accounts import services as account_services
    from loopline.prospects import services
    from loopline.prospects.models import ActivityType

    bu = account_services.create_business_unit("Acme Marketing")
    user = account_services.create_user("sam@acme.test", password=PASSWORD, first_name="Sam", last_name="Lee")
    account_services.set_membership(bu, user, "marketing")
    ann = services.create_prospect(bu, {"email": "ann@fabrikam.test", "first_name": "Ann", "last_name": "Match",
                                        "industry": "Software"}, extra={"score": 80})
    bob = services.create_prospect(bu, {"email": "bob@contoso.test", "first_name": "Bob", "last_name": "Later",
                                        "industry": "Retail"}, extra={"score": 60})
    carl = services.create_prospect(bu, {"email": "carl@litware.test", "first_name": "Carl", "last_name": "Idle",
                                         "industry": "Software"}, extra={"score": 90})
    for p in (ann, bob):
        services.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=p, url="https://acme.test/pricing")
    return bob, carl


@pytest.mark.django_db(transaction=True)
def test_build_a_dynamic_list_and_see_members(live_server, browser, monkeypatch):
    from playwright.sync_api import expect

    from loopline.prospects import services

    bob, carl = _seed()
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill("sam@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    def redraw(source: str, action) -> None:
        """Do ``action`` and wait until the builder redraw it causes has landed (not a live-preview request);
        ``source`` is htmx's HX-Source of the triggering element ("select#<id>", or "button")."""
        with page.expect_response(lambda r: "criteria/builder" in r.url
                                  and r.request.headers.get("hx-source") == source):
            action()
        # The response is not the redraw: on a loaded machine the swap can land later, and typing into (or clicking)
        # the old builder meanwhile is lost. Wait until htmx has swapped and settled everything in flight.
        page.wait_for_function("() => !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')")
        page.wait_for_timeout(50)

    page.goto(f"{live_server.url}/automation/lists/")
    page.get_by_role("link", name="New dynamic list").click()
    page.locator("#list-name").fill("Hot software prospects")
    # Condition 1: Industry is "software" (the operator list appears once the field is chosen).
    redraw("select#c__r-0__field", lambda: page.locator("#c__r-0__field").select_option(label="Industry"))
    expect(page.locator("#c__r-0__op")).to_be_visible()
    redraw("select#c__r-0__op", lambda: page.locator("#c__r-0__op").select_option(label="is"))
    page.locator("#c__r-0__value").fill("software")
    # Condition 2: Score is at least 50.
    redraw("button", lambda: page.get_by_role("button", name="+ Add condition").first.click())
    expect(page.locator("#c__r-1__field")).to_be_visible()
    redraw("select#c__r-1__field", lambda: page.locator("#c__r-1__field").select_option(label="Score"))
    expect(page.locator("#c__r-1__op")).to_be_visible()
    redraw("select#c__r-1__op", lambda: page.locator("#c__r-1__op").select_option(label="is at least"))
    page.locator("#c__r-1__value").fill("50")
    # A nested "any" group: visited a page containing "pricing" in the last 30 days, or tagged "vip".
    redraw("button", lambda: page.get_by_role("button", name="+ Add group (and/or)").first.click())
    expect(page.locator("#c__r-2-0__field")).to_be_visible()
    redraw("select#c__r-2-0__field", lambda: page.locator("#c__r-2-0__field").select_option(label="Activity"))
    expect(page.locator("#c__r-2-0__type")).to_be_visible()
    page.locator("#c__r-2-0__type").select_option(label="Page view")
    page.locator("#c__r-2-0__url_contains").fill("pricing")
    page.locator("#c__r-2-0__days").fill("30")
    redraw("button", lambda: page.locator("[data-path='r-2'] >> text=+ Add condition").click())
    expect(page.locator("#c__r-2-1__field")).to_be_visible()
    redraw("select#c__r-2-1__field", lambda: page.locator("#c__r-2-1__field").select_option(label="Tag"))
    page.locator("#c__r-2-1__value").fill("vip")
    expect(page.locator("#criteria-summary")).to_contain_text("Industry is")
    expect(page.locator("#criteria-preview")).to_contain_text("1 prospect match")
    page.get_by_role("button", name="Save list").click()

    expect(page.get_by_role("heading", name="Hot software prospects")).to_be_visible()
    members = page.locator("#members-table tbody")
    expect(members).to_contain_text("ann@fabrikam.test")
    expect(members).not_to_contain_text("bob@contoso.test")
    expect(members).not_to_contain_text("carl@litware.test")
    expect(page.locator("#member-count")).to_have_text("1")
    expect(page.locator("#list-criteria")).to_contain_text("page view on a page containing \"pricing\"")

    # Membership follows changes: Bob moves to Software, Carl gets the tag.
    services.update_prospect(bob, {"industry": "Software"})
    services.add_tags(carl, ["VIP"])
    services.update_prospect(carl, {"job_title": "CTO"})  # a change event (tagging alone publishes none yet)
    page.reload()
    expect(members).to_contain_text("bob@contoso.test")
    expect(members).to_contain_text("carl@litware.test")
    expect(page.locator("#member-count")).to_have_text("3")
    page.goto(f"{live_server.url}/automation/lists/")
    expect(page.locator("#lists-table")).to_contain_text("Hot software prospects")
