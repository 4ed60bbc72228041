"""The ingester: turns staged hits into visitors, visits and page-view activities, in big set-based batches.

Hits are read in id order and deleted in the same transaction that writes their activities, so each acknowledged hit
becomes exactly one page view even if the ingester is killed at any point. On PostgreSQL several ingesters can run
side by side (``FOR UPDATE SKIP LOCKED``); on SQLite there is one writer at a time anyway.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from django.db import connection, transaction
from django.db.models import Q

from loopline.campaigns.models import Campaign
from loopline.platform import events
from loopline.prospects.models import Activity, ActivityType, Prospect, Visitor

from . import spool, tokens
from .models import IngestLog, SpoolWatermark, TrackingHit

logger = logging.getLogger("loopline.tracking.ingest")

SESSION_IDLE = dt.timedelta(minutes=30)
UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


@dataclass
class IngestResult:
    hits: int = 0
    activities: int = 0
    visitors_created: int = 0
    dropped: int = 0


def _utm(url: str) -> dict:
    try:
        query = urlsplit(url).query
    except ValueError:
        return {}
    return {k: v[:200] for k, v in parse_qsl(query) if k in UTM_KEYS}


def ingest_pending(limit: int = 1000) -> IngestResult:
    """Ingest up to ``limit`` staged requests (rows of up to 50 hits) from the table and from each spool file. hits == 0: nothing pending."""
    started = time.perf_counter()
    result = _ingest_table(limit)
    for path in spool.spool_files():
        r = _ingest_spool_file(path, limit)
        result.hits += r.hits
        result.activities += r.activities
        result.visitors_created += r.visitors_created
        result.dropped += r.dropped
    if result.hits:
        IngestLog.objects.create(hits=result.hits, activities=result.activities,
                                 ms=int((time.perf_counter() - started) * 1000))
    return result


def _parse(rows, result: IngestResult) -> list:
    parsed = []
    for _row_id, bu_id, cookie, received, _n, payload in rows:
        try:
            data = json.loads(payload)
            cookie_uuid = uuid.UUID(cookie)
            hits = data["h"]
            base = {"ip": data.get("ip") or "", "ua": data.get("ua") or ""}
            for hit in hits:
                when = dt.datetime.fromtimestamp(float(hit.get("ts") or received), tz=dt.UTC)
                parsed.append((bu_id, cookie_uuid, when, {**base, **hit}))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, OSError):
            result.dropped += 1
            continue
    return parsed


def _ingest_table(limit: int) -> IngestResult:
    result = IngestResult()
    with transaction.atomic():
        qs = TrackingHit.objects.order_by("id")
        if connection.vendor == "postgresql":
            qs = qs.select_for_update(skip_locked=True)
        rows = list(qs.values_list("id", "bu_id", "cookie", "received_at", "hits", "payload")[:limit])
        if not rows:
            return result
        result.hits = sum(r[4] for r in rows)
        _ingest(_parse(rows, result), result)
        ids = [r[0] for r in rows]
        for i in range(0, len(ids), 900):
            TrackingHit.objects.filter(id__in=ids[i:i + 900]).delete()
    return result


def _ingest_spool_file(path, limit: int) -> IngestResult:
    result = IngestResult()
    name = path.name
    alive = spool.writer_alive(path)  # checked before reading: a dead writer writes nothing more
    reader = spool.open_reader(path)
    try:
        with transaction.atomic():
            mark, _ = SpoolWatermark.objects.select_for_update().get_or_create(name=name)
            rows = reader.execute("SELECT id, bu_id, cookie, received_at, hits, payload FROM hits WHERE id > ? "
                                  "ORDER BY id LIMIT ?", (mark.last_id, limit)).fetchall()
            if rows:
                result.hits = sum(r[4] for r in rows)
                _ingest(_parse(rows, result), result)
                mark.last_id = rows[-1][0]
                mark.save(update_fields=["last_id"])
        if rows:
            reader.execute("DELETE FROM hits WHERE id <= ?", (mark.last_id,))
        elif not alive:
            reader.close()
            spool.remove(path)
            SpoolWatermark.objects.filter(name=name).delete()
    finally:
        reader.close()
    return result


def pending_count() -> int:
    from django.db.models import Sum

    return (TrackingHit.objects.aggregate(n=Sum("hits"))["n"] or 0) + spool.pending_count()


def ingest_all(limit: int = 1000) -> IngestResult:
    total = IngestResult()
    while True:
        r = ingest_pending(limit)
        if not r.hits:
            return total
        total.hits += r.hits
        total.activities += r.activities
        total.visitors_created += r.visitors_created
        total.dropped += r.dropped


def _ingest(parsed: list, result: IngestResult) -> None:
    by_bu: dict[int, set[uuid.UUID]] = defaultdict(set)
    for bu_id, cookie, _, _ in parsed:
        by_bu[bu_id].add(cookie)
    visitors: dict[tuple[int, uuid.UUID], Visitor] = {}
    first_hit: dict[tuple[int, uuid.UUID], dict] = {}
    for bu_id, cookie, _, data in parsed:
        first_hit.setdefault((bu_id, cookie), data)
    valid_campaigns: set[tuple[int, int]] = set()
    campaign_ids = {d["c"] for _, _, _, d in parsed if "c" in d}
    if campaign_ids:
        valid_campaigns = set(Campaign.objects.filter(pk__in=campaign_ids).values_list("bu_id", "pk"))
    for bu_id, cookies in by_bu.items():
        cookie_list = list(cookies)
        for i in range(0, len(cookie_list), 900):
            for v in Visitor.objects.filter(bu_id=bu_id, cookie_id__in=cookie_list[i:i + 900]):
                visitors[(bu_id, v.cookie_id)] = v
    new = []
    for key, data in first_hit.items():
        if key in visitors:
            continue
        camp = data.get("c")
        new.append(Visitor(
            bu_id=key[0], cookie_id=key[1], ip=data.get("ip") or None, user_agent=data.get("ua", "")[:500],
            campaign_id=camp if (key[0], camp) in valid_campaigns else None,
        ))
    if new:
        Visitor.objects.bulk_create(new, batch_size=500, ignore_conflicts=True)
        result.visitors_created = len(new)
        for bu_id in {v.bu_id for v in new}:
            new_cookies = [v.cookie_id for v in new if v.bu_id == bu_id]
            for i in range(0, len(new_cookies), 900):
                for v in Visitor.objects.filter(bu_id=bu_id, cookie_id__in=new_cookies[i:i + 900]):
                    visitors[(bu_id, v.cookie_id)] = v
        fresh = {(v.bu_id, v.cookie_id) for v in new}
    else:
        fresh = set()

    # Identification hits (a tracked email click landed on the site with a signed identify token) come first.
    for bu_id, cookie, _, data in parsed:
        if data.get("t") == 2:
            tok = tokens.read(data.get("tk", ""), "identify")
            visitor = visitors.get((bu_id, cookie))
            if tok and tok.bu_id == bu_id and visitor is not None and time.time() - tok.issued < 86400:
                from .services import identify_visitor

                prospect = Prospect.objects.filter(pk=tok.prospect_id, bu_id=bu_id).first()
                if prospect is not None:
                    identify_visitor(bu_id, visitor.cookie_id.hex, prospect)
                    visitor.prospect_id = prospect.pk

    activities: list[Activity] = []
    touched: dict[int, Visitor] = {}
    parsed.sort(key=lambda p: p[2])
    last_seen: dict[int, dt.datetime | None] = {}
    for bu_id, cookie, when, data in parsed:
        if data.get("t") != 1:
            continue
        visitor = visitors.get((bu_id, cookie))
        if visitor is None:
            result.dropped += 1
            continue
        if visitor.pk not in last_seen:
            # A visitor created by a form or a click before its first page view was ingested has no visit yet.
            known = (bu_id, cookie) not in fresh and visitor.page_views > 0
            last_seen[visitor.pk] = visitor.last_seen_at if known else None
        previous = last_seen[visitor.pk]
        url = data.get("u", "")
        camp = data.get("c")
        campaign_id = camp if (bu_id, camp) in valid_campaigns else None
        utm = _utm(url)
        extra = {k: v for k, v in (("referrer", data.get("r")), ("ip", data.get("ip"))) if v}
        if previous is None or when - previous > SESSION_IDLE:
            activities.append(Activity(
                bu_id=bu_id, prospect_id=visitor.prospect_id, visitor_id=visitor.pk, type=ActivityType.VISIT,
                occurred_at=when, title=data.get("ti", "")[:255] or "Visit", url=url[:2000],
                campaign_id=campaign_id, data={**extra, **utm, "ua": data.get("ua", "")[:300]},
            ))
        activities.append(Activity(
            bu_id=bu_id, prospect_id=visitor.prospect_id, visitor_id=visitor.pk, type=ActivityType.PAGE_VIEW,
            occurred_at=when, title=data.get("ti", "")[:255], url=url[:2000], campaign_id=campaign_id,
            data={**extra, **utm} if (extra or utm) else {},
        ))
        last_seen[visitor.pk] = when if previous is None or when > previous else previous
        visitor.page_views += 1
        visitor.last_seen_at = max(visitor.last_seen_at, when) if visitor.last_seen_at else when
        if data.get("ip"):
            visitor.ip = data["ip"]
        if data.get("ua"):
            visitor.user_agent = data["ua"][:500]
        touched[visitor.pk] = visitor
    if activities:
        Activity.objects.bulk_create(activities, batch_size=1000)
        result.activities = len(activities)
    if touched:
        Visitor.objects.bulk_update(list(touched.values()), ["page_views", "last_seen_at", "ip", "user_agent"],
                                    batch_size=500)
    # Known prospects: last activity time, and the activity events scoring/automation/alerts listen to.
    latest: dict[int, dt.datetime] = {}
    for a in activities:
        if a.prospect_id and (a.prospect_id not in latest or a.occurred_at > latest[a.prospect_id]):
            latest[a.prospect_id] = a.occurred_at
    for prospect_id, when in latest.items():
        Prospect.objects.filter(pk=prospect_id).filter(
            Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=when)).update(last_activity_at=when)
    for a in activities:
        if a.prospect_id:
            events.publish(events.ActivityRecorded(
                bu_id=a.bu_id, activity_id=a.pk, prospect_id=a.prospect_id, visitor_id=a.visitor_id, type=a.type,
                data=a.data))


def run_forever(*, idle_sleep: float = 0.25, limit: int = 1000, stop=None) -> None:  # pragma: no cover - a loop
    """The ingester process (``loopline tracking-ingest``)."""
    from django.db import close_old_connections

    while stop is None or not stop.is_set():
        close_old_connections()
        try:
            r = ingest_pending(limit)
        except Exception:
            logger.exception("ingest batch failed; retrying")
            time.sleep(2)
            continue
        if r.hits:
            logger.info("ingested", extra={"hits": r.hits, "activities": r.activities})
        else:
            time.sleep(idle_sleep)
