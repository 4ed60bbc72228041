"""Connector status figures for the status page and the CLI ([R28]). ``status_summary(connector) -> dict`` is the
stable entry point; every value is JSON-friendly (datetimes as ISO strings)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Count, Max, Min, Q, Sum
from django.utils import timezone

from .engine import RunCounters
from .models import Connector, CrmLink, OutboxEntry, SyncError, SyncRun, Watermark
from .sharing import NOT_SHARED_REASON
from .sync import budget

__all__ = ["NOT_SHARED_REASON", "not_shared_prospect_ids", "status_summary"]
LIVE_ERRORS = (SyncError.Status.OPEN, SyncError.Status.RETRYING)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _percentiles(values: list[float], points=(50, 90, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in points}
    ordered = sorted(values)
    out = {}
    for p in points:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        out[f"p{p}"] = round(ordered[index], 3)
    return out


def latency_samples(connector: Connector, since: dt.datetime) -> dict[str, list[float]]:
    """Recent sync latencies in seconds. Loopline → CRM: outbox entry created → done. CRM → Loopline: the CRM's
    ``SystemModstamp`` → the link's ``last_synced_at`` for records read from the CRM."""
    to_crm = [
        (done - created).total_seconds()
        for created, done in OutboxEntry.objects.filter(
            connector=connector, status=OutboxEntry.Status.DONE, done_at__gte=since)
        .order_by("-done_at").values_list("created_at", "done_at")[:2000]
        if done is not None  # always set: ``done_at__gte`` excludes NULL
    ]
    from_crm = [
        max(0.0, (synced - stamp).total_seconds())
        for stamp, synced in CrmLink.objects.filter(
            connector=connector, last_synced_at__gte=since, last_crm_modstamp__isnull=False)
        .order_by("-last_synced_at").values_list("last_crm_modstamp", "last_synced_at")[:2000]
        if synced and stamp and synced >= stamp
    ]
    return {"to_crm": to_crm, "from_crm": from_crm}


def _synced(connector: Connector, since: dt.datetime) -> dict[str, int]:
    totals = {"created": 0, "updated": 0, "failed": 0}
    for counters in SyncRun.objects.filter(connector=connector, started_at__gte=since,
                                           kind__in=["pull", "push", "manual", "initial_import"]
                                           ).values_list("counters", flat=True):
        c = RunCounters.from_dict(counters or {})
        totals["created"] += c.created
        totals["updated"] += c.updated
        totals["failed"] += c.failed
    totals["total"] = totals["created"] + totals["updated"]
    return totals


