"""Bounces and complaints: DSN parsing (RFC 3464), the built-in bounce mailbox (an aiosmtpd receiver), ARF spam
complaints (RFC 5965), mailto unsubscribes, and django-anymail's normalised provider events ([M26], [M29])."""

from __future__ import annotations

import email
import email.policy
import logging
import re
from dataclasses import dataclass
from email.message import Message

from . import services, tokens

logger = logging.getLogger("loopline.emails")
_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class ParsedReport:
    kind: str  # bounce | complaint | unsubscribe | unknown
    hard: bool = False
    status: str = ""
    diagnostic: str = ""
    recipient: str = ""
    bu_id: int | None = None
    prospect_id: int | None = None
    send_id: int | None = None


def _ids_from_rcpts(rcpts: list[str]) -> tuple[int, int, int] | None:
    for rcpt in rcpts:
        found = services.delivery_for_address(rcpt)
        if found:
            return found
    return None


def _ids_from_headers(msg: Message) -> tuple[int, int, int] | None:
    """Fallback: the VERP address quoted in the returned original message's headers."""
    for part in msg.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            text = inner.as_string() if isinstance(inner, Message) else str(payload)
            for match in re.finditer(r"b-([0-9a-f]{20,64})@", text):
                tok = tokens.read(match.group(1), "bounce")
                if tok:
                    return tok.bu_id, tok.prospect_id, tok.send_id
    return None


def parse(raw: bytes, rcpts: list[str] | None = None) -> ParsedReport:
    """Classify one message received by the bounce mailbox."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    rcpts = rcpts or []
    ids = _ids_from_rcpts(rcpts) or _ids_from_headers(msg)
    # mailto: unsubscribe (List-Unsubscribe) — subject carries the token.
    for rcpt in rcpts:
        if rcpt.lower().startswith("unsubscribe@"):
            subject = str(msg.get("Subject", ""))
            match = re.search(r"unsubscribe-([0-9a-f]{20,64})", subject.lower())
            tok = tokens.read(match.group(1), "unsubscribe") if match else None
            if tok:
                return ParsedReport("unsubscribe", bu_id=tok.bu_id, prospect_id=tok.prospect_id,
                                    send_id=tok.send_id or None)
            return ParsedReport("unknown")
    ctype = msg.get_content_type()
    report_type = str(msg.get_param("report-type") or "").lower() if ctype == "multipart/report" else ""
    bu_id, prospect_id, send_id = ids if ids else (None, None, None)
    if report_type == "feedback-report":
        return ParsedReport("complaint", bu_id=bu_id, prospect_id=prospect_id, send_id=send_id or None)
    status, diagnostic, recipient, action = "", "", "", ""
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            blocks = part.get_payload()
            for block in blocks if isinstance(blocks, list) else []:
                if not isinstance(block, Message):
                    continue
                status = status or str(block.get("Status", "")).strip()
                action = action or str(block.get("Action", "")).strip().lower()
                diagnostic = diagnostic or str(block.get("Diagnostic-Code", "")).strip()
                recipient = recipient or str(block.get("Final-Recipient", "")).split(";")[-1].strip()
    if not status:
        body = msg.as_string()[:20000]
        match = _STATUS_RE.search(body)
        status = ".".join(match.groups()) if match else ""
    if not status and not report_type:
        return ParsedReport("unknown", bu_id=bu_id, prospect_id=prospect_id, send_id=send_id or None)
    if action == "delayed" or status.startswith("2"):
        return ParsedReport("unknown", status=status)
    hard = status.startswith("5")
    return ParsedReport("bounce", hard=hard, status=status, diagnostic=diagnostic[:500], recipient=recipient,
                        bu_id=bu_id, prospect_id=prospect_id, send_id=send_id or None)


def handle(raw: bytes, rcpts: list[str] | None = None) -> ParsedReport:
    """Parse and apply: bounces feed mailability and the activity stream, complaints opt out."""
    report = parse(raw, rcpts)
    if report.bu_id is None or report.prospect_id is None:
        if report.kind != "unknown":
            logger.info("bounce mailbox: %s for an unknown recipient", report.kind)
        return report
    if report.kind == "bounce":
        services.record_bounce(report.bu_id, report.prospect_id, send_id=report.send_id, hard=report.hard,
                               detail=f"{report.status} {report.diagnostic}".strip(), source="dsn")
    elif report.kind == "complaint":
        services.record_complaint(report.bu_id, report.prospect_id, send_id=report.send_id, source="arf")
    elif report.kind == "unsubscribe":
        from loopline.prospects.models import Prospect

        prospect = Prospect.objects.filter(pk=report.prospect_id, bu_id=report.bu_id).first()
        if prospect is not None:
            services.opt_out(prospect, method="mailto", send_id=report.send_id)
    return report


def _handle_in_thread(raw: bytes, rcpts: list[str]) -> ParsedReport:
    from django.db import connection

    try:
        return handle(raw, rcpts)
    finally:
        connection.close()  # executor threads are reused; never leave a connection open behind


class BounceHandler:
    """aiosmtpd handler for the bounce mailbox: accepts mail for the bounce domain and processes it."""

    def __init__(self, domain: str | None = None):
        from .sending import bounce_domain

        self.domain = (domain or bounce_domain()).lower()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if not address.lower().endswith("@" + self.domain):
            return "550 5.1.1 Not a bounce address here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        import asyncio

        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        try:
            await asyncio.to_thread(_handle_in_thread, raw, list(envelope.rcpt_tos))
        except Exception:  # a malformed report must never make the MTA retry forever
            logger.exception("bounce mailbox could not process a message")
        return "250 Processed"


def start_bounce_mailbox(host: str = "127.0.0.1", port: int = 2526):
    """Run the bounce mailbox in a background thread; returns the aiosmtpd Controller (call .stop())."""
    from aiosmtpd.controller import Controller

    controller = Controller(BounceHandler(), hostname=host, port=port)
    controller.start()
    return controller


# --- django-anymail provider events -----------------------------------------------------------------------------


def on_anymail_tracking(sender, event, esp_name, **kwargs) -> None:
    """Normalised provider events: bounced/rejected -> bounce, complained -> complaint, unsubscribed -> opt-out."""
    from loopline.prospects.models import Prospect

    metadata = getattr(event, "metadata", None) or {}
    recipient = (getattr(event, "recipient", "") or "").lower()
    bu_id = metadata.get("bu_id")
    prospect_id = metadata.get("prospect_id")
    send_id = metadata.get("send_id")
    if not (bu_id and prospect_id):
        return
    try:
        bu_id, prospect_id = int(bu_id), int(prospect_id)
        send_id = int(send_id) if send_id else None
    except (TypeError, ValueError):
        return
    if recipient and not Prospect.objects.filter(pk=prospect_id, bu_id=bu_id, email__iexact=recipient).exists():
        return
    kind = getattr(event, "event_type", "")
    if kind in ("bounced", "rejected"):
        hard = kind == "rejected" or not str(getattr(event, "reject_reason", "") or "").startswith("other")
        services.record_bounce(bu_id, prospect_id, send_id=send_id, hard=hard,
                               detail=str(getattr(event, "description", "") or "")[:300], source=esp_name)
    elif kind == "deferred":
        services.record_bounce(bu_id, prospect_id, send_id=send_id, hard=False, source=esp_name)
    elif kind == "complained":
        services.record_complaint(bu_id, prospect_id, send_id=send_id, source=esp_name)
    elif kind == "unsubscribed":
        prospect = Prospect.objects.get(pk=prospect_id)
        services.opt_out(prospect, method=f"provider:{esp_name}", send_id=send_id)
