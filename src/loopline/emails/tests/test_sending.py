"""Sending through a real SMTP server: headers, both parts, merge fields, mailability, the ledger ([M23]-[M30])."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

pytestmark = pytest.mark.django_db


def _send(bu, email, prospects, key="k1", kind="program"):
    from loopline.emails import services

    n = services.send_to_prospects(bu, email.pk, [p.pk for p in prospects], kind=kind, source="test", source_id=None,
                                   dedupe_key=key)
    from loopline.emails.models import EmailSend

    send = EmailSend.objects.get(bu=bu, dedupe_key=key)
    services.process_send(send.pk)
    return n, send


def test_program_send_has_rfc8058_headers_both_parts_and_merged_fields(bu, smtp_sink, make_email, make_prospects):
    from loopline.emails.models import Delivery

    email = make_email()
    prospects = make_prospects(3, company="Initech")
    n, send = _send(bu, email, prospects)
    assert n == 3
    assert len(smtp_sink.messages) == 3
    m = smtp_sink.to("p1@example.org")[0]
    msg = m["msg"]
    assert msg["Subject"] == "Hi P1"
    assert msg["From"] == "Acme <news@acme.test>"
    # [M27] RFC 8058 one-click headers: an https URL and a mailto.
    lu = msg["List-Unsubscribe"]
    assert lu.startswith("<https://mail.loopline.test/u/") and "mailto:unsubscribe@" in lu
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Message-ID"] and msg["Date"] and msg["MIME-Version"] == "1.0"
    assert m["from"].startswith("b-")  # VERP envelope sender for bounce correlation
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Hello P1 from Initech." in text and "Hello P1 from Initech." in html
    assert "https://mail.loopline.test/e/c/" in html and "https://mail.loopline.test/e/c/" in text
    assert "example.com/offer" not in html  # links are tracked
    assert "https://mail.loopline.test/e/o/" in html  # open pixel
    assert "1 Main St, Springfield" in html and "1 Main St, Springfield" in text  # BU postal address
    assert set(Delivery.objects.filter(send=send).values_list("status", flat=True)) == {"sent"}
    # The raw message is 7-bit clean with CRLF line endings: ready for DKIM signing by the relay.
    assert all(b < 128 for b in m["raw"])


def test_merge_fields_are_html_escaped_but_plain_in_text(bu, smtp_sink, make_email, make_prospects):
    email = make_email()
    p = make_prospects(1)[0]
    p.first_name = '<script>alert("x")</script>'
    p.save()
    _send(bu, email, [p])
    msg = smtp_sink.messages[0]["msg"]
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert '<script>alert("x")</script>' in text


def test_mailability_skips_opted_out_undeliverable_and_duplicate_addresses(bu, smtp_sink, make_email, make_prospects):
    from loopline.emails.models import Delivery
    from loopline.prospects.models import Prospect

    bu.allow_duplicate_emails = True
    bu.save()
    email = make_email()
    ok, opted, bounced, no_email = make_prospects(4)
    Prospect.objects.filter(pk=opted.pk).update(opted_out=True)
    Prospect.objects.filter(pk=bounced.pk).update(email_undeliverable=True)
    Prospect.objects.filter(pk=no_email.pk).update(email="", email_key=None)
    twin = Prospect.objects.create(bu=bu, email=ok.email, first_name="Twin")
    n, send = _send(bu, email, [ok, opted, bounced, no_email, twin])
    assert n == 1
    assert [m["to"] for m in smtp_sink.messages] == [[ok.email]]
    reasons = dict(Delivery.objects.filter(send=send).values_list("prospect_id", "reason"))
    assert reasons[opted.pk] == "opted out"
    assert reasons[bounced.pk] == "undeliverable (bounced)"
    assert reasons[no_email.pk] == "no email address"
    assert reasons[twin.pk] == "duplicate address"


def test_operational_email_reaches_opted_out_but_never_undeliverable(bu, smtp_sink, make_email, make_prospects):
    from loopline.prospects.models import Prospect

    email = make_email(purpose="operational", body="<p>Your invoice, {{ prospect.first_name }}</p>",
                       body_format="html")
    opted, bounced = make_prospects(2)
    Prospect.objects.filter(pk=opted.pk).update(opted_out=True)
    Prospect.objects.filter(pk=bounced.pk).update(email_undeliverable=True)
    n, _ = _send(bu, email, [opted, bounced], kind="operational")
    assert n == 1
    assert smtp_sink.messages[0]["to"] == [opted.email]
    assert "List-Unsubscribe" not in smtp_sink.messages[0]["msg"]


def test_same_dedupe_key_sends_once_per_prospect(bu, smtp_sink, make_email, make_prospects):
    email = make_email()
    prospects = make_prospects(2)
    _send(bu, email, prospects, key="program:1:step:1")
    n, _ = _send(bu, email, prospects, key="program:1:step:1")
    assert n == 0
    assert len(smtp_sink.messages) == 2


def test_permanent_rcpt_failure_is_a_hard_bounce(bu, smtp_sink, make_email, make_prospects):
    from loopline.emails.models import Delivery
    from loopline.prospects.models import Activity, ActivityType

    email = make_email()
    good, bad = make_prospects(2)
    smtp_sink.reject[bad.email] = "550 5.1.1 No such user"
    _, send = _send(bu, email, [good, bad])
    assert [m["to"] for m in smtp_sink.messages] == [[good.email]]
    row = Delivery.objects.get(send=send, prospect=bad)
    assert row.status == "failed" and "550" in row.reason
    bad.refresh_from_db()
    assert bad.email_undeliverable  # [M26]
    assert Activity.objects.filter(prospect=bad, type=ActivityType.EMAIL_HARD_BOUNCE).exists()


def test_temporary_rcpt_failure_is_retried_later_not_lost(bu, smtp_sink, make_email, make_prospects):
    from loopline.emails import services
    from loopline.emails.models import Delivery

    email = make_email()
    (p,) = make_prospects(1)
    smtp_sink.reject[p.email] = "451 4.3.0 Try again later"
    _, send = _send(bu, email, [p])
    row = Delivery.objects.get(send=send)
    assert row.status == "queued" and "451" in row.last_error and row.next_run_at is not None
    del smtp_sink.reject[p.email]
    Delivery.objects.filter(pk=row.pk).update(next_run_at=row.next_run_at.replace(year=2000))
    services.process_send(send.pk)
    assert len(smtp_sink.messages) == 1
    assert Delivery.objects.get(pk=row.pk).status == "sent"


def test_refuses_unrenderable_or_non_compliant_templates(bu, make_email):
    with pytest.raises(ValidationError, match=r"unknown field prospect\.favourite_color"):
        make_email(body="<p>{{ prospect.favourite_color }} {{ unsubscribe_url }} {{ preferences_url }}</p>",
                   body_format="html")
    with pytest.raises(ValidationError, match="line"):
        make_email(body="<p>{% if prospect.first_name %}oops {{ unsubscribe_url }}</p>", body_format="html")
    with pytest.raises(ValidationError, match="unsubscribe link"):
        make_email(body="<p>Hello</p>", body_format="html")
    with pytest.raises(ValidationError, match="not a valid email address"):
        make_email(from_email="not an address")
    with pytest.raises(ValidationError, match="unknown merge field"):
        make_email(subject="{{ settings.SECRET_KEY }}")


def test_sandbox_blocks_attribute_escapes(bu, make_email):
    with pytest.raises(ValidationError):
        make_email(subject="{{ prospect.__class__.__mro__ }}")


def test_scheduled_list_send_can_be_cancelled_until_it_starts(bu, marketing_access, make_email):
    import datetime as dt

    from django.utils import timezone

    from loopline.automation.models import ProspectList
    from loopline.emails import services

    email = make_email()
    lst = ProspectList.objects.create(bu=bu, name="Newsletter")
    send = services.create_list_send(marketing_access, email, [lst.pk],
                                     scheduled_at=timezone.now() + dt.timedelta(hours=1))
    services.cancel_send(marketing_access, send)
    send.refresh_from_db()
    assert send.status == "cancelled"
    assert services.start_send(send.pk) == 0
    with pytest.raises(ValidationError):
        services.cancel_send(marketing_access, send)


def test_list_send_minus_suppression_list_deduplicated_by_address(bu, smtp_sink, marketing_access, make_email,
                                                                  make_prospects):
    """[M25] lists minus suppression lists, once per address, through start_send and the ledger."""
    from loopline.automation import services as automation_services
    from loopline.automation.models import ProspectList
    from loopline.emails import services
    from loopline.emails.models import Delivery

    email = make_email()
    a, b, c, d = make_prospects(4)
    news = ProspectList.objects.create(bu=bu, name="News")
    events = ProspectList.objects.create(bu=bu, name="Events")
    suppress = ProspectList.objects.create(bu=bu, name="Competitors")
    automation_services.add_to_list(bu, news, [a.pk, b.pk, c.pk])
    automation_services.add_to_list(bu, events, [a.pk, d.pk])  # a is on both lists: one message
    automation_services.add_to_list(bu, suppress, [c.pk])
    send = services.create_list_send(marketing_access, email, [news.pk, events.pk], [suppress.pk])
    assert services.start_send(send.pk) == 3
    services.process_send(send.pk)
    received = sorted(m["to"][0] for m in smtp_sink.messages)
    assert received == sorted([a.email, b.email, d.email])
    send.refresh_from_db()
    assert send.status == "sent" and send.total == 3
    assert services.send_counts(send.pk)["sent"] == 3
    # Starting again (a retried task) queues nothing and sends nothing more.
    assert services.start_send(send.pk) == 0
    services.process_send(send.pk)
    assert len(smtp_sink.messages) == 3
    assert Delivery.objects.filter(send=send).count() == 3


def test_list_send_refuses_operational_email_and_unknown_lists(bu, other_bu, marketing_access, make_email):
    from loopline.automation.models import ProspectList
    from loopline.emails import services

    email = make_email()
    foreign = ProspectList.objects.create(bu=other_bu, name="Theirs")
    with pytest.raises(ValidationError, match="does not exist"):
        services.create_list_send(marketing_access, email, [foreign.pk])
    with pytest.raises(ValidationError, match="at least one list"):
        services.create_list_send(marketing_access, email, [])


def test_autoresponder_action_sends_once(bu, smtp_sink, make_email, make_prospects):
    from loopline.emails.models import EmailSend
    from loopline.platform import actions

    email = make_email()
    (p,) = make_prospects(1)
    cleaned = actions.validate_actions(bu, [{"type": "send_autoresponder", "email_id": email.pk}])
    ctx = actions.ActionContext(bu=bu, prospect=p, source="form", source_id=5)
    actions.run_actions(cleaned, ctx)
    actions.run_actions(cleaned, ctx)  # a resubmission or a retried task: no second message
    from loopline.emails import services

    services.process_send(EmailSend.objects.get(bu=bu, kind="autoresponder").pk)
    assert [m["to"] for m in smtp_sink.messages] == [[p.email]]


def test_report_counts_sent_opens_clicks_and_unsubscribes(bu, smtp_sink, make_email, make_prospects):
    from django.test import Client

    from loopline.emails import selectors

    email = make_email()
    a, b = make_prospects(2)
    _, send = _send(bu, email, [a, b])
    html = smtp_sink.to(a.email)[0]["msg"].get_body(("html",)).get_content()
    import re

    click = re.search(r'href="https://mail\.loopline\.test(/e/c/[^"]+)"', html).group(1)
    browser = Client(HTTP_USER_AGENT="Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36")
    assert browser.get(click).status_code == 302
    unsub = re.search(r'href="https://mail\.loopline\.test(/u/[^"]+)"', html).group(1)
    assert Client().post(unsub).status_code == 200
    report = selectors.report([send.pk], bu.pk)
    assert report["sent"] == 2 and report["delivered"] == 2
    assert report["clicks_total_raw"] == 1 and report["opens_unique_raw"] == 1  # a click implies an open
    assert report["unsubscribes"] == 1
    assert report["click_map"][0]["url"] == "https://example.com/offer?a=1&b=2"


def test_test_send_to_a_refusing_server_fails_clearly_and_is_not_sent_later(bu, settings, marketing_access,
                                                                            make_email):
    from loopline.emails import services
    from loopline.emails.models import Delivery

    from .conftest import free_port

    email = make_email()
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                                    "OPTIONS": {"host": "127.0.0.1", "port": free_port(), "timeout": 2}}}
    with pytest.raises(ValidationError, match="The test was not sent"):
        services.send_test(marketing_access, email, "me@acme.test")
    row = Delivery.objects.get(send__kind="test")
    assert row.status == "failed" and row.next_run_at is None
