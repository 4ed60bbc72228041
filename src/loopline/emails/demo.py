"""The demo inbox: a local SMTP catcher that stores what Loopline "sends", shown at /emails/inbox/ so a person can
read the personalised mail and click its tracked links. Also runs the bounce mailbox beside it.

``loopline run`` (embedded mode) calls :func:`start_demo_mail` once; it returns the running controllers.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import os

from aiosmtpd.controller import Controller

logger = logging.getLogger("loopline.emails")
KEEP = 1000


def store(raw: bytes, mail_from: str, rcpt_tos: list[str]) -> int:
    from django.db import close_old_connections, connection

    from .models import CapturedMessage

    close_old_connections()
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        subject = str(msg.get("Subject", ""))[:300]
    except Exception:  # keep even what does not parse
        subject = ""
    row = CapturedMessage.objects.create(mail_from=mail_from[:300], rcpt_to=", ".join(rcpt_tos)[:1000],
                                         subject=subject, raw=raw.decode("utf-8", "replace"))
    stale = CapturedMessage.objects.order_by("-id").values_list("id", flat=True)[KEEP:KEEP + 1]
    if stale:
        CapturedMessage.objects.filter(id__lte=stale[0]).delete()
    connection.close()  # executor threads are reused; never leave a connection open behind
    return row.pk


class InboxHandler:
    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        try:
            await asyncio.to_thread(store, raw, envelope.mail_from or "", list(envelope.rcpt_tos))
        except Exception:
            logger.exception("demo inbox could not store a message")
            return "451 4.3.0 Could not store the message"
        return "250 Stored in the Loopline demo inbox"


def start_demo_mail(host: str | None = None, port: int | None = None, bounce_port: int | None = None):
    """Start the demo inbox (SMTP on EMAIL_PORT, default 2525) and the bounce mailbox (2526).

    Returns a list of aiosmtpd controllers; call ``.stop()`` on each at shutdown. A port already in use is logged
    and skipped (another Loopline process may run the inbox already)."""
    from .bounces import BounceHandler

    host = host or os.environ.get("EMAIL_HOST", "127.0.0.1")
    port = port or int(os.environ.get("EMAIL_PORT", "2525"))
    bounce_port = bounce_port or int(os.environ.get("LOOPLINE_BOUNCE_PORT", "2526"))
    controllers = []
    for handler, p in ((InboxHandler(), port), (BounceHandler(), bounce_port)):
        controller = Controller(handler, hostname=host, port=p, data_size_limit=10 * 1024 * 1024)
        try:
            controller.start()
        except Exception as exc:
            logger.warning("could not start mail receiver on %s:%s: %s", host, p, exc)
            continue
        controllers.append(controller)
    return controllers


def run_forever() -> None:
    """``python -m loopline.emails.demo``: run the demo inbox on its own (for development)."""
    import django

    django.setup()
    controllers = start_demo_mail()
    print(f"demo inbox listening: {[(c.hostname, c.port) for c in controllers]}")
    try:
        import time

        while True:
            time.sleep(3600)
    finally:
        for c in controllers:
            c.stop()


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopline.config.settings")
    run_forever()