def status_summary(connector: Connector) -> dict[str, Any]:
    connector.refresh_from_db(fields=["status", "api_usage", "paused_until", "last_error", "connector_user_id"])
    now = timezone.now()
    decision = budget.decision(connector, now)
    usage = connector.api_usage or {}
    calls_24h = budget.counter_of(connector).total(now)
    backlog = OutboxEntry.objects.filter(connector=connector, status=OutboxEntry.Status.PENDING).aggregate(
        n=Count("id"), oldest=Min("created_at"))
    watermarks = {
        w.object_type: {"last_successful_poll": _iso(w.last_success_at), "last_poll": _iso(w.last_poll_at),
                        "watermark": _iso(w.modstamp), "last_error": w.last_error}
        # "Task:email_sends" is the email task log's cursor ([R39]), not a CRM poll.
        for w in Watermark.objects.filter(connector=connector).exclude(object_type__contains=":").order_by("object_type")
    }
    samples = latency_samples(connector, now - dt.timedelta(hours=1))
    errors = SyncError.objects.filter(connector=connector).aggregate(
        open=Count("id", filter=Q(status__in=LIVE_ERRORS)),
        retrying=Count("id", filter=Q(status=SyncError.Status.RETRYING)))
    last_runs = {
        kind: {"at": _iso(r.finished_at or r.started_at), "note": r.note, "api_calls": r.api_calls}
        for kind in ("pull", "push", "manual", "initial_import", "related", "members", "tasks", "reconcile")
        for r in [SyncRun.objects.filter(connector=connector, kind=kind).order_by("-started_at", "-id").first()]
        if r is not None
    }
    share = decision.share_calls or None
    state = connector.status
    if state == Connector.Status.ACTIVE and connector.paused_until and connector.paused_until > now:
        state_text = f"active, waiting for the API limit until {connector.paused_until:%Y-%m-%d %H:%M} UTC"
    else:
        state_text = connector.get_status_display()
    return {
        "state": state,
        "state_text": state_text,
        "version": connector.version,
        "connector_user": connector.username,
        "connector_user_id": connector.connector_user_id,
        "instance_url": connector.instance_url,
        "last_error": connector.last_error,
        "paused_until": _iso(connector.paused_until),
        "last_successful_poll": watermarks,
        "outbox": {
            "backlog": backlog["n"] or 0,
            "oldest_at": _iso(backlog["oldest"]),
            "age_seconds": round((now - backlog["oldest"]).total_seconds(), 1) if backlog["oldest"] else 0,
            "failed": OutboxEntry.objects.filter(connector=connector, status=OutboxEntry.Status.FAILED).count(),
        },
        "synced": {"last_hour": _synced(connector, now - dt.timedelta(hours=1)),
                   "last_day": _synced(connector, now - dt.timedelta(days=1))},
        "api": {
            "calls_24h": calls_24h,
            "share_calls": share,
            "share_left": decision.share_left if share else None,
            "share_used_percent": round(100 * calls_24h / share, 1) if share else None,
            "org_used": usage.get("used"),
            "org_max": usage.get("max"),
            "mode": decision.mode.value,
            "reason": decision.reason,
        },
        "latency": {
            "crm_to_loopline": {**_percentiles(samples["from_crm"]), "samples": len(samples["from_crm"])},
            "loopline_to_crm": {**_percentiles(samples["to_crm"]), "samples": len(samples["to_crm"])},
        },
        "errors": {"open": errors["open"] or 0, "retrying": errors["retrying"] or 0},
        "related_backlog": _related_backlog(connector),  # [R38] members, [R39] email tasks waiting to be written
        "last_runs": last_runs,
        "links": CrmLink.objects.filter(connector=connector).count(),
        "send_to_loopline": _send_to_loopline(connector),
    }


def _related_backlog(connector: Connector) -> dict[str, int]:
    from .sync.related import pending_counts

    return pending_counts(connector)


def _send_to_loopline(connector: Connector) -> dict[str, str]:
    """[R3] what to configure on the CRM side's "Send to Loopline" button."""
    from .sync.manual import send_to_loopline_token

    return {"method": "POST", "path": f"/connector/{connector.bu.slug}/send-to-loopline",
            "header": "X-Loopline-Token", "token": send_to_loopline_token(connector)}


def api_calls_since(connector: Connector, since: dt.datetime) -> int:
    return SyncRun.objects.filter(connector=connector, finished_at__gte=since).aggregate(n=Sum("api_calls"))["n"] or 0


def last_poll_at(connector: Connector) -> dt.datetime | None:
    return Watermark.objects.filter(connector=connector).aggregate(m=Max("last_poll_at"))["m"]


def fields_mapped_to_crm(bu_id: int) -> set[str]:
    """Loopline field names ("email", "custom.region") a connector of this BU maps to CRM fields."""
    from .models import FieldMapping

    return set(FieldMapping.objects.filter(connector__bu_id=bu_id).values_list("loopline_field", flat=True))


def not_shared_prospect_ids(bu_id: int, prospect_ids) -> set[int]:
    """Prospects of ``bu_id`` whose CRM record, as last pulled, does not match the BU's marketing data sharing rule:
    emails to them do not go out ([R36]). Empty (one small query) when the BU has no sharing rules."""
    from . import sharing

    connector = Connector.objects.filter(bu_id=bu_id).only("settings").first()
    if connector is None or not sharing.rules_of(connector):
        return set()
    return sharing.hidden_prospect_ids(bu_id, prospect_ids)
