"""Tracking end to end in a real browser: a sample site on another origin carries the tracker and an embedded form.

The demo site (loopline.tracking.demo) runs on its own port, so it is a different origin (and site: 127.0.0.1 vs
localhost) from Loopline's live server: CORS, the first-party cookie and the iframe embed are exercised for real.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

PASSWORD = "correct-horse-battery-staple"
# LOOPLINE_SCREENSHOTS=1 also writes the screenshots of docs/tracking.md and docs/forms.md.
SCREENSHOTS = os.environ.get("LOOPLINE_SCREENSHOTS") == "1"
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def _shot(page, name, *, full_page=False):
    if SCREENSHOTS:
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1280, "height": 860})
        page.screenshot(path=str(IMAGES / name), full_page=full_page)



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def form_id(bu) -> int:
    from loopline.forms.models import Form

    return Form.objects.filter(bu=bu).values_list("pk", flat=True).first()


def _setup(live_url: str, *, require_consent: bool = False):
    from loopline.accounts import services as account_services
    from loopline.accounts.models import Role
    from loopline.tracking import demo

    # A transactional test flushes the tables, including the roles the migration created.
    for key, name, scope in [("administrator", "Administrator", "all"), ("marketing", "Marketing", "all"),
                             ("sales_manager", "Sales Manager", "all"), ("sales", "Sales", "assigned")]:
        Role.objects.get_or_create(bu=None, key=key, defaults={"name": name, "prospect_scope": scope})
    bu = account_services.create_business_unit("Northwind Marketing")
    user = account_services.create_user("mia@northwind.test", password=PASSWORD, first_name="Mia")
    account_services.set_membership(bu, user, "marketing")
    port = _free_port()
    origin = f"http://127.0.0.1:{port}"
    config, form = demo.ensure_demo_assets(bu, origin=origin)
    config.allowed_origins = [origin]
    config.require_consent = require_consent
    config.save()
    server = demo.make_server(port, base_url=live_url, tracker_key=config.key, form_key=form.key)
    demo.serve_in_thread(server)
    return bu, origin, server


@pytest.mark.django_db(transaction=True)
def test_visitor_is_tracked_across_origins_submits_form_and_timeline_shows_every_step(live_server, settings,
                                                                                       browser):
    from playwright.sync_api import expect

    from loopline.prospects.models import Activity, ActivityType, Prospect
    from loopline.tracking.ingest import ingest_all

    settings.PUBLIC_BASE_URL = live_server.url
    bu, origin, server = _setup(live_server.url)
    try:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(45_000)

        def visit(action):
            with page.expect_response(lambda r: r.url.endswith("/hit") and r.request.method == "POST") as hit:
                action()
            assert hit.value.status == 200 and hit.value.json()["accepted"] == 1

        visit(lambda: page.goto(f"{origin}/"))
        cookies = {c["name"]: c for c in context.cookies(origin)}
        assert f"visitor_id{bu.pk}" in cookies, cookies
        assert cookies[f"visitor_id{bu.pk}"]["expires"] > 0  # persistent (1 year), first-party on the site
        visitor_id = cookies[f"visitor_id{bu.pk}"]["value"]

        visit(lambda: page.get_by_role("link", name="See pricing").click())
        visit(lambda: page.get_by_role("link", name="Talk to sales").click())

        frame = page.frame_locator("iframe[data-loopline-form]")
        frame.get_by_label("Work email").fill("not-an-email")
        frame.get_by_label("First name").fill("Pat")
        frame.get_by_role("button", name="Contact me").click()
        expect(frame.get_by_text("is not a valid email address")).to_be_visible()
        expect(frame.get_by_label("First name")).to_have_value("Pat")  # input kept
        _shot(page, "tracking-demo-site-form-error.png")
        frame.get_by_label("Work email").fill("pat@customer.example")
        frame.get_by_label("Company").fill("Customer Co")
        frame.get_by_role("button", name="Contact me").click()
        expect(frame.get_by_text("A Northwind specialist will be in touch")).to_be_visible()

        ingest_all()
        prospect = Prospect.objects.get(bu=bu, email="pat@customer.example")
        assert prospect.visitors.filter(cookie_id=visitor_id).exists()
        views = Activity.objects.filter(prospect=prospect, type=ActivityType.PAGE_VIEW).order_by("occurred_at")
        assert [v.url.split("?")[0] for v in views] == [f"{origin}/", f"{origin}/pricing.html",
                                                          f"{origin}/contact.html"]
        assert views[1].data.get("utm_campaign") == "spring"
        assert Activity.objects.filter(prospect=prospect, type=ActivityType.FORM_SUCCESS).count() == 1
        assert Activity.objects.filter(prospect=prospect, type=ActivityType.VISIT).count() == 1
        assert list(prospect.tags.values_list("name", flat=True)) == ["demo-site"]

        # The marketer sees every step on the prospect's timeline.
        ui = browser.new_page()
        ui.set_default_timeout(45_000)
        ui.goto(f"{live_server.url}/accounts/login/")
        ui.get_by_label("Email").fill("mia@northwind.test")
        ui.get_by_label("Password").fill(PASSWORD)
        ui.get_by_role("button", name="Sign in").click()
        ui.goto(f"{live_server.url}/prospects/{prospect.pk}/")
        timeline = ui.locator(".timeline")
        expect(timeline).to_contain_text("Form success")
        expect(timeline).to_contain_text("Contact · Northwind")
        expect(timeline).to_contain_text("Pricing · Northwind")
        expect(timeline).to_contain_text("Northwind Widgets")
        expect(timeline).to_contain_text("Visit")
        _shot(ui, "tracking-prospect-timeline.png")
        # And the form's report counts the view and the submission, with charts.
        ui.goto(f"{live_server.url}/forms/")
        expect(ui.locator("#forms-report")).to_contain_text("Demo contact form")
        expect(ui.locator("#forms-chart-canvas")).to_be_visible()
        _shot(ui, "forms-list.png", full_page=True)
        ui.locator("#forms-report").get_by_role("link", name="Report").first.click()
        expect(ui.locator("#report-totals")).to_contain_text("Submissions")
        expect(ui.locator("#conversion-rate")).to_contain_text("%")
        assert ui.evaluate("() => !!Chart.getChart('asset-daily-canvas')")  # chart.js drew the daily chart
        _shot(ui, "forms-report.png", full_page=True)
        ui.goto(f"{live_server.url}/forms/{form_id(bu)}/")
        _shot(ui, "forms-builder.png", full_page=True)
        ui.goto(f"{live_server.url}/tracking/visitors/")
        expect(ui.locator("table")).to_contain_text("Pat")
        _shot(ui, "tracking-visitors.png")
        ui.goto(f"{live_server.url}/tracking/")
        expect(ui.locator("body")).to_contain_text("tracker.js")
        _shot(ui, "tracking-settings.png", full_page=True)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.django_db(transaction=True)
def test_consent_banner_gates_tracking_and_gpc_tracks_nothing(live_server, settings, browser):
    from playwright.sync_api import expect

    from loopline.tracking.models import TrackingHit

    settings.PUBLIC_BASE_URL = live_server.url
    bu, origin, server = _setup(live_server.url, require_consent=True)
    try:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(45_000)
        page.goto(f"{origin}/")
        banner = page.get_by_role("dialog", name="Tracking consent")
        expect(banner).to_be_visible()
        assert f"visitor_id{bu.pk}" not in {c["name"] for c in context.cookies(origin)}
        assert TrackingHit.objects.count() == 0
        with page.expect_response(lambda r: r.url.endswith("/hit") and r.request.method == "POST"):
            banner.get_by_role("button", name="Allow").click()
        expect(banner).to_be_hidden()
        assert f"visitor_id{bu.pk}" in {c["name"] for c in context.cookies(origin)}
        assert TrackingHit.objects.count() == 1

        # A browser sending Global Privacy Control: no banner, no cookie, no hits.
        gpc = browser.new_context(extra_http_headers={"Sec-GPC": "1"})
        gpc.add_init_script("Object.defineProperty(navigator, 'globalPrivacyControl', {get: () => true})")
        p2 = gpc.new_page()
        p2.goto(f"{origin}/pricing.html")
        p2.wait_for_load_state("networkidle")
        expect(p2.get_by_role("dialog", name="Tracking consent")).to_have_count(0)
        assert not gpc.cookies(origin)
        assert TrackingHit.objects.count() == 1
    finally:
        server.shutdown()
        server.server_close()
