"""Outgoing webhooks ([M32]): HMAC-SHA256 signatures with a timestamp, delivery to a real local HTTP server, retries
with backoff, the delivery log, and switching an endpoint off after repeated failures."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client
from django.utils import timezone

from loopline.conftest import PASSWORD
from loopline.notifications import webhooks
from loopline.notifications.models import Notification, WebhookDelivery, WebhookEndpoint
from loopline.prospects import services as prospect_services
from loopline.prospects.models import ActivityType


class Receiver:
    """A real HTTP server on 127.0.0.1 that records requests and answers with the next queued status."""

    def __init__(self):
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"boom")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    # The receiver listens on loopback, which the SSRF guard refuses unless private targets are allowed.
    settings.LOOPLINE_WEBHOOK_ALLOW_PRIVATE = True
    r = Receiver()
    yield r
    r.close()


def _endpoint(bu, url, events=("prospect.created", "form.submitted")):
    from django.http import QueryDict

    data = QueryDict(mutable=True)
    data.update({"name": "CRM bridge", "url": url})
    data.setlist("events", list(events))
    return webhooks.save_endpoint(bu, data)


def _make_due():
    WebhookDelivery.objects.exclude(next_run_at=None).update(next_run_at=timezone.now(), locked_until=None)


def test_sign_and_verify():
    body = b'{"a":1}'
    header = webhooks.sign("s3cret", body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert webhooks.verify("s3cret", header, body, now=1_700_000_100)
    assert not webhooks.verify("other", header, body, now=1_700_000_100)           # wrong secret
    assert not webhooks.verify("s3cret", header, b'{"a":2}', now=1_700_000_100)    # altered body
    assert not webhooks.verify("s3cret", header, body, now=1_700_000_000 + 301)    # too old: replay refused
    assert not webhooks.verify("s3cret", "garbage", body)


def test_prospect_created_is_delivered_signed(bu, receiver):
    endpoint = _endpoint(bu, receiver.url)
    p = prospect_services.create_prospect(bu, {"email": "ada@example.com"})
    assert webhooks.deliver_due() == 1
    request = receiver.requests[0]
    assert request["headers"]["Loopline-Event"] == "prospect.created"
    # The receiver verifies the signature with the endpoint's secret.
    assert webhooks.verify(webhooks.secret_of(endpoint), request["headers"]["Loopline-Signature"], request["body"])
    payload = json.loads(request["body"])
    assert payload["event"] == "prospect.created" and payload["data"]["prospect"]["id"] == p.pk
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "delivered" and delivery.response_status == 200 and delivery.next_run_at is None
    assert str(delivery.event_id) == request["headers"]["Loopline-Delivery"] == payload["id"]


def test_unsubscribed_events_and_other_bus_send_nothing(bu, other_bu, receiver):
    _endpoint(bu, receiver.url, events=("form.submitted",))
    prospect_services.create_prospect(bu, {"email": "ada@example.com"})
    prospect_services.create_prospect(other_bu, {"email": "bob@example.com"})
    assert WebhookDelivery.objects.count() == 0


def test_form_submission_event(bu, receiver):
    _endpoint(bu, receiver.url, events=("form.submitted",))
    p = prospect_services.create_prospect(bu, {"email": "ada@example.com"})
    prospect_services.record_activity(bu.pk, ActivityType.FORM_SUCCESS, prospect=p, asset_type="form", asset_id=4)
    prospect_services.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=p)
    webhooks.deliver_due()
    assert [json.loads(r["body"])["event"] for r in receiver.requests] == ["form.submitted"]
    assert json.loads(receiver.requests[0]["body"])["data"]["prospect"]["email"] == "ada@example.com"


def test_failures_are_retried_with_backoff_then_delivered(bu, receiver):
    _endpoint(bu, receiver.url)
    receiver.statuses = [500, 503]
    prospect_services.create_prospect(bu, {"email": "ada@example.com"})
    before = timezone.now()
    webhooks.deliver_due()
    d = WebhookDelivery.objects.get()
    assert d.status == "retrying" and d.attempts == 1 and "HTTP 500" in d.last_error
    first_wait = (d.next_run_at - before).total_seconds()
    assert webhooks.BACKOFF_BASE / 2 - 1 <= first_wait <= webhooks.BACKOFF_BASE + 1
    assert webhooks.deliver_due() == 0  # not due yet
    _make_due()
    webhooks.deliver_due()
    d.refresh_from_db()
    second_wait = (d.next_run_at - timezone.now()).total_seconds()
    assert d.attempts == 2 and second_wait >= webhooks.BACKOFF_BASE - 1  # doubled: [base, 2*base]
    _make_due()
    webhooks.deliver_due()
    d.refresh_from_db()
    assert d.status == "delivered" and d.attempts == 3 and len(receiver.requests) == 3
    assert WebhookEndpoint.objects.get().consecutive_failures == 0


def test_gives_up_after_max_attempts(bu, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "MAX_ATTEMPTS", 2)
    _endpoint(bu, receiver.url)
    receiver.statuses = [500, 500]
    prospect_services.create_prospect(bu, {"email": "ada@example.com"})
    webhooks.deliver_due()
    _make_due()
    webhooks.deliver_due()
    d = WebhookDelivery.objects.get()
    assert d.status == "failed" and d.next_run_at is None


def test_hanging_or_unreachable_endpoint_is_a_failure_not_a_crash(bu, monkeypatch, settings):
    settings.LOOPLINE_WEBHOOK_ALLOW_PRIVATE = True
    monkeypatch.setattr(webhooks, "TIMEOUT_SECONDS", 0.5)
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts, never answers
    try:
        _endpoint(bu, f"http://127.0.0.1:{silent.getsockname()[1]}/")
        prospect_services.create_prospect(bu, {"email": "ada@example.com"})
        webhooks.deliver_due()  # returns (the timeout ends the wait) instead of hanging the worker
    finally:
        silent.close()
    d = WebhookDelivery.objects.get()
    assert d.status == "retrying" and "Could not reach" in d.last_error


def test_repeated_failures_switch_the_endpoint_off_and_tell_admins(bu, admin_user, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "DISABLE_AFTER", 3)
    endpoint = _endpoint(bu, receiver.url)
    receiver.statuses = [500] * 10
    for i in range(4):
        prospect_services.create_prospect(bu, {"email": f"p{i}@example.com"})
    webhooks.deliver_due()
    endpoint.refresh_from_db()
    assert not endpoint.is_active and "3 failed deliveries in a row" in endpoint.disabled_reason
    assert len(receiver.requests) == 3  # the fourth is parked, not sent to a dead endpoint
    assert Notification.objects.filter(user=admin_user, kind="system").exists()
    # New events are not queued while it is off; switching it on sends the parked ones.
    prospect_services.create_prospect(bu, {"email": "later@example.com"})
    assert WebhookDelivery.objects.count() == 4
    receiver.statuses = []
    webhooks.set_active(endpoint, True)
    webhooks.deliver_due()
    assert WebhookDelivery.objects.filter(status="delivered").count() == 4


def test_webhook_pages(bu, admin_user, receiver):
    client = Client()
    assert client.login(username=admin_user.email, password=PASSWORD)
    response = client.post("/notifications/webhooks/new/", {"name": "", "url": "ftp://x", "events": ["nope"]})
    assert response.status_code == 400 and "Enter a full web address" in response.content.decode()
    response = client.post("/notifications/webhooks/new/", {"name": "Bridge", "url": receiver.url,
                                                            "events": ["prospect.created"]})
    endpoint = WebhookEndpoint.objects.get()
    assert response.status_code == 302
    assert webhooks.secret_of(endpoint).startswith("whsec_") and "whsec_" not in endpoint.secret  # encrypted at rest
    assert client.post(f"/notifications/webhooks/{endpoint.pk}/action/", {"action": "test"}).status_code == 302
    webhooks.deliver_due()
    page = client.get(f"/notifications/webhooks/{endpoint.pk}/").content.decode()
    assert "webhook.test" in page and "HTTP 200" in page
    assert client.get("/notifications/webhooks/").status_code == 200


def test_other_bu_cannot_reach_an_endpoint(bu, other_bu, admin_user, receiver):
    endpoint = _endpoint(other_bu, receiver.url)
    client = Client()
    assert client.login(username=admin_user.email, password=PASSWORD)
    assert client.get(f"/notifications/webhooks/{endpoint.pk}/").status_code == 404
