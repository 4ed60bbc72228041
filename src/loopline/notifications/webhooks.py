"""Outgoing webhooks ([M32]): per-BU endpoints subscribed to event kinds, HMAC-SHA256 signed payloads with a
timestamp, delivered from a database-row queue with retries and exponential backoff, a delivery log, and automatic
disabling after repeated failures.

Signature header (verify on the receiving side)::

    Loopline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

Reject a request whose ``t`` is more than 5 minutes old, and compare signatures in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from loopline.platform import audit, crypto, events, queues
from loopline.prospects.models import ActivityType, Prospect

from . import egress
from .models import WebhookDelivery, WebhookEndpoint

logger = logging.getLogger("loopline.webhooks")

EVENTS: dict[str, str] = {
    "prospect.created": "A prospect is created",
    "prospect.changed": "A prospect's fields change",
    "prospect.deleted": "A prospect is deleted or moved to the recycle bin",
    "prospects.merged": "Two prospects are merged",
    "prospects.bulk_changed": "Many prospects change at once (import, rescoring) — ids in batches",
    "activity.recorded": "Any activity (page view, email open, click...; machine events excluded)",
    "form.submitted": "A form, form handler or landing page is submitted",
}
FORM_TYPES = {ActivityType.FORM_SUCCESS, ActivityType.FORM_HANDLER_SUCCESS, ActivityType.LANDING_PAGE_SUCCESS}
SIGNATURE_HEADER = "Loopline-Signature"
TOLERANCE_SECONDS = 300
TIMEOUT_SECONDS = float(getattr(settings, "LOOPLINE_WEBHOOK_TIMEOUT", 10))
MAX_ATTEMPTS = int(getattr(settings, "LOOPLINE_WEBHOOK_MAX_ATTEMPTS", 8))
BACKOFF_BASE = float(getattr(settings, "LOOPLINE_WEBHOOK_BACKOFF", 30))
DISABLE_AFTER = int(getattr(settings, "LOOPLINE_WEBHOOK_DISABLE_AFTER", 20))
BULK_BATCH = 1000
PROSPECT_FIELDS = ("id", "email", "first_name", "last_name", "company", "job_title", "score", "grade",
                   "assigned_user_id", "crm_lead_id", "crm_contact_id", "opted_out", "is_deleted")


# --- Signing -----------------------------------------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time() if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None,
           tolerance: int = TOLERANCE_SECONDS) -> bool:
    """What a receiver does: recompute the HMAC over "t.body", compare in constant time, refuse stale timestamps."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# --- Endpoints ---------------------------------------------------------------------------------------------------------


def clean_endpoint(data) -> dict[str, Any]:
    name = str(data.get("name", "")).strip()
    url = str(data.get("url", "")).strip()
    chosen = data.getlist("events") if hasattr(data, "getlist") else list(data.get("events") or [])
    errors = {}
    if not name or len(name) > 80:
        errors["name"] = "Give the endpoint a name (1 to 80 characters)."
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        errors["url"] = "Enter a full web address starting with https:// (or http:// for testing)."
    else:
        try:
            egress.resolve(url)  # scheme, credentials, and every address the name resolves to must be public
        except egress.UnsafeTarget as exc:
            errors["url"] = str(exc)
    if len(url) > 500:
        errors["url"] = "The address is too long (500 characters at most)."
    unknown = [e for e in chosen if e not in EVENTS]
    if unknown or not chosen:
        errors["events"] = "Choose at least one event." if not unknown else f"Unknown event {unknown[0][:40]}."
    if errors:
        raise ValidationError(errors)
    return {"name": name, "url": url, "events": [e for e in EVENTS if e in chosen]}


@transaction.atomic
def save_endpoint(bu, data, instance: WebhookEndpoint | None = None, *, actor=None) -> WebhookEndpoint:
    cleaned = clean_endpoint(data)
    endpoint = instance or WebhookEndpoint(bu=bu, secret=crypto.encrypt(new_secret()),
                                           created_by=actor if getattr(actor, "is_authenticated", False) else None)
    for key, value in cleaned.items():
        setattr(endpoint, key, value)
    endpoint.save()
    audit.record("webhook.saved", actor=actor, bu=bu, obj=endpoint, summary=f"Webhook {endpoint.name} → {endpoint.url}")
    _forget_cache(bu.pk)
    return endpoint


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def secret_of(endpoint: WebhookEndpoint) -> str:
    return crypto.decrypt(endpoint.secret)


def rotate_secret(endpoint: WebhookEndpoint, *, actor=None) -> str:
    secret = new_secret()
    endpoint.secret = crypto.encrypt(secret)
    endpoint.save(update_fields=["secret"])
    audit.record("webhook.secret_rotated", actor=actor, bu=endpoint.bu, obj=endpoint, summary=endpoint.name)
    return secret


