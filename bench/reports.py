#!/usr/bin/env python
"""Benchmark: attribution recompute and the report pages at scale ([M34]-[M36]).

    python bench/reports.py --prospects 1000000 --opportunities 100000 \
        --database-url postgres://postgres@127.0.0.1:5432/postgres

Creates a temporary database (dropped afterwards), fills one business unit set-based in SQL (``generate_series`` on
PostgreSQL, a recursive CTE on SQLite): 50 campaigns with costs, N prospects (lifecycle dates, source campaigns, CRM
contact ids), ``--memberships`` campaign memberships (default 5 per prospect), M opportunities (EUR and USD, open, won
and lost, some without an amount) with two contact roles each, and N/2 visitors. Then it times one full recompute of
all three attribution models and the daily aggregates (``attribution_all_models_s``) and the real ROI, lifecycle and
dashboard views through Django's test client as a signed-in Marketing user (server time, p95).

Prints one JSON line: {"prospects", "opportunities", "attribution_all_models_s", "roi_report_p95_ms",
"lifecycle_report_p95_ms", "dashboard_p95_ms"} (plus "memberships"). Targets on PostgreSQL with 1,000,000 prospects,
100,000 opportunities and 5,000,000 memberships: attribution <= 60 s, each p95 <= 500 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_environment, log

CAMPAIGNS = 50
TYPES = ["Webinar", "Email", "Trade show", "Paid search", "Content"]


class Sql:
    """The few expressions that differ between PostgreSQL and SQLite."""

    def __init__(self, vendor: str):
        self.pg = vendor == "postgresql"

    def series(self, table_sql: str, select_sql: str) -> str:
        """``INSERT ... SELECT ... FROM <series of g in [%s, %s]>``."""
        if self.pg:
            return f"{table_sql} {select_sql} FROM generate_series(%s::bigint, %s::bigint) AS s(g)"
        return (f"WITH RECURSIVE s(g) AS (SELECT %s UNION ALL SELECT g + 1 FROM s WHERE g < %s) "
                f"{table_sql} {select_sql} FROM s")

    def ago(self, seconds: str) -> str:
        if self.pg:
            return f"(now() - (({seconds}) * interval '1 second'))"
        return f"strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || ({seconds}) || ' seconds')"

    def day(self, ts: str) -> str:
        return f"(({ts}) AT TIME ZONE 'UTC')::date" if self.pg else f"date({ts})"

    def day_after(self, day: str) -> str:
        return f"(({day}) + 1)::timestamp AT TIME ZONE 'UTC'" if self.pg else f"datetime({day}, '+1 day')"

    def pad(self, prefix: str, expr: str) -> str:
        if self.pg:
            return f"'{prefix}' || lpad(({expr})::text, 17, '0')"
        return f"'{prefix}' || substr('00000000000000000' || ({expr}), -17, 17)"

    def greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})" if self.pg else f"MAX({a}, {b})"

    def true(self) -> str:
        return "true" if self.pg else "1"

    def false(self) -> str:
        return "false" if self.pg else "0"

    def uuid(self) -> str:
        return "gen_random_uuid()" if self.pg else "lower(hex(randomblob(16)))"


def fill(sql: Sql, model, overrides: dict[str, str], count: int, chunk: int = 250_000, label: str = "") -> None:
    """Insert ``count`` rows of ``model``; unlisted columns get NULL or their default."""
    from django.db import connection, models

    columns, exprs = [], []
    for f in model._meta.concrete_fields:
        if f.primary_key:
            continue
        columns.append(connection.ops.quote_name(f.column))
        if f.attname in overrides:
            exprs.append(overrides[f.attname])
        elif f.null:
            exprs.append("NULL")
        elif isinstance(f, models.BooleanField):
            exprs.append(sql.true() if f.get_default() else sql.false())
        elif isinstance(f, models.IntegerField | models.FloatField):
            exprs.append(str(f.get_default() or 0))
        elif isinstance(f, models.JSONField):
            exprs.append("'{}'::jsonb" if sql.pg else "'{}'")
        elif isinstance(f, models.DateTimeField):
            exprs.append(sql.ago("0"))
        else:
            exprs.append("'" + str(f.get_default() or "").replace("'", "''") + "'")
    statement = sql.series(f"INSERT INTO {model._meta.db_table} ({', '.join(columns)})",
                           f"SELECT {', '.join(exprs)}")
    with connection.cursor() as cursor:
        for start in range(1, count + 1, chunk):
            end = min(count, start + chunk - 1)
            cursor.execute(statement, [start, end])
            log(f"{label or model.__name__}: {end:,} rows")


def generate(sql: Sql, bu_id: int, prospects: int, opportunities: int, memberships: int) -> int:
    from django.db import connection

    from loopline.campaigns.models import Campaign, CampaignMember, Opportunity, OpportunityContactRole
    from loopline.prospects.models import Prospect, Visitor

    Campaign.objects.bulk_create([
        Campaign(bu_id=bu_id, name=f"Campaign {i:02d}", type=TYPES[i % len(TYPES)], status="in_progress",
                 actual_cost=None if i % 10 == 9 else 1000 * (1 + i % 7), crm_campaign_id=f"701{i:015d}")
        for i in range(CAMPAIGNS)])
    c0 = Campaign.objects.filter(bu_id=bu_id).order_by("pk").values_list("pk", flat=True).first()
    if sql.pg:  # the generated rows are consistent by construction: skip per-row foreign-key triggers while loading
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")
    year = 365 * 86400
    secs = f"((g * 7919) %% {year})"
    created = sql.ago(secs)

    def later(days: int) -> str:
        return sql.ago(sql.greatest(f"{secs} - {days * 86400}", "0"))

    fill(sql, Prospect, {
        "bu_id": str(bu_id), "email": "'bench' || g || '@example.test'", "email_key": "'bench' || g || '@example.test'",
        "first_name": "'Bench'", "last_name": "'Prospect ' || g", "company": "'Company ' || (g %% 5000)",
        "score": "((g * 31) %% 200)", "grade": "(CASE g %% 4 WHEN 0 THEN 'A' WHEN 1 THEN 'B' WHEN 2 THEN 'C' "
                                               "ELSE 'D' END)",
        "source_campaign_id": f"(CASE WHEN g %% 3 = 0 THEN NULL ELSE {c0} + (g %% {CAMPAIGNS}) END)",
        "created_at": created, "updated_at": created, "last_activity_at": created,
        "mql_at": f"(CASE WHEN g %% 5 = 0 THEN {later(3)} END)",
        "sql_at": f"(CASE WHEN g %% 10 = 0 THEN {later(5)} END)",
        "opportunity_at": f"(CASE WHEN g %% 20 = 0 THEN {later(8)} END)",
        "won_at": f"(CASE WHEN g %% 40 = 0 THEN {later(10)} END)",
        "crm_contact_id": sql.pad("C", "g"),
    }, prospects, label="prospects")
    p0 = Prospect.objects.filter(bu_id=bu_id).order_by("pk").values_list("pk", flat=True).first()
    per_prospect = max(1, min(memberships // max(prospects, 1), 40))
    for k in range(per_prospect):
        added = sql.ago(sql.greatest(f"{secs} - {k * 2 * 86400}", "0"))
        fill(sql, CampaignMember, {
            "bu_id": str(bu_id), "campaign_id": f"({c0} + ((g + {k * 11}) %% {CAMPAIGNS}))",
            "prospect_id": f"({p0} + g - 1)", "status": "'Responded'", "has_responded": sql.true(),
            "first_responded_at": added, "added_at": added, "source": "'crm'",
        }, prospects, label=f"memberships round {k + 1}/{per_prospect}")
    osecs = f"((g * 104729) %% {360 * 86400})"
    closed = "(g %% 5 < 3)"
    close_day = sql.day(sql.ago(sql.greatest(f"{osecs} - {20 * 86400}", "0")))
    fill(sql, Opportunity, {
        "bu_id": str(bu_id), "crm_id": sql.pad("O", "g"), "name": "'Deal ' || g",
        "amount": "(CASE WHEN g %% 97 = 0 THEN NULL ELSE ((g * 7919) %% 50000) + 100 END)",
        "currency": "(CASE WHEN g %% 10 = 0 THEN 'USD' ELSE 'EUR' END)",
        "stage": "(CASE WHEN g %% 5 < 2 THEN 'Closed Won' WHEN g %% 5 = 2 THEN 'Closed Lost' ELSE 'Prospecting' END)",
        "is_won": "(g %% 5 < 2)", "is_closed": closed,
        "crm_created_at": sql.ago(osecs), "created_day": sql.day(sql.ago(osecs)),
        "close_date": f"(CASE WHEN {closed} THEN {close_day} END)",
        "close_cutoff": f"(CASE WHEN {closed} THEN {sql.day_after(close_day)} END)",
        "crm_campaign_id": "''", "synced_at": sql.ago("0"),
    }, opportunities, label="opportunities")
    o0 = Opportunity.objects.filter(bu_id=bu_id).order_by("pk").values_list("pk", flat=True).first()
    for r, step in enumerate((7, 13)):
        idx = f"(((g * {step}) + {r}) %% {prospects})"
        fill(sql, OpportunityContactRole, {
            "bu_id": str(bu_id), "opportunity_id": f"({o0} + g - 1)", "crm_contact_id": sql.pad("C", f"{idx} + 1"),
            "prospect_id": f"({p0} + {idx})", "role": "'Decision Maker'", "is_primary": sql.true() if r == 0 else
            sql.false(), "announced_created": sql.true(),
        }, opportunities, label=f"contact roles {r + 1}/2")
    fill(sql, Visitor, {"bu_id": str(bu_id), "cookie_id": sql.uuid(), "first_seen_at": created,
                        "last_seen_at": created}, max(prospects // 2, 1), label="visitors")
    with connection.cursor() as cursor:
        if sql.pg:
            cursor.execute("SET session_replication_role = DEFAULT")
        cursor.execute("ANALYZE")
    return per_prospect * prospects


def p95(samples: list[float]) -> float:
    return round(statistics.quantiles(samples, n=20, method="inclusive")[18] * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[1])
    parser.add_argument("--prospects", type=int, default=1_000_000)
    parser.add_argument("--opportunities", type=int, default=100_000)
    parser.add_argument("--memberships", type=int, default=None, help="default: 5 per prospect")
    parser.add_argument("--database-url", default=None, help="PostgreSQL server URL (a temporary database is created); "
                                                             "SQLite when omitted")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    args = parser.parse_args()
    memberships = args.memberships if args.memberships is not None else 5 * args.prospects

    with bench_environment(args.database_url, prefix="loopline-bench-reports") as vendor:
        from django.db import connection
        from django.test import Client

        from loopline.accounts import services as account_services
        from loopline.campaigns import metrics, services

        bu = account_services.create_business_unit("Bench")
        user = account_services.create_user("marketer@bench.example", password="bench-password-123")
        account_services.set_membership(bu, user, "marketing")
        log(f"{vendor}: generating {args.prospects:,} prospects, {args.opportunities:,} opportunities")
        started = time.perf_counter()
        made = generate(Sql(vendor), bu.pk, args.prospects, args.opportunities, memberships)
        log(f"generated in {time.perf_counter() - started:.0f}s ({made:,} memberships)")

        started = time.perf_counter()
        result = services.recompute_attribution(bu)
        attribution_s = round(time.perf_counter() - started, 2)
        log(f"attribution, all models: {attribution_s}s ({result['rows']:,} rows)")
        started = time.perf_counter()
        metrics.rebuild(bu.pk)
        log(f"daily counters rebuilt in {time.perf_counter() - started:.1f}s")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

        client = Client()
        client.force_login(user)
        pages = {
            "roi_report": ["/reports/roi/?period=365d&model=even", "/reports/roi/?period=90d&model=first",
                           "/reports/roi/?period=this_year&model=last&currency=USD"],
            "lifecycle_report": ["/reports/lifecycle/?period=365d", "/reports/lifecycle/?period=90d",
                                 "/reports/lifecycle/?period=30d"],
            "dashboard": ["/reports/?period=30d", "/reports/?period=90d", "/reports/?period=365d"],
        }
        figures: dict[str, float] = {}
        for name, urls in pages.items():
            for url in urls:  # warm-up
                response = client.get(url)
                assert response.status_code == 200, (url, response.status_code)
            samples = []
            for i in range(args.requests):
                t0 = time.perf_counter()
                response = client.get(urls[i % len(urls)])
                samples.append(time.perf_counter() - t0)
                assert response.status_code == 200, (name, response.status_code)
            figures[f"{name}_p95_ms"] = p95(samples)
            log(f"{name}: p50 {statistics.median(samples) * 1000:.1f} ms, p95 {figures[f'{name}_p95_ms']} ms")
    print(json.dumps({"prospects": args.prospects, "opportunities": args.opportunities, "memberships": made,
                      "attribution_all_models_s": attribution_s, **figures}))


if __name__ == "__main__":
    main()
