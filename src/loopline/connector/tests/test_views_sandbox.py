"""The setup wizard's "Verify connection" against a live crmsandbox: success, wrong consumer key, wrong username."""

from __future__ import annotations

from django.urls import reverse

from loopline.conftest import PASSWORD
from loopline.connector import services
from loopline.connector.models import CrmDescribe, CrmUser
from loopline.platform.models import AuditLog


def _verify(client, user):
    client.login(username=user.email, password=PASSWORD)
    response = client.post(reverse("connector:verify"), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    return response.content.decode()


def test_verify_succeeds_and_fetches_metadata_while_paused(client, admin_user, sandbox_connector, crm):
    html = _verify(client, admin_user)
    assert "Connection works." in html and f"as {crm.integration_username}" in html
    assert "still paused" in html
    sandbox_connector.refresh_from_db()
    assert sandbox_connector.last_verified_at and sandbox_connector.org_id.startswith("00D")
    assert sandbox_connector.connector_user_id.startswith("005") and sandbox_connector.last_error == ""
    assert sandbox_connector.status == "paused"
    assert CrmDescribe.objects.filter(connector=sandbox_connector).count() == 5
    assert CrmUser.objects.filter(connector=sandbox_connector).exists()
    assert AuditLog.objects.filter(action="connector.verify", actor=admin_user).exists()
    page = client.get(reverse("connector:overview")).content.decode()
    assert "Last verified" in page and sandbox_connector.org_id in page


def test_wrong_consumer_key_gives_a_clear_message(client, admin_user, admin_access, sandbox_connector):
    services.update_connection(admin_access, sandbox_connector, {"consumer_key": "3MVG-not-a-real-key"})
    html = _verify(client, admin_user)
    assert "Connection failed." in html and "client identifier invalid" in html
    assert "Check the consumer key" in html
    sandbox_connector.refresh_from_db()
    assert sandbox_connector.last_verified_at is None and "client identifier invalid" in sandbox_connector.last_error
    # Without htmx the same message is flashed on the setup page.
    page = client.post(reverse("connector:verify"), follow=True).content.decode()
    assert "client identifier invalid" in page


def test_wrong_username_gives_a_clear_message(client, admin_user, admin_access, sandbox_connector):
    services.update_connection(admin_access, sandbox_connector, {"username": "nobody@crmsandbox.local"})
    html = _verify(client, admin_user)
    assert "Connection failed." in html and "The CRM refused the token" in html
    assert "Check the connector username" in html
    sandbox_connector.refresh_from_db()
    assert sandbox_connector.last_verified_at is None


def test_wrong_certificate_after_regenerating(client, admin_user, admin_access, sandbox_connector):
    services.regenerate_certificate(admin_access, sandbox_connector)
    html = _verify(client, admin_user)
    assert "Connection failed." in html
    assert "upload the new one to the connected app" in html


def test_fetch_one_record_now_while_paused(client, admin_user, sandbox_connector, crm, bu):
    import uuid

    from loopline.prospects.models import Prospect

    _verify(client, admin_user)
    email = f"fetch.{uuid.uuid4().hex[:8]}@example.com"
    lead_id = crm.create("Lead", LastName="Fetch", Company="Initech", Email=email)
    response = client.post(reverse("connector:fetch_record"), {"crm_id": lead_id})
    prospect = Prospect.objects.get(bu=bu, email=email)
    assert response.status_code == 302 and response["Location"] == reverse("prospects:detail", args=[prospect.pk])
    sandbox_connector.refresh_from_db()
    assert sandbox_connector.status == "paused"  # [R3]: by hand, while paused
    assert AuditLog.objects.filter(action="connector.fetch_record", actor=admin_user).exists()
    bad = client.post(reverse("connector:fetch_record"), {"crm_id": "not an id"}, follow=True)
    assert "Enter a lead or contact id" in bad.content.decode()


def test_setup_page_shows_the_send_to_loopline_endpoint(client, admin_user, sandbox_connector):
    from loopline.connector.sync import manual

    client.login(username=admin_user.email, password=PASSWORD)
    page = client.get(reverse("connector:overview")).content.decode()
    assert "send-to-loopline" in page and "X-Loopline-Token" in page
    assert manual.send_to_loopline_token(sandbox_connector) in page
