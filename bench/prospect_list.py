#!/usr/bin/env python
"""Benchmark: prospect list, email-prefix search and detail page with many prospects (server time, p95).

    python bench/prospect_list.py --prospects 1000000 --database-url postgres://postgres@127.0.0.1:5432/postgres

Creates a temporary PostgreSQL database (dropped afterwards), fills one business unit with N prospects in SQL
(``INSERT ... SELECT FROM generate_series``), gives a sample of them a timeline and tags, then times the real views
(``prospects:list`` page 1 in the default sort, ``?q=<email prefix>``, ``prospects:detail``) through Django's test
client as a signed-in Marketing user: the time from request to full response inside the server process (middleware,
queries, template rendering). Prints one JSON line: {"prospects", "list_p95_ms", "search_p95_ms", "detail_p95_ms"}.
Target: each p95 <= 300 ms with 1,000,000 prospects.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_environment, log

FIRST = ["Ada", "Grace", "Alan", "Linus", "Margaret", "Edsger", "Barbara", "Donald", "Zoe", "Jose", "Ken", "Radia"]
LAST = ["Lovelace", "Hopper", "Turing", "Torvalds", "Hamilton", "Dijkstra", "Liskov", "Knuth", "Muller", "Garcia"]
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell", "Cyberdyne"]


def _sql_array(items: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + i.replace("'", "''") + "'" for i in items) + "]"


def fill(bu_id: int, count: int, chunk: int = 250_000) -> None:
    """Insert ``count`` prospects in SQL; every NOT NULL column gets its model default unless overridden."""
    from django.db import connection, models

    from loopline.prospects.models import Prospect

    companies, first, last = _sql_array(COMPANIES), _sql_array(FIRST), _sql_array(LAST)
    email = f"'user' || g || '@' || lower(({companies})[1 + g %% 10]) || '.example'"
    overrides = {
        "bu_id": str(bu_id),
        "email": email,
        "email_key": email,
        "first_name": f"({first})[1 + g %% 12]",
        "last_name": f"({last})[1 + (g / 12) %% 10]",
        "company": f"({companies})[1 + g %% 10]",
        "city": "'Paris'",
        "score": "((g %% 997) * 31) %% 250",
        "grade": "(ARRAY['A','B','C','D'])[1 + g %% 4]",
        "created_at": "now() - (g || ' seconds')::interval",
        "updated_at": "now()",
        "last_activity_at": "now() - ((g %% 1000) || ' hours')::interval",
    }
    columns, exprs = [], []
    for f in Prospect._meta.concrete_fields:
        if f.primary_key:
            continue
        columns.append(connection.ops.quote_name(f.column))
        if f.attname in overrides:
            exprs.append(overrides[f.attname])
        elif f.null:
            exprs.append("NULL")
        elif isinstance(f, models.BooleanField):
            exprs.append("false")
        elif isinstance(f, models.IntegerField):
            exprs.append(str(f.get_default() or 0))
        elif isinstance(f, models.JSONField):
            exprs.append("'{}'::jsonb")
        elif isinstance(f, models.DateTimeField):
            exprs.append("now()")
        else:
            exprs.append("'" + str(f.get_default() or "").replace("'", "''") + "'")
    sql = (f"INSERT INTO {Prospect._meta.db_table} ({', '.join(columns)}) "
           f"SELECT {', '.join(exprs)} FROM generate_series(%s, %s) AS g")
    with connection.cursor() as cursor:
        for start in range(1, count + 1, chunk):
            cursor.execute(sql, [start, min(count, start + chunk - 1)])
            log(f"inserted {min(count, start + chunk - 1):,} prospects")
        cursor.execute(f"VACUUM ANALYZE {Prospect._meta.db_table}")


def p95(samples: list[float]) -> float:
    return round(statistics.quantiles(samples, n=20, method="inclusive")[18] * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--prospects", type=int, default=1_000_000)
    parser.add_argument("--database-url", required=True, help="PostgreSQL server URL (a temporary database is created)")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page")
    args = parser.parse_args()
    rnd = random.Random(11)

    with bench_environment(args.database_url, prefix="loopline-bench-list") as vendor:
        from django.db import connection
        from django.test import Client
        from django.urls import reverse

        from loopline.accounts import services as account_services
        from loopline.prospects import services
        from loopline.prospects.models import Activity, ActivityType, Prospect

        bu = account_services.create_business_unit("Bench")
        user = account_services.create_user("marketer@bench.example", password="bench-password-123")
        account_services.set_membership(bu, user, "marketing")
        log(f"{vendor}: filling {args.prospects:,} prospects")
        started = time.perf_counter()
        fill(bu.pk, args.prospects)
        log(f"filled in {time.perf_counter() - started:.0f}s")
        ids = list(Prospect.objects.filter(bu=bu).order_by("?").values_list("id", flat=True)[: args.requests])
        now = __import__("django.utils.timezone", fromlist=["now"]).now()
        Activity.objects.bulk_create([
            Activity(bu=bu, prospect_id=pid, type=rnd.choice([ActivityType.PAGE_VIEW, ActivityType.EMAIL_OPEN]),
                     occurred_at=now, title="Pricing page", url="https://example.com/pricing")
            for pid in ids for _ in range(30)
        ])
        for pid in ids[:10]:
            services.add_tags(Prospect.objects.get(pk=pid), ["VIP", "Webinar"])
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

        client = Client()
        client.force_login(user)
        pages = {
            "list": lambda i: reverse("prospects:list"),
            "search": lambda i: reverse("prospects:list") + f"?q=user{rnd.randint(1, args.prospects)}@",
            "detail": lambda i: reverse("prospects:detail", args=[ids[i % len(ids)]]),
        }
        figures: dict[str, float] = {}
        for name, url in pages.items():
            for i in range(3):  # warm-up
                assert client.get(url(i)).status_code == 200
            samples = []
            for i in range(args.requests):
                t0 = time.perf_counter()
                response = client.get(url(i))
                samples.append(time.perf_counter() - t0)
                assert response.status_code == 200, (name, response.status_code)
            figures[f"{name}_p95_ms"] = p95(samples)
            log(f"{name}: p50 {statistics.median(samples) * 1000:.1f} ms, p95 {figures[f'{name}_p95_ms']} ms")
    print(json.dumps({"prospects": args.prospects, **figures}))


if __name__ == "__main__":
    main()
