"""1:1 email from the prospect page: compose or start from an email, preview as the prospect, send now from the user
through the ledger, timeline entry, mailability and role scoping ([M25], [M26], [M1])."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from loopline.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    assert client.login(email=user.email, password=PASSWORD)
    return client


@pytest.fixture
def pat(bu, sales_user):
    from loopline.prospects.models import Prospect

    return Prospect.objects.create(
        bu=bu,
        email="pat@initech.test",
        email_key="pat@initech.test",
        first_name="Pat",
        company="Initech",
        assigned_user=sales_user,
    )


def test_sales_user_sends_composed_email_from_themselves(bu, smtp_sink, sales_user, sales_access, pat):
    from loopline.emails import services
    from loopline.emails.models import EmailSend
    from loopline.prospects.models import Activity, ActivityType

    send, delivery = services.send_one_to_one(
        sales_access,
        pat,
        subject="Quick question, {{ prospect.first_name }}",
        message='Hi {{ prospect.first_name|default("there", true) }},\n\nDoes <Initech> & co need reports?\nThanks',
        idempotency_key="abc",
    )
    assert delivery.status == "sent"
    assert send.kind == "one_to_one" and send.created_by_id == sales_user.pk
    (message,) = smtp_sink.to("pat@initech.test")
    msg = message["msg"]
    assert msg["Subject"] == "Quick question, Pat"
    assert sales_user.email in msg["From"] and msg["Reply-To"] == sales_user.email  # sender = the user
    html = msg.get_body(("html",)).get_content()
    assert "<p>Hi Pat,</p>" in html
    assert "&lt;Initech&gt; &amp; co" in html  # the user's text is escaped, merge fields are not
    assert "List-Unsubscribe" in msg  # 1:1 is marketing email ([M27])
    text = msg.get_body(("plain",)).get_content()
    assert "Does <Initech> & co need reports?" in text
    # On the prospect's timeline, as sent.
    sent = Activity.objects.get(prospect=pat, type=ActivityType.EMAIL_SENT)
    assert sent.asset_id == send.pk and "Quick question" in sent.title
    # The composed email does not clutter the email list.
    from loopline.emails import selectors

    assert not selectors.emails(bu).exists()
    # The same idempotency key (a double-clicked Send) never sends twice.
    again, _ = services.send_one_to_one(
        sales_access, pat, subject="Quick question", message="x", idempotency_key="abc"
    )
    assert again.pk == send.pk and len(smtp_sink.to("pat@initech.test")) == 1
    assert EmailSend.objects.filter(bu=bu, kind="one_to_one").count() == 1


def test_start_from_template_with_subject_override(bu, smtp_sink, sales_access, make_email, pat):
    from loopline.emails import services

    template = make_email()
    _send, delivery = services.send_one_to_one(
        sales_access,
        pat,
        subject="For you, {{ prospect.first_name }}",
        template=template,
        idempotency_key="t1",
    )
    assert delivery.status == "sent"
    msg = smtp_sink.to("pat@initech.test")[0]["msg"]
    assert msg["Subject"] == "For you, Pat"
    assert "Hello Pat from Initech." in msg.get_body(("plain",)).get_content()


def test_opted_out_and_undeliverable_prospects_get_no_one_to_one(bu, smtp_sink, sales_access, pat):
    # [M26]: opted-out prospects get only operational mail, and 1:1 is not operational.
    from loopline.emails import services
    from loopline.emails.models import Email
    from loopline.prospects.models import Prospect

    for change, reason in [
        ({"opted_out": True}, "opted out"),
        ({"opted_out": False, "do_not_email": True}, "opted out"),
        ({"do_not_email": False, "email_undeliverable": True}, "undeliverable"),
    ]:
        Prospect.objects.filter(pk=pat.pk).update(**change)
        pat.refresh_from_db()
        with pytest.raises(ValidationError, match=reason):
            services.send_one_to_one(sales_access, pat, subject="Hi", message="Hello")
    assert smtp_sink.messages == []
    assert not Email.objects.exists()


def test_unrenderable_message_is_refused_before_sending(bu, smtp_sink, sales_access, pat):
    from loopline.emails import services
    from loopline.emails.models import EmailSend

    with pytest.raises(ValidationError, match="shoe_size"):
        services.send_one_to_one(sales_access, pat, subject="Hi", message="{{ prospect.shoe_size }}")
    with pytest.raises(ValidationError, match="subject"):
        services.send_one_to_one(sales_access, pat, subject=" ", message="Hello")
    assert not EmailSend.objects.exists() and smtp_sink.messages == []


def test_sales_user_cannot_email_unassigned_prospect(bu, smtp_sink, sales_user, sales_access):
    from loopline.emails import services
    from loopline.prospects.models import Prospect

    other = Prospect.objects.create(
        bu=bu, email="jo@contoso.test", email_key="jo@contoso.test", first_name="Jo"
    )
    with pytest.raises(ValidationError, match="cannot email"):
        services.send_one_to_one(sales_access, other, subject="Hi", message="Hello")
    client = _client(sales_user)
    assert client.get(f"/emails/one-to-one/{other.pk}/").status_code == 404
    assert (
        client.post(
            f"/emails/one-to-one/{other.pk}/", {"subject": "Hi", "message": "x", "action": "send"}
        ).status_code
        == 404
    )
    assert smtp_sink.messages == []


def test_compose_page_previews_then_sends_and_prospect_page_links_it(bu, smtp_sink, sales_user, pat):
    client = _client(sales_user)
    detail = client.get(f"/prospects/{pat.pk}/")
    assert f'href="/emails/one-to-one/{pat.pk}/"'.encode() in detail.content
    page = client.get(f"/emails/one-to-one/{pat.pk}/")
    assert page.status_code == 200 and b"Send now" in page.content
    key = page.context["form"]["key"].value()
    assert key
    data = {"subject": "Hello {{ prospect.first_name }}", "message": "Hi {{ account.name }} team", "key": key}
    preview = client.post(f"/emails/one-to-one/{pat.pk}/", {**data, "action": "preview"})
    assert preview.status_code == 200
    assert b'id="preview-subject">Hello Pat<' in preview.content and b"Hi Initech team" in preview.content
    assert smtp_sink.messages == []  # a preview sends nothing
    sent = client.post(f"/emails/one-to-one/{pat.pk}/", {**data, "action": "send"})
    assert sent.status_code == 302 and sent["Location"] == f"/prospects/{pat.pk}/"
    assert len(smtp_sink.to("pat@initech.test")) == 1
    timeline = client.get(f"/prospects/{pat.pk}/").content.decode()
    assert "Email sent to pat@initech.test." in timeline and "1:1 · Hello" in timeline
    # Posting the same form again (back button, double click) does not send twice.
    client.post(f"/emails/one-to-one/{pat.pk}/", {**data, "action": "send"})
    assert len(smtp_sink.to("pat@initech.test")) == 1


def test_compose_page_shows_errors_and_blocks_opted_out(bu, smtp_sink, sales_user, pat):
    from loopline.prospects.models import Prospect

    client = _client(sales_user)
    bad = client.post(
        f"/emails/one-to-one/{pat.pk}/",
        {"subject": "Hi", "message": "{% if %}", "action": "send", "key": "k"},
    )
    assert bad.status_code == 400 and b"flash-error" in bad.content
    Prospect.objects.filter(pk=pat.pk).update(opted_out=True)
    page = client.get(f"/emails/one-to-one/{pat.pk}/")
    assert b"cannot get a 1:1 email: opted out" in page.content and b"Send now" not in page.content
    refused = client.post(
        f"/emails/one-to-one/{pat.pk}/", {"subject": "Hi", "message": "Hello", "action": "send", "key": "k2"}
    )
    assert refused.status_code == 400 and b"opted out" in refused.content
    assert smtp_sink.messages == []


def test_user_without_one_to_one_ability_is_refused(bu, pat):
    from loopline.accounts import services as account_services
    from loopline.accounts.models import Role

    role = Role.objects.create(bu=bu, name="Viewer", prospect_scope="all", abilities=["prospects.view"])
    user = account_services.create_user("view@acme.test", password=PASSWORD)
    account_services.set_membership(bu, user, role)
    client = _client(user)
    assert client.get(f"/emails/one-to-one/{pat.pk}/").status_code == 403
    assert b"/emails/one-to-one/" not in client.get(f"/prospects/{pat.pk}/").content


def test_refusing_mail_server_leaves_the_email_queued_and_it_is_delivered_once_later(
    bu, settings, smtp_sink, sales_user, pat
):
    # Never a silent drop: the ledger row stays queued and the scheduler's worker delivers it later ([M30]).
    from django.utils import timezone

    from loopline.emails import services
    from loopline.emails.models import Delivery
    from loopline.emails.tests.conftest import free_port

    working = settings.MAILERS
    settings.MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": free_port(), "timeout": 5},
        }
    }
    client = Client()
    assert client.login(email=sales_user.email, password=PASSWORD)
    data = {"subject": "Hello", "message": "Hi there", "key": "retry-1", "action": "send"}
    response = client.post(f"/emails/one-to-one/{pat.pk}/", data, follow=True)
    assert "will be retried" in response.content.decode()
    delivery = Delivery.objects.get(prospect=pat)
    assert delivery.status == "queued" and "refused" in delivery.last_error.lower()
    settings.MAILERS = working
    Delivery.objects.filter(pk=delivery.pk).update(next_run_at=timezone.now())  # due now
    services.process_send(delivery.send_id)
    services.process_send(delivery.send_id)
    assert len(smtp_sink.to("pat@initech.test")) == 1
    assert Delivery.objects.get(pk=delivery.pk).status == "sent"