def set_active(endpoint: WebhookEndpoint, active: bool, *, actor=None) -> None:
    endpoint.is_active = active
    if active:
        endpoint.consecutive_failures = 0
        endpoint.disabled_reason = ""
        # Give the deliveries parked while it was off another chance.
        endpoint.deliveries.filter(status__in=[WebhookDelivery.Status.PENDING, WebhookDelivery.Status.RETRYING]).update(
            next_run_at=timezone.now(), locked_until=None)
    endpoint.save(update_fields=["is_active", "consecutive_failures", "disabled_reason"])
    audit.record("webhook.enabled" if active else "webhook.disabled", actor=actor, bu=endpoint.bu, obj=endpoint,
                 summary=endpoint.name)
    _forget_cache(endpoint.bu_id)
    if active:
        _kick()


def delete_endpoint(endpoint: WebhookEndpoint, *, actor=None) -> None:
    audit.record("webhook.deleted", actor=actor, bu=endpoint.bu, obj=endpoint, summary=endpoint.name)
    bu_id = endpoint.bu_id
    endpoint.delete()
    _forget_cache(bu_id)


# Which endpoints listen in a BU: asked on every event, so remembered for a few seconds in each process.
_cache: dict[int, tuple[float, list[tuple[int, frozenset[str]]]]] = {}
CACHE_SECONDS = 5.0


def _forget_cache(bu_id: int) -> None:
    _cache.pop(bu_id, None)


def _listeners(bu_id: int, event: str) -> list[int]:
    hit = _cache.get(bu_id)
    if hit is None or time.monotonic() - hit[0] > CACHE_SECONDS:
        rows = [(pk, frozenset(kinds or [])) for pk, kinds in
                WebhookEndpoint.objects.filter(bu_id=bu_id, is_active=True).values_list("id", "events")]
        hit = (time.monotonic(), rows)
        _cache[bu_id] = hit
    return [pk for pk, kinds in hit[1] if event in kinds]


# --- Queueing ----------------------------------------------------------------------------------------------------------


def queue_event(bu_id: int, event: str, data: dict[str, Any], *, endpoint_ids: Iterable[int] | None = None) -> int:
    """Write one delivery row per listening endpoint; a worker sends them after the transaction commits."""
    targets = list(endpoint_ids) if endpoint_ids is not None else _listeners(bu_id, event)
    if not targets:
        return 0
    if endpoint_ids is None:
        # The listener cache may be a few seconds stale (an endpoint deleted in another process): confirm the rows
        # exist, so a stale cache can never fail the caller's transaction with a foreign-key error.
        targets = list(WebhookEndpoint.objects.filter(pk__in=targets, bu_id=bu_id, is_active=True)
                       .values_list("pk", flat=True))
        if not targets:
            return 0
    now = timezone.now()
    rows = []
    for endpoint_id in targets:
        delivery = WebhookDelivery(endpoint_id=endpoint_id, event=event, next_run_at=now)
        delivery.payload = {"id": str(delivery.event_id), "event": event, "created_at": now.isoformat(),
                            "business_unit_id": bu_id, "data": data}
        rows.append(delivery)
    WebhookDelivery.objects.bulk_create(rows)
    transaction.on_commit(_kick)
    return len(rows)


def _kick() -> None:
    from . import tasks

    try:
        tasks.deliver_webhooks.enqueue()
    except Exception:  # the scheduled sweep picks the rows up anyway
        logger.exception("could not enqueue webhook delivery")


def _prospect_data(prospect_id: int) -> dict[str, Any] | None:
    row = Prospect.objects.filter(pk=prospect_id).values(*PROSPECT_FIELDS).first()
    return dict(row) if row else None


def on_prospect_changed(event: events.ProspectChanged) -> None:
    kind = "prospect.created" if event.created else "prospect.changed"
    if not _listeners(event.bu_id, kind):
        return
    data = _prospect_data(event.prospect_id)
    if data is not None:
        queue_event(event.bu_id, kind, {"prospect": data, "changed_fields": sorted(event.changed_fields),
                                        "source": event.source})


def on_prospects_bulk_changed(event: events.ProspectsBulkChanged) -> None:
    if not _listeners(event.bu_id, "prospects.bulk_changed"):
        return
    ids = list(event.prospect_ids)
    created = set(event.created_ids)
    for start in range(0, len(ids), BULK_BATCH):
        batch = ids[start:start + BULK_BATCH]
        queue_event(event.bu_id, "prospects.bulk_changed", {
            "prospect_ids": batch, "created_ids": [i for i in batch if i in created], "source": event.source})


def on_prospect_deleted(event: events.ProspectDeleted) -> None:
    if _listeners(event.bu_id, "prospect.deleted"):
        queue_event(event.bu_id, "prospect.deleted", {"prospect_id": event.prospect_id, "permanent": event.permanent})


def on_prospects_merged(event: events.ProspectsMerged) -> None:
    if _listeners(event.bu_id, "prospects.merged"):
        queue_event(event.bu_id, "prospects.merged", {"survivor_id": event.survivor_id, "loser_id": event.loser_id})


