"""Set-based attribution ([M34]) and the per-day ROI aggregates ([M35]).

Every model is computed by one INSERT ... SELECT over (opportunity, contact role, membership): a touch is a campaign
membership of one of the opportunity's contacts added before the opportunity closed (``added_at < close_cutoff``; open
opportunities count every membership). Per opportunity and campaign the earliest and latest touch are kept; then

* first touch: the campaign with the earliest touch gets weight 1 (ties: lowest campaign id),
* last touch: the campaign with the latest touch gets weight 1 (ties: highest campaign id),
* even split: every touched campaign gets 1 / number of touched campaigns,
* no touch at all: one row per model with campaign NULL ("unattributed"), so totals always match the raw data.

The SQL is plain SQL-2003 (CTE + window functions) and runs unchanged on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from django.db import connection, transaction

from .models import (
    Attribution,
    AttributionDaily,
    AttributionModel,
    CampaignMember,
    Opportunity,
    OpportunityContactRole,
)

_T = {
    "opp": Opportunity._meta.db_table,
    "role": OpportunityContactRole._meta.db_table,
    "member": CampaignMember._meta.db_table,
    "attr": Attribution._meta.db_table,
    "daily": AttributionDaily._meta.db_table,
}
FIRST, LAST, EVEN = AttributionModel.FIRST_TOUCH.value, AttributionModel.LAST_TOUCH.value, AttributionModel.EVEN_SPLIT.value

_CHUNK = 500


def _attribution_sql(opp_filter: str) -> str:
    t = _T
    return f"""
WITH touches AS (
    SELECT o.id AS opp_id, m.campaign_id AS campaign_id, MIN(m.added_at) AS first_at, MAX(m.added_at) AS last_at,
           o.created_day AS created_day, CASE WHEN o.is_won = %s THEN o.close_date END AS won_day,
           o.amount AS amount, o.currency AS currency
    FROM {t['opp']} o
    JOIN {t['role']} r ON r.opportunity_id = o.id
    JOIN {t['member']} m ON m.prospect_id = r.prospect_id
    WHERE o.bu_id = %s {opp_filter} AND r.prospect_id IS NOT NULL
      AND (o.close_cutoff IS NULL OR m.added_at < o.close_cutoff)
    GROUP BY o.id, m.campaign_id, o.created_day, o.close_date, o.is_won, o.amount, o.currency
), ranked AS (
    SELECT opp_id, campaign_id, first_at, last_at, created_day, won_day, amount, currency,
           ROW_NUMBER() OVER (PARTITION BY opp_id ORDER BY first_at, campaign_id) AS rn_first,
           ROW_NUMBER() OVER (PARTITION BY opp_id ORDER BY last_at DESC, campaign_id DESC) AS rn_last,
           COUNT(*) OVER (PARTITION BY opp_id) AS n
    FROM touches
)
INSERT INTO {t['attr']} (bu_id, opportunity_id, campaign_id, model, weight, touched_at, created_day, won_day,
                         amount, currency)
SELECT %s, opp_id, campaign_id, {FIRST}, 1.0, first_at, created_day, won_day, amount, currency FROM ranked WHERE rn_first = 1
UNION ALL
SELECT %s, opp_id, campaign_id, {LAST}, 1.0, last_at, created_day, won_day, amount, currency FROM ranked WHERE rn_last = 1
UNION ALL
SELECT %s, opp_id, campaign_id, {EVEN}, 1.0 / n, first_at, created_day, won_day, amount, currency FROM ranked
UNION ALL
SELECT %s, o.id, NULL, mdl.model, 1.0, NULL, o.created_day, CASE WHEN o.is_won = %s THEN o.close_date END,
       o.amount, o.currency
FROM {t['opp']} o CROSS JOIN (SELECT {FIRST} AS model UNION ALL SELECT {LAST} UNION ALL SELECT {EVEN}) mdl
WHERE o.bu_id = %s {opp_filter} AND NOT EXISTS (SELECT 1 FROM touches tt WHERE tt.opp_id = o.id)
"""


def _daily_select(where: str, sign: str = "") -> str:
    """Aggregate attribution rows into (campaign, model, day, currency) figures. Opportunities and pipeline count on the
    created day, wins and won revenue on the close day; negative or missing amounts count as 0 (and are counted).
    Reads only the attribution rows (they carry the opportunity values they were computed with), so the figures of
    rows about to be replaced can be subtracted exactly (``sign="-"``)."""
    t = _T
    amount = "CASE WHEN x.amount > 0 THEN x.amount ELSE 0 END"
    return f"""
