"""Unsubscribe (RFC 8058 one-click), preference center, consent records, double opt-in, bounces ([M26]-[M28])."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def _token(prospect, send_id=0):
    from loopline.emails import tokens

    return tokens.make("unsubscribe", bu_id=prospect.bu_id, prospect_id=prospect.pk, send_id=send_id)


def test_one_click_post_unsubscribes_without_cookies_or_csrf_and_never_redirects(bu, make_prospects):
    from loopline.emails.models import ConsentRecord
    from loopline.platform import events
    from loopline.prospects.models import Activity, ActivityType

    (p,) = make_prospects(1)
    seen = []
    handler = seen.append
    events.subscribe(events.ProspectChanged, handler)
    try:
        client = Client(enforce_csrf_checks=True)
        response = client.post(f"/u/{_token(p)}", {"List-Unsubscribe": "One-Click"})
    finally:
        events.unsubscribe(events.ProspectChanged, handler)
    assert response.status_code == 200  # [M27] 200, no redirect
    assert not response.cookies
    p.refresh_from_db()
    assert p.opted_out
    # The change goes through prospects.services, so the connector's outbox sees it ([R16] opt-out field).
    assert any(e.prospect_id == p.pk and "opted_out" in e.changed_fields for e in seen)
    assert ConsentRecord.objects.filter(prospect=p, kind="opt_out", method="one_click").exists()
    assert Activity.objects.filter(prospect=p, type=ActivityType.UNSUBSCRIBE).count() == 1
    # Idempotent: a second POST is fine and records no second unsubscribe activity.
    assert Client().post(f"/u/{_token(p)}", {"List-Unsubscribe": "One-Click"}).status_code == 200
    assert Activity.objects.filter(prospect=p, type=ActivityType.UNSUBSCRIBE).count() == 1


def test_get_shows_confirmation_and_does_not_unsubscribe(bu, make_prospects):
    (p,) = make_prospects(1)
    response = Client().get(f"/u/{_token(p)}")
    assert response.status_code == 200
    assert b"Unsubscribe" in response.content and b"<form method=\"post\"" in response.content
    p.refresh_from_db()
    assert not p.opted_out


@pytest.mark.parametrize("token", ["garbage", "a" * 500, "mfaaaaabaaaaaaaaaaaacaaaaaaaaaaaagrzm64by33oo4ws3m", "%00"])
def test_bad_tokens_get_a_clear_404(bu, token):
    assert Client().post(f"/u/{token}").status_code == 404
    assert Client().get(f"/email/preferences/{token}").status_code == 404


def test_tampered_token_is_refused(bu, make_prospects):
    from loopline.emails import tokens

    a, b = make_prospects(2)
    token = _token(a)
    forged = tokens.make("unsubscribe", bu_id=bu.pk, prospect_id=b.pk)[:-4] + token[-4:]
    assert Client().post(f"/u/{forged}").status_code == 404
    b.refresh_from_db()
    assert not b.opted_out


def test_preference_center_opt_out_then_resubscribe_needs_consent(bu, make_prospects):
    from loopline.emails.models import ConsentRecord

    (p,) = make_prospects(1)
    url = f"/email/preferences/{_token(p)}"
    client = Client(enforce_csrf_checks=True)
    assert client.get(url).status_code == 200
    assert client.post(url, {"global": "out"}).status_code == 200
    p.refresh_from_db()
    assert p.opted_out
    response = client.post(url, {})
    assert response.status_code == 400 and b"consent" in response.content
    p.refresh_from_db()
    assert p.opted_out
    assert client.post(url, {"consent": "yes"}).status_code == 200
    p.refresh_from_db()
    assert not p.opted_out
    record = ConsentRecord.objects.get(prospect=p, kind="resubscribe")
    assert "I want to receive marketing email" in record.consent_text and record.ip == "127.0.0.1"


def test_preference_center_lists_public_lists(bu, make_prospects):
    from loopline.automation import services as automation_services
    from loopline.automation.models import ListMembership, ProspectList

    (p,) = make_prospects(1)
    news = ProspectList.objects.create(bu=bu, name="news", is_public=True, public_name="Newsletter")
    tips = ProspectList.objects.create(bu=bu, name="tips", is_public=True, public_name="Product tips")
    ProspectList.objects.create(bu=bu, name="secret")
    automation_services.add_to_list(bu, news, [p.pk], source="manual")
    url = f"/email/preferences/{_token(p)}"
    response = Client().get(url)
    assert b"Newsletter" in response.content and b"Product tips" in response.content
    assert b"secret" not in response.content
    # Leave the newsletter, join the tips: per-list choices, not a global opt-out.
    assert Client().post(url, {"global": "in", "list": [str(tips.pk)]}).status_code == 200
    states = dict(ListMembership.objects.filter(prospect=p).values_list("prospect_list_id", "opted_out"))
    assert states == {news.pk: True, tips.pk: False}
    p.refresh_from_db()
    assert not p.opted_out


def test_double_opt_in_confirmation(bu, smtp_sink, make_prospects):
    from django.db import transaction

    from loopline.emails import services
    from loopline.emails.models import ConsentRecord

    (p,) = make_prospects(1)
    with transaction.atomic():
        url = services.request_double_opt_in(p, consent_text="Send me news", method="form", ip="10.0.0.1")
    token = url.rsplit("/", 1)[-1]
    assert Client().get(f"/email/confirm/{token}").status_code == 200
    assert not ConsentRecord.objects.filter(prospect=p, kind="confirmed").exists()  # GET never confirms
    assert Client().post(f"/email/confirm/{token}").status_code == 200
    assert ConsentRecord.objects.get(prospect=p, kind="confirmed").consent_text == "Send me news"


DSN = """From: MAILER-DAEMON@mx.example.org
To: {rcpt}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message could not be delivered.
--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; {addr}
Action: failed
Status: {status}
Diagnostic-Code: smtp; {code} mailbox problem

