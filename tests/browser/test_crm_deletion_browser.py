"""A real browser on the prospect page of a prospect deleted in the CRM ([R31]): the badge, the clear "Sync with CRM"
answer, and "Allow CRM record to be recreated" — against a live crmsandbox."""

from __future__ import annotations

import pytest

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def sandbox():
    from loopline.connector.tests.sandbox import SandboxProcess

    crm = SandboxProcess.start()
    yield crm
    crm.stop()


def _connected_bu(sandbox):
    from loopline.accounts import services as account_services
    from loopline.accounts.access import Access
    from loopline.connector import keys, services
    from loopline.platform import crypto

    bu = account_services.create_business_unit("Acme Marketing")
    admin = account_services.create_user(
        "alex@acme.test", password=PASSWORD, first_name="Alex", last_name="Morgan"
    )
    account_services.set_membership(bu, admin, "administrator")
    access = Access.for_user(admin, bu)
    private_pem, cert_pem = keys.generate_key_pair("Loopline browser test")
    connector = services.create_connector(access)
    connector.private_key = crypto.encrypt(private_pem)
    connector.certificate = cert_pem
    connector.save()
    services.update_connection(
        access,
        connector,
        {
            "login_url": sandbox.login_url,
            "consumer_key": sandbox.add_app("loopline-browser", cert_pem),
            "username": sandbox.integration_username,
            "ca_file": sandbox.ca_file,
        },
    )
    ok, message = services.verify_connection(access, connector)
    assert ok, message
    services.resume(access, connector)
    connector.refresh_from_db()
    return bu, connector


def test_crm_deleted_prospect_page(live_server, browser, sandbox, monkeypatch):  # [R31]
    from playwright.sync_api import expect

    from loopline.connector.sync import pull
    from loopline.prospects import services as prospects
    from loopline.prospects.models import Prospect

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    bu, connector = _connected_bu(sandbox)
    lead_id = sandbox.create("Lead", LastName="Gone", Company="Globex", Email="gone@globex.example")
    pull.poll(connector)
    p = Prospect.objects.get(bu=bu, email="gone@globex.example")
    sandbox.delete("Lead", lead_id)
    pull.poll(connector)
    p.refresh_from_db()
    assert p.is_deleted and p.crm_deleted
    prospects.undelete(p)  # an admin restores it from the recycle bin: still flagged

    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill("alex@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{live_server.url}/prospects/{p.pk}/")
    expect(page.get_by_text("Deleted in CRM", exact=True)).to_be_visible()

    page.get_by_role("button", name="Sync with CRM").click()
    expect(page.get_by_text("Deleted in the CRM; will not be re-synced.")).to_be_visible()

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Allow CRM record to be recreated").click()
    expect(page.get_by_text("The CRM record may be recreated")).to_be_visible()
    expect(page.get_by_text("Deleted in CRM", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Allow CRM record to be recreated")).to_have_count(0)
    p.refresh_from_db()
    assert not p.crm_deleted and not p.crm_lead_id
