"""Signed-in email pages: editor keeps input and shows render errors, preview as a prospect, list send, scoping."""

from __future__ import annotations

import pytest
from django.test import Client

from loopline.conftest import PASSWORD

pytestmark = pytest.mark.django_db



def test_editor_refuses_unrenderable_email_and_keeps_input(bu, client_as):
    from loopline.emails.models import Email

    response = client_as.post("/emails/new/", {
        "name": "Broken", "purpose": "marketing", "subject": "Hi", "sender": "fixed", "from_email": "a@acme.test",
        "body_format": "html", "body": "<p>{{ prospect.shoe_size }} {{ unsubscribe_url }} {{ preferences_url }}</p>"})
    assert response.status_code == 200
    assert b"unknown field prospect.shoe_size" in response.content
    assert b"Broken" in response.content  # input kept
    assert not Email.objects.exists()


def test_preview_as_prospect_and_other_bu_is_404(bu, other_bu, client_as, make_email, make_prospects):
    from loopline.prospects.models import Prospect

    email = make_email()
    (p,) = make_prospects(1, company="Initech")
    response = client_as.get(f"/emails/{email.pk}/preview/?prospect={p.pk}")
    assert response.status_code == 200
    assert b"Hi P0" in response.content and b"from Initech" in response.content
    stranger = Prospect.objects.create(bu=other_bu, email="x@globex.test", first_name="Stranger")
    response = client_as.get(f"/emails/{email.pk}/preview/?prospect={stranger.pk}")
    assert b"Stranger" not in response.content  # out-of-scope prospect is ignored (sample shown)
    from loopline.accounts import services as account_services
    from loopline.emails import services

    other_user = account_services.create_user("o@globex.test", password=PASSWORD)
    account_services.set_membership(other_bu, other_user, "marketing")
    from loopline.accounts.access import Access

    theirs = services.save_email(Access.for_user(other_user, other_bu), {
        "name": "Theirs", "subject": "x", "from_email": "n@globex.test", "body_format": "html",
        "body": "<p>{{ unsubscribe_url }} {{ preferences_url }}</p>"}) if other_bu.postal_address else None
    if theirs is not None:
        assert client_as.get(f"/emails/{theirs.pk}/preview/").status_code == 404
    assert client_as.get("/emails/999999/").status_code == 404


def test_send_page_starts_a_list_send_and_shows_progress(bu, client_as, make_email):
    from loopline.automation.models import ProspectList
    from loopline.emails.models import EmailSend

    email = make_email()
    pl = ProspectList.objects.create(bu=bu, name="Newsletter")
    response = client_as.post(f"/emails/{email.pk}/send/", {"include": [str(pl.pk)]})
    send = EmailSend.objects.get(kind="list")
    assert response.status_code == 302 and response["Location"] == f"/emails/sends/{send.pk}/"
    page = client_as.get(f"/emails/sends/{send.pk}/")
    assert page.status_code == 200 and b"Report" in page.content
    partial = client_as.get(f"/emails/sends/{send.pk}/", HTTP_HX_REQUEST="true")
    assert b'id="progress"' in partial.content and b"<html" not in partial.content
    assert client_as.get("/emails/").status_code == 200
    assert client_as.get("/emails/inbox/").status_code == 200


def test_sales_user_cannot_edit_emails(bu, sales_user):
    client = Client()
    client.login(email=sales_user.email, password=PASSWORD)
    assert client.get("/emails/new/").status_code == 403