--B
Content-Type: text/rfc822-headers

From: news@acme.test
To: {addr}
Subject: Hi

--B--
"""


def test_dsn_hard_bounce_makes_prospect_undeliverable(bu, make_prospects):
    from loopline.emails import bounces, tokens
    from loopline.prospects.models import Activity, ActivityType

    (p,) = make_prospects(1)
    rcpt = f"b-{tokens.make('bounce', bu_id=bu.pk, prospect_id=p.pk, send_id=7)}@bounces.loopline.localhost"
    report = bounces.handle(DSN.format(rcpt=rcpt, addr=p.email, status="5.1.1", code="550").encode(), [rcpt])
    assert report.kind == "bounce" and report.hard and report.send_id == 7
    p.refresh_from_db()
    assert p.email_undeliverable and p.email_bounced_at
    assert Activity.objects.filter(prospect=p, type=ActivityType.EMAIL_HARD_BOUNCE, asset_id=7).exists()


def test_five_soft_bounces_make_prospect_undeliverable(bu, make_prospects):
    from loopline.emails import bounces, tokens

    (p,) = make_prospects(1)
    rcpt = f"b-{tokens.make('bounce', bu_id=bu.pk, prospect_id=p.pk, send_id=7)}@bounces.loopline.localhost"
    raw = DSN.format(rcpt="someone@x", addr=p.email, status="4.2.2", code="452").encode()
    for i in range(4):
        assert bounces.handle(raw, [rcpt]).hard is False
        p.refresh_from_db()
        assert not p.email_undeliverable and p.soft_bounce_count == i + 1
    bounces.handle(raw, [rcpt])
    p.refresh_from_db()
    assert p.email_undeliverable  # [M26] 5 soft bounces


def test_bounce_matched_from_returned_headers_when_rcpt_is_not_verp(bu, make_prospects):
    from loopline.emails import bounces, tokens

    (p,) = make_prospects(1)
    verp = f"b-{tokens.make('bounce', bu_id=bu.pk, prospect_id=p.pk, send_id=3)}@bounces.loopline.localhost"
    raw = DSN.format(rcpt="postmaster@x", addr=p.email, status="5.0.0", code="550").replace(
        "From: news@acme.test", f"Return-Path: <{verp}>\nFrom: news@acme.test").encode()
    assert bounces.handle(raw, ["bounces@bounces.loopline.localhost"]).prospect_id == p.pk


def test_arf_complaint_opts_out(bu, make_prospects):
    from loopline.emails import bounces, tokens
    from loopline.prospects.models import Activity, ActivityType

    (p,) = make_prospects(1)
    rcpt = f"b-{tokens.make('bounce', bu_id=bu.pk, prospect_id=p.pk, send_id=9)}@bounces.loopline.localhost"
    raw = (b"From: fbl@isp.example\nMIME-Version: 1.0\nContent-Type: multipart/report; report-type=feedback-report;"
           b' boundary="B"\n\n--B\nContent-Type: text/plain\n\nabuse report\n--B\nContent-Type: message/feedback-report'
           b"\n\nFeedback-Type: abuse\n\n--B--\n")
    assert bounces.handle(raw, [rcpt]).kind == "complaint"
    p.refresh_from_db()
    assert p.opted_out
    assert Activity.objects.filter(prospect=p, type=ActivityType.SPAM_COMPLAINT).exists()


def test_garbage_in_bounce_mailbox_is_ignored(bu):
    from loopline.emails import bounces

    assert bounces.handle(b"\x00\xffnot an email", ["b-zzzz@bounces.loopline.localhost"]).kind == "unknown"


@pytest.mark.django_db(transaction=True)
def test_bounce_mailbox_receives_dsn_over_smtp(bu, make_prospects):
    import smtplib

    from loopline.emails import bounces, tokens

    from .conftest import free_port

    (p,) = make_prospects(1)
    port = free_port()
    controller = bounces.start_bounce_mailbox(port=port)
    try:
        rcpt = f"b-{tokens.make('bounce', bu_id=bu.pk, prospect_id=p.pk, send_id=1)}@bounces.loopline.localhost"
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail("", [rcpt], DSN.format(rcpt=rcpt, addr=p.email, status="5.1.1", code="550"))
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                smtp.sendmail("", ["someone@elsewhere.test"], "Subject: x\n\nhi")
    finally:
        controller.stop()
    p.refresh_from_db()
    assert p.email_undeliverable