def on_activity_recorded(event: events.ActivityRecorded) -> None:
    if event.is_machine:
        return
    kinds = ["activity.recorded"] + (["form.submitted"] if event.type in FORM_TYPES else [])
    for kind in kinds:
        if not _listeners(event.bu_id, kind):
            continue
        data: dict[str, Any] = {"activity": {"id": event.activity_id, "type": ActivityType(event.type).label,
                             "type_id": event.type, "prospect_id": event.prospect_id,
                             "visitor_id": event.visitor_id, "data": event.data}}
        if kind == "form.submitted" and event.prospect_id:
            data["prospect"] = _prospect_data(event.prospect_id)
        queue_event(event.bu_id, kind, data)


# --- Delivery ----------------------------------------------------------------------------------------------------------


def post(endpoint: WebhookEndpoint, delivery: WebhookDelivery) -> tuple[int | None, str, int]:
    """POST the signed payload to the endpoint, checked again now (SSRF, DNS rebinding: see ``egress``).
    Returns (status or None, short excerpt/error, milliseconds)."""
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Loopline-Webhooks/1",
        "Loopline-Event": delivery.event,
        "Loopline-Delivery": str(delivery.event_id),
        SIGNATURE_HEADER: sign(secret_of(endpoint), body),
    }
    started = time.monotonic()
    try:
        status, answer = egress.post(endpoint.url, body, headers, timeout=TIMEOUT_SECONDS)
        excerpt = answer.decode("utf-8", "replace")
    except egress.UnsafeTarget as exc:
        return None, f"Refused: {exc}"[:500], 0
    except (OSError, http.client.HTTPException, ValueError) as exc:
        status, excerpt = None, f"Could not reach the endpoint: {exc or type(exc).__name__}"[:500]
    return status, excerpt[:500], int((time.monotonic() - started) * 1000)


def deliver_due(limit: int = 50) -> int:
    """Send a batch of due deliveries; returns how many were attempted."""
    due = WebhookDelivery.objects.filter(endpoint__is_active=True, status__in=[
        WebhookDelivery.Status.PENDING, WebhookDelivery.Status.RETRYING])
    rows = queues.claim_due(due, limit=limit, lease_seconds=TIMEOUT_SECONDS * 3)
    for delivery in rows:
        endpoint = WebhookEndpoint.objects.get(pk=delivery.endpoint_id)
        if not endpoint.is_active:
            queues.release([delivery])
            continue
        status, excerpt, ms = post(endpoint, delivery)
        delivery.response_status, delivery.response_excerpt, delivery.duration_ms = status, excerpt, ms
        if status is not None and 200 <= status < 300:
            queues.done(delivery, status=WebhookDelivery.Status.DELIVERED, delivered_at=timezone.now(),
                        response_status=status, response_excerpt=excerpt, duration_ms=ms)
            WebhookEndpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=0)
            continue
        _record_failure(endpoint, delivery, f"HTTP {status}: {excerpt}" if status else excerpt)
    return len(rows)


def _record_failure(endpoint: WebhookEndpoint, delivery: WebhookDelivery, error: str) -> None:
    will_retry = queues.retry_later(delivery, error, max_attempts=MAX_ATTEMPTS, base=BACKOFF_BASE, cap=6 * 3600)
    delivery.status = WebhookDelivery.Status.RETRYING if will_retry else WebhookDelivery.Status.FAILED
    delivery.save(update_fields=["status", "response_status", "response_excerpt", "duration_ms"])
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        locked.consecutive_failures += 1
        fields = ["consecutive_failures"]
        if locked.is_active and locked.consecutive_failures >= DISABLE_AFTER:
            locked.is_active = False
            locked.disabled_reason = (
                f"Switched off on {timezone.now():%Y-%m-%d %H:%M} UTC after {locked.consecutive_failures} failed "
                f"deliveries in a row. Last error: {error[:200]}. Fix the receiving server, then switch the "
                f"endpoint back on: waiting deliveries are sent again.")
            fields += ["is_active", "disabled_reason"]
        locked.save(update_fields=fields)
    if "is_active" in fields:
        _forget_cache(endpoint.bu_id)
        _tell_admins(locked)


def _tell_admins(endpoint: WebhookEndpoint) -> None:
    from loopline.accounts.models import Membership

    from .services import notify

    for membership in Membership.objects.filter(bu_id=endpoint.bu_id).select_related("user", "role"):
        if "settings.edit" in membership.role.ability_set:
            notify(membership.user, endpoint.bu, kind="system", title=f"Webhook {endpoint.name} was switched off",
                   body=endpoint.disabled_reason, url=f"/notifications/webhooks/{endpoint.pk}/")


def send_test(endpoint: WebhookEndpoint) -> WebhookDelivery:
    queue_event(endpoint.bu_id, "webhook.test", {"message": "This is a test event from Loopline."},
                endpoint_ids=[endpoint.pk])
    return endpoint.deliveries.order_by("-id").first()  # type: ignore[return-value]


def redeliver(delivery: WebhookDelivery) -> None:
    delivery.status = WebhookDelivery.Status.PENDING
    delivery.attempts = 0
    delivery.next_run_at = timezone.now()
    delivery.locked_until = None
    delivery.save(update_fields=["status", "attempts", "next_run_at", "locked_until"])
    transaction.on_commit(_kick)
