"""A real browser walks the CRM connector setup wizard against a live crmsandbox: create → certificate →
credentials → verify → the status page shows "Paused"; then settings, mapping, errors and metadata pages.

Set ``LOOPLINE_SCREENSHOTS=1`` to also write docs/images/connector-*.png for docs/connector.md.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

SCREENSHOTS = os.environ.get("LOOPLINE_SCREENSHOTS") == "1"
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
PASSWORD = "correct-horse-battery-staple"



@pytest.fixture(scope="module")
def sandbox():
    from loopline.connector.tests.sandbox import SandboxProcess, cli

    crm = SandboxProcess.start()
    cli("seed", "--data", str(crm.data), "--leads", "20", "--users", "4", "--campaigns", "4", "--seed", "3")
    yield crm
    crm.stop()


def _shot(page, name, *, full_page=False):
    if SCREENSHOTS:
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / name), full_page=full_page)


def _seed_loopline():
    from loopline.accounts import services as account_services
    from loopline.accounts.access import Access
    from loopline.prospects import services as prospect_services

    bu = account_services.create_business_unit("Acme Marketing")
    admin = account_services.create_user("alex@acme.test", password=PASSWORD, first_name="Alex", last_name="Morgan")
    account_services.set_membership(bu, admin, "administrator")
    marketer = account_services.create_user("sam@acme.test", password=PASSWORD, first_name="Sam")
    account_services.set_membership(bu, marketer, "marketing")
    access = Access.for_user(admin, bu)
    prospect_services.save_custom_field(access, {"name": "Seats", "api_name": "seats", "type": "number"})
    return bu


def _history(connector, bu):
    """Some sync history so the status and error pages look like real use in the screenshots."""
    from django.utils import timezone

    from loopline.connector.models import SyncError, SyncRun
    from loopline.prospects import services as prospect_services

    now = timezone.now()
    for hours, created, updated in [(7, 12, 40), (6, 3, 22), (5, 0, 9), (4, 25, 61), (3, 8, 17), (2, 1, 30),
                                    (1, 0, 12), (0, 4, 19)]:
        run = SyncRun.objects.create(connector=connector, kind="pull", finished_at=now,
                                     counters={"fetched": created + updated + 2, "created": created,
                                               "updated": updated, "skipped": {"echo": 2}}, api_calls=3,
                                     note=f"{created + updated + 2} fetched, {created} created, {updated} updated, "
                                          "2 skipped (echo)")
        SyncRun.objects.filter(pk=run.pk).update(started_at=now - dt.timedelta(hours=hours, minutes=5))
    SyncRun.objects.create(connector=connector, kind="push", finished_at=now, counters={},
                           note="nothing to do: the connector is paused")
    p1 = prospect_services.create_prospect(bu, {"email": "jane.doe@globex.example", "last_name": "Doe"})
    p2 = prospect_services.create_prospect(bu, {"email": "li.wei@initech.example", "last_name": "Wei"})
    SyncError.objects.create(connector=connector, prospect=p1, crm_id="00Q000000000042AAA", direction="to_crm",
                             code="REQUIRED_FIELD_MISSING", message="Required fields are missing: [Company]",
                             fields=["Company"], attempts=2)
    SyncError.objects.create(connector=connector, prospect=p2, direction="to_crm",
                             code="FIELD_CUSTOM_VALIDATION_EXCEPTION",
                             message="Phone is required when working a lead", fields=["Phone"])
    SyncError.objects.create(connector=connector, crm_id="003000000000017AAA", direction="from_crm",
                             code="UNABLE_TO_LOCK_ROW", message="unable to obtain exclusive access to this record",
                             transient=True, status="retrying", attempts=3)


@pytest.mark.django_db(transaction=True)
def test_connector_setup_wizard_against_a_live_sandbox(live_server, browser, sandbox, monkeypatch, tmp_path):
    from playwright.sync_api import expect

    bu = _seed_loopline()
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")

    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill("alex@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    # The nav entry (admins only) leads to "Create connector".
    page.get_by_role("link", name="CRM connector").click()
    expect(page.get_by_role("heading", name="Connect Acme Marketing to your CRM")).to_be_visible()
    _shot(page, "connector-create.png")
    page.get_by_role("button", name="Create connector").click()
    expect(page.get_by_text("Connector created. It is paused")).to_be_visible()
    expect(page.locator("#state-badge")).to_have_text("Paused")
    _shot(page, "connector-setup.png")

    # Step 1: download the certificate and register it in the sandbox, as the page explains.
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download certificate").click()
    cert_path = tmp_path / "loopline.crt"
    download_info.value.save_as(cert_path)
    cert = cert_path.read_text()
    assert cert.startswith("-----BEGIN CERTIFICATE-----")
    consumer_key = sandbox.add_app("Loopline", cert)

    # Step 2: connection details (a wrong one first: the form says what is wrong).
    page.get_by_label("Login URL").fill("http://not-https.example")
    page.get_by_label("Consumer key").fill(consumer_key)
    page.get_by_label("Connector username").fill(sandbox.integration_username)
    page.get_by_label("API version").fill("59.0")
    page.get_by_label("Extra CA file (sandbox only)").fill(sandbox.ca_file)
    page.get_by_role("button", name="Save connection details").click()
    expect(page.get_by_text("The login URL must start with https://")).to_be_visible()
    page.get_by_label("Login URL").fill(sandbox.login_url)
    page.get_by_role("button", name="Save connection details").click()
    expect(page.get_by_text("Connection details saved")).to_be_visible()

    # Step 3: verify (htmx swaps the result in place).
    page.get_by_role("button", name="Verify connection").click()
    expect(page.locator("#verify-result")).to_contain_text("Connection works.", timeout=30_000)
    expect(page.locator("#verify-result")).to_contain_text(sandbox.integration_username)
    page.locator("#verify").scroll_into_view_if_needed()
    _shot(page, "connector-verify.png")

    # The status page: paused, auto-refreshing.
    page.get_by_role("link", name="Status", exact=True).click()
    expect(page.locator("#status-state")).to_have_text("Paused")
    expect(page.get_by_text("Recent sync runs")).to_be_visible()
    expect(page.locator("#status-panel")).to_have_attribute("hx-trigger", "every 5s")

    from loopline.connector.models import Connector

    connector = Connector.objects.get(bu=bu)
    assert connector.status == "paused" and connector.last_verified_at is not None
    _history(connector, bu)
    page.reload()
    expect(page.locator(".bar-chart rect")).to_have_count(24)
    _shot(page, "connector-status.png", full_page=True)

    # Settings.
    page.get_by_role("link", name="Settings", exact=True).click()
    expect(page.get_by_text("Matching mode")).to_be_visible()
    _shot(page, "connector-settings.png")
    page.get_by_label("CRM field for the prospect score").fill("Loopline_Score__c")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_text("Settings saved.")).to_be_visible()

    # Field mapping: fixed fields read-only, a custom field mapped from the describe data.
    page.get_by_role("link", name="Field mapping").click()
    expect(page.get_by_text("does not resync existing records")).to_be_visible()
    page.get_by_label("Loopline custom field").select_option(label="Seats")
    page.get_by_label("Lead field").select_option("Description")
    page.get_by_role("button", name="Add mapping").click()
    expect(page.get_by_text("Seats is now mapped")).to_be_visible()
    _shot(page, "connector-mapping.png", full_page=True)

    # Sync errors.
    page.get_by_role("link", name="Sync errors").click()
    expect(page.get_by_text("REQUIRED_FIELD_MISSING")).to_be_visible()
    _shot(page, "connector-errors.png")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("row", name="li.wei@initech.example").get_by_role("button", name="Dismiss").click()
    expect(page.get_by_text("Error dismissed.")).to_be_visible()

    # Users, campaigns and import.
    page.get_by_role("link", name="Users, campaigns and import").click()
    expect(page.get_by_text("B2BMA Integration User").first).to_be_visible()
    _shot(page, "connector-metadata.png", full_page=True)

    # Resume with confirmation; the badge follows.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(".head-actions").get_by_role("button", name="Resume syncing").click()
    expect(page.locator("#state-badge")).to_have_text("Active")
    connector.refresh_from_db()
    assert connector.status == "active"
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(".head-actions").get_by_role("button", name="Pause syncing").click()
    expect(page.locator("#state-badge")).to_have_text("Paused")
    context.close()

    # A marketer has no nav entry and gets 403.
    other = browser.new_page()
    other.goto(f"{live_server.url}/accounts/login/")
    other.get_by_label("Email").fill("sam@acme.test")
    other.get_by_label("Password").fill(PASSWORD)
    other.get_by_role("button", name="Sign in").click()
    expect(other.get_by_role("link", name="CRM connector")).to_have_count(0)
    response = other.goto(f"{live_server.url}/connector/")
    assert response is not None and response.status == 403
