"""Email UI in a real browser: the visual builder (GrapesJS + grapesjs-mjml) edits a text block and saves MJML that
still renders with its merge fields; a Sales user composes a 1:1 email from the prospect page, previews it and sends
it into the demo inbox ([M23], [M24], [M25]).

Set ``LOOPLINE_SCREENSHOTS=1`` to also write the docs/email.md screenshots into docs/images/.
"""

from __future__ import annotations

import pytest

from loopline.conftest import PASSWORD


def _seed(role: str):
    from loopline.accounts import services as account_services
    from loopline.accounts.models import Role

    # A transactional test flushes the tables, including the roles the migration created.
    for key, name, scope in [
        ("administrator", "Administrator", "all"),
        ("marketing", "Marketing", "all"),
        ("sales_manager", "Sales Manager", "all"),
        ("sales", "Sales", "assigned"),
    ]:
        Role.objects.get_or_create(bu=None, key=key, defaults={"name": name, "prospect_scope": scope})
    bu = account_services.create_business_unit(
        "Northwind Marketing", postal_address="12 Harbour Road, Portsmouth"
    )
    user = account_services.create_user(
        "mia@northwind.test", password=PASSWORD, first_name="Mia", last_name="Berg"
    )
    account_services.set_membership(bu, user, role)
    return bu, user


def _login(page, base: str, user) -> None:
    page.goto(f"{base}/accounts/login/", wait_until="domcontentloaded")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/accounts/login" not in url)


@pytest.mark.django_db(transaction=True)
def test_visual_builder_edits_text_block_and_saves_mjml_that_renders(live_server, browser, screenshot):
    from playwright.sync_api import expect

    from loopline.accounts.access import Access
    from loopline.emails import services
    from loopline.emails.views import DEFAULT_BODY
    from loopline.prospects.models import Prospect

    # The default template plus a head with self-closing defaults and a self-closing image: MJML that an HTML parser
    # would mis-nest unless the builder expands it.
    start_body = DEFAULT_BODY.replace(
        "<mjml>\n",
        '<mjml>\n  <mj-head><mj-attributes><mj-text color="#1f2937" /></mj-attributes></mj-head>\n',
    ).replace(
        '<mj-button href="https://www.example.com/reports">',
        '<mj-image src="https://www.example.com/chart.png" alt="Chart" width="200px" />\n'
        '        <mj-button href="https://www.example.com/reports">',
    )
    bu, user = _seed("marketing")
    access = Access.for_user(user, bu)
    services.save_dynamic_content(
        access,
        {
            "name": "Industry hero",
            "key": "industry-hero",
            "field": "industry",
            "default_html": "<p>Reports for every team</p>",
        },
        [{"value": "retail", "html": "<p>Shelf analytics for shops</p>"}],
    )
    email = services.save_email(
        access,
        {
            "name": "Reports launch",
            "subject": "{{ prospect.first_name }}, news",
            "from_email": "news@northwind.test",
            "body_format": "mjml",
            "body": start_body,
        },
    )
    pat = Prospect.objects.create(
        bu=bu,
        email="pat@initech.test",
        email_key="pat@initech.test",
        first_name="Pat",
        company="Initech",
        industry="Retail",
    )
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    _login(page, live_server.url, user)
    page.goto(f"{live_server.url}/emails/{email.pk}/")
    page.get_by_role("button", name="Visual builder").click()
    expect(page.locator("#builder")).to_have_attribute("data-ready", "true")
    # Opening the builder and going back without a change leaves the MJML exactly as written.
    page.get_by_role("button", name="Code").click()
    assert page.locator("textarea[name=body]").input_value() == start_body
    page.get_by_role("button", name="Visual builder").click()
    expect(page.locator("#builder")).to_have_attribute("data-ready", "true")
    canvas = page.frame_locator("#gjs iframe.gjs-frame")
    text_block = canvas.get_by_text("use our new reports", exact=False)
    expect(text_block).to_be_visible()
    # Edit a text block in place (GrapesJS's rich-text editor), as a person would.
    text_block.dblclick()
    page.keyboard.press("Control+End")
    page.keyboard.type(" Now with dashboards.")
    # Saved straight away, while the text is still being edited.
    page.get_by_role("button", name="Save and keep editing").click()
    expect(page.get_by_text("Email saved.")).to_be_visible()
    expect(page.locator("#builder")).to_have_attribute("data-ready", "true")  # reopened in the builder
    email.refresh_from_db()
    assert "Now with dashboards." in email.body
    # Insert the dynamic content block after a selected text block, then save again.
    canvas.get_by_text("Now with dashboards.", exact=False).click()
    page.get_by_role("button", name="Insert").click()
    expect(canvas.get_by_text('{{ dynamic("industry-hero") }}')).to_be_visible()
    screenshot(page, "email-builder.png")
    page.get_by_role("button", name="Save and keep editing").click()
    expect(page.get_by_text("Email saved.")).to_be_visible()

    email.refresh_from_db()
    assert email.body != start_body and email.body.startswith("<mjml>")
    # Merge fields, conditionals and the required links survived the round trip.
    for kept in (
        '{{ prospect.first_name|default("there", true) }}',
        "{% if prospect.company %}",
        "{{ account.name }}",
        "{{ unsubscribe_url }}",
        "{{ preferences_url }}",
        "{{ bu.postal_address }}",
        '{{ dynamic("industry-hero") }}',
    ):
        assert kept in email.body, kept
    subject, html, text = services.preview(access, email, pat)
    assert subject == "Pat, news"
    assert "Hello Pat," in html and "Teams at Initech" in html and "Now with dashboards." in html
    assert "Shelf analytics for shops" in html  # the dynamic block picked by industry
    assert "Now with dashboards." in text
    # The head and the self-closing image kept their place: the default text colour and the image both render.
    assert "color:#1f2937" in html and "https://www.example.com/chart.png" in html
    assert html.index("chart.png") < html.index("See the new reports")
    # In the code editor, Insert puts the block's merge call at the cursor.
    page.goto(f"{live_server.url}/emails/{email.pk}/")
    body = page.locator("textarea[name=body]")
    body.focus()
    page.keyboard.press("Control+Home")
    page.get_by_role("button", name="Insert").click()
    assert body.input_value().startswith('{{ dynamic("industry-hero") }}<mjml>')
    # The dynamic content block, previewed as Pat.
    page.goto(f"{live_server.url}/emails/dynamic/")
    page.get_by_role("link", name="Industry hero").click()
    page.get_by_label("Preview as").select_option(label="pat@initech.test")
    page.get_by_role("button", name="Preview", exact=True).click()
    expect(page.locator("#dynamic-choice")).to_contain_text("the variation for “retail”")
    expect(
        page.frame_locator("iframe[title='Block preview']").get_by_text("Shelf analytics for shops")
    ).to_be_visible()
    screenshot(page, "email-dynamic-content.png")


