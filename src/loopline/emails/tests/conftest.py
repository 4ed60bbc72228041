"""A real SMTP server (aiosmtpd) for email tests, and helpers to build emails and prospects."""

from __future__ import annotations

import email
import email.policy
import socket
import threading

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """Collects every message the server accepts; ``reject`` maps recipient -> (code, text) for RCPT."""

    def __init__(self):
        self.messages: list[dict] = []
        self.reject: dict[str, str] = {}
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope: Envelope, address: str, rcpt_options):
        if address.lower() in self.reject:
            return self.reject[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope: Envelope):
        with self.lock:
            self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                  "raw": envelope.content,
                                  "msg": email.message_from_bytes(envelope.content, policy=email.policy.default)})
        return "250 Message accepted"

    def to(self, address: str) -> list[dict]:
        return [m for m in self.messages if address in m["to"]]


@pytest.fixture
def smtp_sink(settings):
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                                    "OPTIONS": {"host": "127.0.0.1", "port": port, "timeout": 10}}}
    settings.PUBLIC_BASE_URL = "https://mail.loopline.test"
    sink.port = port  # type: ignore[attr-defined]
    try:
        yield sink
    finally:
        controller.stop()


BODY = """<mjml><mj-body><mj-section><mj-column><mj-text>
Hello {{ prospect.first_name|default("there", true) }}{% if prospect.company %} from {{ account.name }}{% endif %}.
<a href="https://example.com/offer?a=1&amp;b=2">See the offer</a>
<a href="{{ unsubscribe_url }}">Unsubscribe</a> · <a href="{{ preferences_url }}">Email preferences</a>
</mj-text></mj-column></mj-section></mj-body></mjml>"""


@pytest.fixture
def make_email(bu, marketing_access):
    from loopline.emails import services

    def make(**overrides):
        data = {"name": "Spring offer", "subject": "Hi {{ prospect.first_name|default('there', true) }}",
                "from_name": "Acme", "from_email": "news@acme.test", "body_format": "mjml", "body": BODY}
        data.update(overrides)
        return services.save_email(marketing_access, data)

    return make


@pytest.fixture
def make_prospects(bu):
    from loopline.prospects.models import Prospect

    def make(n: int, **fields):
        return [Prospect.objects.create(bu=bu, email=f"p{i}@example.org", email_key=f"p{i}@example.org",
                                        first_name=f"P{i}", **fields) for i in range(n)]

    return make


@pytest.fixture
def client_as(marketing_user):
    """A test client logged in as the business unit's marketing user."""
    from django.test import Client

    from loopline.conftest import PASSWORD

    client = Client()
    assert client.login(email=marketing_user.email, password=PASSWORD)
    return client