SELECT x.bu_id, x.campaign_key, x.model, x.day, x.currency,
       {sign}SUM(x.created * x.weight), {sign}SUM(x.created * x.weight * {amount}),
       {sign}SUM(x.won * x.weight), {sign}SUM(x.won * x.weight * {amount}),
       {sign}SUM(CASE WHEN x.created = 1 AND x.amount IS NULL THEN 1 ELSE 0 END),
       {sign}SUM(CASE WHEN x.created = 1 AND x.amount < 0 THEN 1 ELSE 0 END)
FROM (
    SELECT a.bu_id, COALESCE(a.campaign_id, 0) AS campaign_key, a.model, a.weight, a.amount, a.currency,
           k.created, k.won, CASE WHEN k.created = 1 THEN a.created_day ELSE a.won_day END AS day
    FROM {t['attr']} a
    CROSS JOIN (SELECT 1 AS created, 0 AS won UNION ALL SELECT 0, 1) k
    WHERE a.bu_id = %s {where}
) x
WHERE x.day IS NOT NULL
GROUP BY x.bu_id, x.campaign_key, x.model, x.day, x.currency
"""


_DAILY_COLUMNS = ("bu_id, campaign_key, model, day, currency, opportunities, pipeline, wins, won_amount, "
                  "missing_amounts, negative_amounts")


def _attribution_params(bu_id: int, ids: Sequence[int]) -> list:
    return [True, bu_id, *ids, bu_id, bu_id, bu_id, bu_id, True, bu_id, *ids]


def _placeholders(n: int) -> str:
    return ", ".join(["%s"] * n)


def recompute(bu_id: int, opportunity_ids: Iterable[int] | None = None) -> dict:
    """Recompute all three models for the BU (``opportunity_ids`` None) or for some opportunities, and bring the daily
    aggregates in line. Returns timings and row counts."""
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        if opportunity_ids is None:
            if connection.vendor == "postgresql":  # room to hash and sort a million touches in memory
                cursor.execute("SET LOCAL work_mem = '256MB'")
            cursor.execute(f"DELETE FROM {_T['attr']} WHERE bu_id = %s", [bu_id])
            cursor.execute(_attribution_sql(""), _attribution_params(bu_id, []))
            rows = cursor.rowcount
            if rows < 0:  # SQLite does not count rows of a CTE insert
                rows = Attribution.objects.filter(bu_id=bu_id).count()
            cursor.execute(f"DELETE FROM {_T['daily']} WHERE bu_id = %s", [bu_id])
            cursor.execute(f"INSERT INTO {_T['daily']} ({_DAILY_COLUMNS}) " + _daily_select(""), [bu_id])
        else:
            ids = sorted(set(opportunity_ids))
            rows = 0
            for start in range(0, len(ids), _CHUNK):
                rows += _recompute_some(cursor, bu_id, ids[start:start + _CHUNK])
    return {"seconds": time.perf_counter() - started, "rows": rows}


_SUMMED = ("opportunities", "pipeline", "wins", "won_amount", "missing_amounts", "negative_amounts")


def _apply_daily(cursor, bu_id: int, ids: Sequence[int], sign: str) -> None:
    """Add (or subtract) these opportunities' attribution rows to the daily figures, one upsert statement."""
    table = _T["daily"]
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in _SUMMED)
    where = f"AND a.opportunity_id IN ({_placeholders(len(ids))})"
    cursor.execute(f"INSERT INTO {table} ({_DAILY_COLUMNS}) {_daily_select(where, sign)} "
                   f"ON CONFLICT (bu_id, campaign_key, model, day, currency) DO UPDATE SET {updates}", [bu_id, *ids])


def _recompute_some(cursor, bu_id: int, ids: Sequence[int]) -> int:
    """Incremental path, proportional to the batch: subtract what these opportunities contributed, recompute them,
    add the new contributions."""
    in_ids = f"AND o.id IN ({_placeholders(len(ids))})"
    _apply_daily(cursor, bu_id, ids, "-")
    cursor.execute(f"DELETE FROM {_T['attr']} WHERE bu_id = %s AND opportunity_id IN ({_placeholders(len(ids))})",
                   [bu_id, *ids])
    cursor.execute(_attribution_sql(in_ids), _attribution_params(bu_id, ids))
    rows = cursor.rowcount
    _apply_daily(cursor, bu_id, ids, "")
    return rows