@pytest.mark.django_db(transaction=True)
def test_sales_user_composes_previews_and_sends_one_to_one_into_demo_inbox(live_server, settings, browser, screenshot, free_port):
    from aiosmtpd.controller import Controller
    from playwright.sync_api import expect

    from loopline.emails.demo import InboxHandler
    from loopline.emails.models import CapturedMessage
    from loopline.prospects.models import Activity, ActivityType, Prospect

    port = free_port
    settings.MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": port, "timeout": 10},
        }
    }
    settings.PUBLIC_BASE_URL = live_server.url
    inbox = Controller(InboxHandler(), hostname="127.0.0.1", port=port)
    inbox.start()
    try:
        bu, user = _seed("sales")
        pat = Prospect.objects.create(
            bu=bu,
            email="pat@initech.test",
            email_key="pat@initech.test",
            first_name="Pat",
            last_name="Lee",
            company="Initech",
            assigned_user=user,
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        _login(page, live_server.url, user)
        page.goto(f"{live_server.url}/prospects/{pat.pk}/")
        page.get_by_role("link", name="Send email").click()
        page.get_by_label("Subject").fill("Quick question, {{ prospect.first_name }}")
        page.get_by_label("Message").fill(
            "Hi {{ prospect.first_name }},\n\nCould the {{ account.name }} team use our new reports?\n\nMia"
        )
        page.get_by_role("button", name="Preview").click()
        expect(page.locator("#preview-subject")).to_have_text("Quick question, Pat")
        expect(
            page.frame_locator("iframe[title='HTML version']").get_by_text("Could the Initech team use")
        ).to_be_visible()
        screenshot(page, "email-one-to-one.png")
        page.get_by_role("button", name="Send now").click()
        expect(page.get_by_text("Email sent to pat@initech.test.")).to_be_visible()
        # On the prospect's timeline as sent.
        expect(page.locator("#main")).to_contain_text("1:1 · Quick question")
        sent = Activity.objects.get(prospect=pat, type=ActivityType.EMAIL_SENT)
        assert sent.title.startswith("1:1")
        captured = CapturedMessage.objects.get()
        assert captured.rcpt_to == "pat@initech.test" and captured.subject == "Quick question, Pat"
        assert "From: Mia Berg <mia@northwind.test>" in captured.raw  # sent from the user
        # A marketer opens it in the demo inbox.
        from loopline.accounts import services as account_services

        marketer = account_services.create_user("ola@northwind.test", password=PASSWORD)
        account_services.set_membership(bu, marketer, "marketing")
        other = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        other.set_default_timeout(60_000)
        _login(other, live_server.url, marketer)
        other.goto(f"{live_server.url}/emails/inbox/")
        other.get_by_role("link", name="Quick question, Pat").click()
        expect(other.get_by_text("To pat@initech.test")).to_be_visible()
        expect(other.frame_locator("#message-html").get_by_text("Could the Initech team use")).to_be_visible()
    finally:
        inbox.stop()
