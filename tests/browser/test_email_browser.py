"""Email end to end in a real browser: preview an email as a prospect, send a test, open it in the demo inbox and
click a tracked link ([M23], [M24], [M6]).

Set ``LOOPLINE_SCREENSHOTS=1`` to also write the docs/email.md screenshots into docs/images/.
"""

from __future__ import annotations

import time

import pytest

from loopline.conftest import PASSWORD


def _seed():
    from loopline.accounts import services as account_services
    from loopline.accounts.access import Access
    from loopline.accounts.models import Role
    from loopline.emails import services
    from loopline.prospects.models import Prospect

    # A transactional test flushes the tables, including the roles the migration created.
    for key, name, scope in [("administrator", "Administrator", "all"), ("marketing", "Marketing", "all"),
                             ("sales_manager", "Sales Manager", "all"), ("sales", "Sales", "assigned")]:
        Role.objects.get_or_create(bu=None, key=key, defaults={"name": name, "prospect_scope": scope})
    bu = account_services.create_business_unit("Northwind Marketing", postal_address="12 Harbour Road, Portsmouth")
    user = account_services.create_user("mia@northwind.test", password=PASSWORD, first_name="Mia", last_name="Berg")
    account_services.set_membership(bu, user, "marketing")
    access = Access.for_user(user, bu)
    Prospect.objects.create(bu=bu, email="jo@contoso.test", email_key="jo@contoso.test", first_name="Jo",
                            company="Contoso")
    pat = Prospect.objects.create(bu=bu, email="pat@initech.test", email_key="pat@initech.test", first_name="Pat",
                                  last_name="Lee", company="Initech", assigned_user=user)
    body = """<mjml><mj-body background-color="#f4f4f7"><mj-section background-color="#ffffff"><mj-column>
<mj-text font-size="20px">Hello {{ prospect.first_name|default("there", true) }},</mj-text>
<mj-text>{% if prospect.company %}Teams at {{ account.name }} {% else %}Teams like yours {% endif %}save hours with
our new reports.</mj-text>
<mj-button href="https://www.example.com/reports">See the new reports</mj-button>
<mj-text>{{ user.full_name }}</mj-text>
<mj-text font-size="11px" color="#666666"><a href="{{ unsubscribe_url }}">Unsubscribe</a> ·
<a href="{{ preferences_url }}">Email preferences</a></mj-text>
</mj-column></mj-section></mj-body></mjml>"""
    email = services.save_email(access, {"name": "Reports launch", "subject": "{{ prospect.first_name }}, new reports",
                                         "sender": "assigned", "from_name": "Northwind", "from_email":
                                         "news@northwind.test", "body_format": "mjml", "body": body})
    return bu, user, pat, email


@pytest.mark.django_db(transaction=True)
def test_preview_as_prospect_send_test_open_in_demo_inbox_and_click_tracked_link(live_server, settings, browser, screenshot, free_port):
    from aiosmtpd.controller import Controller
    from playwright.sync_api import expect

    from loopline.emails.demo import InboxHandler
    from loopline.prospects.models import Activity, ActivityType

    port = free_port
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                                    "OPTIONS": {"host": "127.0.0.1", "port": port, "timeout": 10}}}
    settings.PUBLIC_BASE_URL = live_server.url
    inbox = Controller(InboxHandler(), hostname="127.0.0.1", port=port)
    inbox.start()
    try:
        bu, user, pat, _email = _seed()
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"{live_server.url}/accounts/login/", wait_until="domcontentloaded")
        page.get_by_label("Email").fill(user.email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()

        page.goto(f"{live_server.url}/emails/")
        expect(page.get_by_role("link", name="Reports launch")).to_be_visible()
        page.get_by_role("link", name="Preview and test").click()
        # Preview as the sample prospect, then as Pat.
        expect(page.locator("#preview-subject")).to_have_text("Jane, new reports")
        page.get_by_label("Preview as").select_option(label="pat@initech.test (Pat Lee)")
        expect(page.locator("#preview-subject")).to_have_text("Pat, new reports")
        preview = page.frame_locator("iframe[title='HTML version']")
        expect(preview.get_by_text("Hello Pat,")).to_be_visible()
        expect(preview.get_by_text("Teams at Initech")).to_be_visible()
        expect(preview.get_by_text("Mia Berg")).to_be_visible()  # the assigned user
        screenshot(page, "email-preview.png")

        page.get_by_label("Send to").fill("mia@northwind.test")
        page.get_by_role("button", name="Send test").click()
        expect(page.get_by_text("Test sent to mia@northwind.test.")).to_be_visible()

        page.goto(f"{live_server.url}/emails/inbox/")
        page.get_by_role("link", name="Pat, new reports").click()
        expect(page.get_by_text("To mia@northwind.test")).to_be_visible()
        message = page.frame_locator("#message-html")
        expect(message.get_by_text("Hello Pat,")).to_be_visible()
        screenshot(page, "email-demo-inbox.png")
        link = message.get_by_role("link", name="See the new reports")
        href = link.get_attribute("href")
        assert href and href.startswith(f"{live_server.url}/e/c/"), href  # a signed tracking URL, not the target
        with page.context.expect_page() as popup_info:
            link.click()
        popup = popup_info.value
        popup.wait_for_load_state("commit")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            click = Activity.objects.filter(prospect=pat, type=ActivityType.EMAIL_CLICK).first()
            if click:
                break
            time.sleep(0.2)
        assert click is not None, "the click was not recorded"
        assert click.url == "https://www.example.com/reports"
        # The email's report shows the click.
        page.goto(f"{live_server.url}/emails/")
        from loopline.emails.models import EmailSend

        test_send = EmailSend.objects.get(bu=bu, kind="test")
        page.goto(f"{live_server.url}/emails/sends/{test_send.pk}/")
        expect(page.locator("#click-map")).to_contain_text("https://www.example.com/reports")
        screenshot(page, "email-report.png")
    finally:
        inbox.stop()
