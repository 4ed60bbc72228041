"""Outgoing webhooks never reach into our own network (SSRF): refused on save and at delivery, every address a name
resolves to is checked, and the connection goes to the checked address (DNS rebinding). A setting lets on-premises
installs allow private targets."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from django.core.exceptions import ValidationError
from django.http import QueryDict

from loopline.notifications import egress, webhooks
from loopline.notifications.models import WebhookDelivery
from loopline.prospects import services as prospect_services

from .test_webhooks import Receiver, _make_due

pytestmark = pytest.mark.django_db

REFUSED = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.1:8080/hook", "loopback"),  # short form, resolved by the system like any name
    ("http://2130706433/hook", "loopback"),  # 127.0.0.1 as one number
    ("http://localhost/hook", "loopback"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://10.1.2.3/hook", "private"),
    ("http://192.168.0.10/hook", "private"),
    ("http://172.16.5.4/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata service
    ("http://100.64.0.1/hook", "non-public"),  # carrier-grade NAT, shared space
    ("http://224.0.0.1/hook", "multicast"),
    ("http://240.0.0.1/hook", "private"),  # reserved (Python also files 240/4 as private)
    ("http://[::1]/hook", "loopback"),
    ("http://[::]/hook", "unspecified"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[fc00::1]/hook", "private"),
    ("http://[ff02::1]/hook", "multicast"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),  # IPv4-mapped
    ("http://[::ffff:10.0.0.1]/hook", "private"),
    ("http://[64:ff9b::7f00:1]/hook", "loopback"),  # NAT64 of 127.0.0.1
    ("http://[2002:a00:1::1]/hook", "private"),  # 6to4 of 10.0.0.1
]


def _data(url: str) -> QueryDict:
    data = QueryDict(mutable=True)
    data.update({"name": "Bridge", "url": url})
    data.setlist("events", ["prospect.created"])
    return data


@pytest.fixture
def dns(monkeypatch):
    """A stand-in DNS: host name -> list of answers; each lookup pops the next answer (the last one repeats)."""
    answers: dict[str, list[list[str]]] = {}
    lookups: list[str] = []
    real = egress._getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        queue = answers[host]
        current = queue.pop(0) if len(queue) > 1 else queue[0]
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [
            (family[ipaddress.ip_address(a).version], socket.SOCK_STREAM, 6, "", (a, port)) for a in current
        ]

    monkeypatch.setattr(egress, "_getaddrinfo", fake)
    return answers, lookups


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_private_and_special_addresses_are_refused_on_save_and_at_delivery(bu, url, reason):
    with pytest.raises(ValidationError) as err:
        webhooks.save_endpoint(bu, _data(url))
    assert "url" in err.value.message_dict  # odd spellings may already fail as "not a web address"
    with pytest.raises(egress.UnsafeTarget, match=f"is a {reason} address"):
        egress.resolve(url)  # the check every delivery makes


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("ftp://example.com/hook", "full web address"),
        ("file:///etc/passwd", "full web address"),
        ("gopher://example.com/", "full web address"),
        ("https://user:secret@example.com/hook", "user names and passwords"),
        ("https://token@example.com/hook", "user names and passwords"),
        ("https://no-such-host.invalid/hook", "could not be found"),
    ],
)
def test_schemes_credentials_and_unknown_hosts_are_refused(bu, url, text):
    with pytest.raises(ValidationError) as err:
        webhooks.save_endpoint(bu, _data(url))
    assert text in err.value.message_dict["url"][0]


def test_a_name_with_any_private_answer_is_refused(bu, dns):
    answers, _ = dns
    answers["mixed.example.test"] = [["93.184.215.14", "10.0.0.7"]]
    with pytest.raises(ValidationError) as err:
        webhooks.save_endpoint(bu, _data("https://mixed.example.test/hook"))
    assert "resolves to 10.0.0.7" in err.value.message_dict["url"][0]


def test_public_addresses_are_accepted(bu, dns):
    answers, _ = dns
    answers["hooks.example.test"] = [["93.184.215.14", "2606:4700::6810:84e5"]]
    endpoint = webhooks.save_endpoint(bu, _data("https://hooks.example.test/in?x=1"))
    assert endpoint.url == "https://hooks.example.test/in?x=1"
    target = egress.resolve(endpoint.url)
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "hooks.example.test",
        443,
        "/in?x=1",
    )
    assert egress.refusal(ipaddress.ip_address("8.8.8.8")) is None


def test_dns_rebinding_after_save_is_refused_at_delivery(bu, dns):
    """Public when saved, loopback when delivered: nothing is sent, the delivery fails with the reason."""
    answers, _ = dns
    receiver = Receiver()
    try:
        port = receiver.server.server_address[1]
        answers["rebind.example.test"] = [["93.184.215.14"], ["127.0.0.1"]]
        webhooks.save_endpoint(bu, _data(f"http://rebind.example.test:{port}/hook"))
        prospect_services.create_prospect(bu, {"email": "ada@example.com"})
        _make_due()
        assert webhooks.deliver_due() == 1
    finally:
        receiver.close()
    assert receiver.requests == []
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "retrying"
    assert "Refused: rebind.example.test resolves to 127.0.0.1" in delivery.last_error


def test_the_connection_goes_to_the_checked_address(bu, dns, settings):
    """The name is resolved once per delivery and the socket connects to that answer: a second, different answer
    (what an attacker's DNS gives the HTTP library's own lookup) is never used. Host header keeps the name."""
    settings.LOOPLINE_WEBHOOK_ALLOW_PRIVATE = True  # the local receiver is on loopback
    answers, lookups = dns
    receiver = Receiver()
    try:
        port = receiver.server.server_address[1]
        # save: 127.0.0.1; delivery check: 127.0.0.1; any further lookup: an unroutable documentation address
        answers["pinned.example.test"] = [["127.0.0.1"], ["127.0.0.1"], ["192.0.2.1"]]
        webhooks.save_endpoint(bu, _data(f"http://pinned.example.test:{port}/hook?k=v"))
        prospect_services.create_prospect(bu, {"email": "ada@example.com"})
        _make_due()
        webhooks.deliver_due()
    finally:
        receiver.close()
    assert WebhookDelivery.objects.get().status == "delivered"
    assert lookups == ["pinned.example.test", "pinned.example.test"]  # one at save, one at delivery
    (request,) = receiver.requests
    assert request["path"] == "/hook?k=v"
    assert request["headers"]["Host"] == f"pinned.example.test:{port}"


def test_private_targets_need_the_setting_and_it_still_refuses_bad_schemes(bu, settings):
    settings.LOOPLINE_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(egress.UnsafeTarget):
        egress.resolve("http://127.0.0.1:9/hook")
    settings.LOOPLINE_WEBHOOK_ALLOW_PRIVATE = True
    assert egress.resolve("http://127.0.0.1:9/hook").addresses == ("127.0.0.1",)
    with pytest.raises(egress.UnsafeTarget, match="user names and passwords"):
        egress.resolve("http://a:b@127.0.0.1/hook")
    with pytest.raises(egress.UnsafeTarget, match="Only http"):
        egress.resolve("ftp://127.0.0.1/hook")


def test_an_endpoint_saved_while_allowed_is_refused_at_delivery_once_disallowed(bu, settings):
    settings.LOOPLINE_WEBHOOK_ALLOW_PRIVATE = True
    receiver = Receiver()
    try:
        webhooks.save_endpoint(bu, _data(receiver.url))
        settings.LOOPLINE_WEBHOOK_ALLOW_PRIVATE = False
        prospect_services.create_prospect(bu, {"email": "ada@example.com"})
        _make_due()
        webhooks.deliver_due()
    finally:
        receiver.close()
    assert receiver.requests == []
    assert "is a loopback address" in WebhookDelivery.objects.get().last_error


def test_redirects_to_private_addresses_are_not_followed(bu, settings):
    """A 3xx is the answer (a failure), never a second request — so a public endpoint cannot bounce us inward."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    settings.LOOPLINE_WEBHOOK_ALLOW_PRIVATE = True
    inner = Receiver()
    hits: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.path)
            self.send_response(307)
            self.send_header("Location", inner.url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    outer = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    Thread(target=outer.serve_forever, daemon=True).start()
    try:
        webhooks.save_endpoint(bu, _data(f"http://127.0.0.1:{outer.server_address[1]}/hook"))
        prospect_services.create_prospect(bu, {"email": "ada@example.com"})
        _make_due()
        webhooks.deliver_due()
    finally:
        outer.shutdown()
        outer.server_close()
        inner.close()
    assert hits == ["/hook"] and inner.requests == []
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "retrying" and delivery.response_status == 307
