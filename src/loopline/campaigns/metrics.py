"""Daily counters behind the lifecycle and dashboard reports ([M36]).

Handlers bump them as things happen (``bump``); ``rebuild`` recomputes them set-based from the prospect and visitor
tables (scheduled, and after bulk loads), which also corrects anything the incremental path cannot see (a source
campaign set after creation, permanent deletes, scores changed without an event). Days are UTC dates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, F, Sum
from django.db.models.functions import Coalesce, TruncDate

from .models import DailyMetric

STAGE_FIELDS = {"mql": "mql_at", "sql": "sql_at", "opportunity": "opportunity_at", "won": "won_at"}
STAGE_ORDER = ("prospect", "mql", "sql", "opportunity", "won")
PREVIOUS_FIELD = {"mql": "created_at", "sql": "mql_at", "opportunity": "sql_at", "won": "opportunity_at"}

Key = tuple[str, dt.date, int]  # (metric, day, campaign_key)


def utc_day(value: dt.datetime) -> dt.date:
    return value.astimezone(dt.UTC).date() if value.tzinfo else value.date()


def bump(bu_id: int, deltas: Mapping[Key, tuple[int, float]]) -> None:
    """Add (count, seconds) to each (metric, day, campaign) counter, creating it if needed (one upsert statement)."""
    if not deltas:
        return
    table = DailyMetric._meta.db_table
    sql = (f"INSERT INTO {table} (bu_id, metric, day, campaign_key, count, seconds) VALUES (%s, %s, %s, %s, %s, %s) "
           f"ON CONFLICT (bu_id, metric, day, campaign_key) DO UPDATE SET count = {table}.count + excluded.count, "
           f"seconds = {table}.seconds + excluded.seconds")
    with connection.cursor() as cursor:
        cursor.executemany(sql, [(bu_id, m, d, c, n, s) for (m, d, c), (n, s) in sorted(deltas.items())])


@transaction.atomic
def rebuild(bu_id: int) -> int:
    """Recompute every counter of the BU from the raw tables; returns the number of counter rows."""
    from loopline.prospects.models import Prospect, Visitor

    rows: list[DailyMetric] = []
    prospects = Prospect.objects.filter(bu_id=bu_id)
    r: Any
    for r in (prospects.annotate(day=TruncDate("created_at")).values("day", "source_campaign_id")
              .annotate(n=Count("id")).order_by()):
        rows.append(DailyMetric(bu_id=bu_id, metric="prospect", day=r["day"], campaign_key=r["source_campaign_id"] or 0,
                                count=r["n"]))
    for stage, field in STAGE_FIELDS.items():
        previous = PREVIOUS_FIELD[stage]
        qs = (prospects.filter(**{f"{field}__isnull": False}).annotate(day=TruncDate(field)).values("day")
              .annotate(n=Count("id"), spent=Sum(F(field) - Coalesce(F(previous), F(field)))).order_by())
        for r in qs:
            spent = r["spent"]
            rows.append(DailyMetric(bu_id=bu_id, metric=stage, day=r["day"], count=r["n"],
                                    seconds=spent.total_seconds() if spent else 0.0))
    for r in (Visitor.objects.filter(bu_id=bu_id).annotate(day=TruncDate("first_seen_at")).values("day")
              .annotate(n=Count("id")).order_by()):
        rows.append(DailyMetric(bu_id=bu_id, metric="visitor", day=r["day"], count=r["n"]))
    DailyMetric.objects.filter(bu_id=bu_id).delete()
    DailyMetric.objects.bulk_create(rows, batch_size=2000)
    return len(rows)
