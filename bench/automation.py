#!/usr/bin/env python
"""Benchmark: dynamic lists, incremental membership and automation rules at scale (plus scoring and programs).

    python bench/automation.py --prospects 1000000 --database-url postgres://postgres@127.0.0.1:5432/postgres

Creates a temporary database (PostgreSQL, dropped afterwards; or a SQLite file), fills one business unit with N
prospects and N x ``--activities-per-prospect`` activities (default 20) in set-based SQL (``generate_series`` on
PostgreSQL, a recursive CTE on SQLite), then measures:

* ``dynamic_list_refresh_s``: the first full refresh (build) of a dynamic list with three criteria — a field
  (industry is Software), a score threshold (score >= 100) and an activity in the last 30 days (a page view);
* ``incremental_update_p95_ms``: after one prospect changes, the work the change triggers (re-evaluating five
  dynamic lists for that prospect and updating membership, through ``services.prospects_changed`` as the event
  subscriber does), p95 over 200 prospects;
* ``rule_eval_p95_ms``: the same with ten active automation rules as well (a few of them match and act), p95.

``rescoring_s`` / ``alert_latency_p95_ms`` come from ``bench/_automation_scoring.py`` and ``program_step_s`` from
``bench/_automation_programs.py`` (their ``measure()``), run on the same database; null when a part is missing.
Prints one JSON line. Targets (PostgreSQL, 1,000,000 prospects, 20,000,000 activities): refresh <= 5 s,
incremental p95 <= 20 ms, rule evaluation p95 <= 50 ms.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_environment, log

INDUSTRIES = ["Software", "Retail", "Banking", "Health", "Education", "Energy", "Media", "Travel", "Food", "Legal"]
ACTIVITY_TYPES = [1, 1, 1, 2, 13, 14, 4, 1, 13, 2]  # mostly page views and opens


def _series(vendor: str) -> str:
    if vendor == "postgresql":
        return "generate_series(%s, %s) AS s(g)"
    return "(WITH RECURSIVE s(g) AS (SELECT %s UNION ALL SELECT g + 1 FROM s WHERE g < %s) SELECT g FROM s) AS s"


def _insert(model, overrides: dict[str, str], vendor: str, count: int, chunk: int, label: str) -> None:
    """INSERT ... SELECT over a number series; every column not overridden gets its model default."""
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
            exprs.append("false" if vendor == "postgresql" else "0")
        elif isinstance(f, models.IntegerField):
            exprs.append(str(f.get_default() or 0))
        elif isinstance(f, models.JSONField):
            exprs.append("'{}'::jsonb" if vendor == "postgresql" else "'{}'")
        elif isinstance(f, models.DateTimeField):
            exprs.append("now()" if vendor == "postgresql" else "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')")
        else:
            exprs.append("'" + str(f.get_default() or "").replace("'", "''") + "'")
    sql = f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) SELECT {', '.join(exprs)} FROM {_series(vendor)}"
    with connection.cursor() as cursor:
        for start in range(1, count + 1, chunk):
            cursor.execute(sql, [start, min(count, start + chunk - 1)])
            log(f"  {min(count, start + chunk - 1):,} {label}")


def fill(bu_id: int, prospects: int, per_prospect: int, vendor: str) -> tuple[int, int]:
    """Prospects and activities; returns the prospects' id range."""
    from django.db import connection

    from loopline.prospects.models import Activity, Prospect

    pg = vendor == "postgresql"
    industries = "(ARRAY[" + ", ".join(f"'{i}'" for i in INDUSTRIES) + "])[1 + g %% 10]" if pg else \
        "CASE g %% 10 " + " ".join(f"WHEN {n} THEN '{i}'" for n, i in enumerate(INDUSTRIES)) + " END"
    email = "'user' || g || '@bench.example'"
    now = "now()" if pg else "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"
    _insert(Prospect, {
        "bu_id": str(bu_id), "email": email, "email_key": email, "industry": industries,
        "company": "'Company ' || (g %% 5000)", "score": "((g %% 997) * 31) %% 250",
        "grade": "'D'", "created_at": now, "updated_at": now,
    }, vendor, prospects, 250_000, "prospects")
    first, last = (Prospect.objects.filter(bu_id=bu_id).order_by("pk").values_list("pk", flat=True).first(),
                   Prospect.objects.filter(bu_id=bu_id).order_by("-pk").values_list("pk", flat=True).first())
    assert first is not None and last is not None
    total = prospects * per_prospect
    if total:
        types = "(ARRAY[" + ", ".join(map(str, ACTIVITY_TYPES)) + "])[1 + (g / 7) %% 10]" if pg else \
            "CASE (g / 7) %% 10 " + " ".join(f"WHEN {n} THEN {t}" for n, t in enumerate(ACTIVITY_TYPES)) + " END"
        # Spread over the last 180 days: about a sixth of the activities fall in the last 30 days.
        when = ("now() - (((g::bigint * 7919) %% 4320) || ' hours')::interval" if pg else
                "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || ((g * 7919) %% 4320) || ' hours')")
        _insert(Activity, {
            "bu_id": str(bu_id), "prospect_id": f"{first} + (g %% {prospects})", "type": types,
            "occurred_at": when, "url": "'https://bench.example/page'",
        }, vendor, total, 1_000_000, "activities")
    with connection.cursor() as cursor:
        if pg:
            cursor.execute(f"VACUUM ANALYZE {Prospect._meta.db_table}")
            cursor.execute(f"VACUUM ANALYZE {Activity._meta.db_table}")
        else:
            cursor.execute("ANALYZE")
    return first, last


def p95(samples: list[float]) -> float:
    return round(statistics.quantiles(samples, n=20, method="inclusive")[18] * 1000, 2)


def _merge(part: str, database_url: str | None, prospects: int, keys: tuple[str, ...]) -> dict:
    try:
        module = importlib.import_module(part)
    except ImportError:
        log(f"{part} missing: {', '.join(keys)} = null")
        return dict.fromkeys(keys)
    try:
        figures = module.measure(database_url, prospects)
    except Exception as exc:  # a broken part must not hide the others' figures
        log(f"{part} failed: {exc!r}")
        return dict.fromkeys(keys)
    return {k: figures.get(k) for k in keys}


def _measure_lists_and_rules(prospects: int, per_prospect: int, samples: int) -> dict:
    from django.db import connection
    from django.utils import timezone

    from loopline.accounts import services as account_services
    from loopline.accounts.access import Access
    from loopline.automation import services
    from loopline.automation.models import AutomationRule, ProspectList
    from loopline.prospects.models import Prospect

    vendor = connection.vendor
    bu = account_services.create_business_unit(f"Automation bench {time.time_ns()}")
    user = account_services.create_user(f"automation-{time.time_ns()}@bench.example")
    account_services.set_membership(bu, user, "marketing")
    access = Access.for_user(user, bu)
    log(f"{vendor}: filling {prospects:,} prospects and {prospects * per_prospect:,} activities")
    t0 = time.perf_counter()
    first, last = fill(bu.pk, prospects, per_prospect, vendor)
    log(f"filled in {time.perf_counter() - t0:.0f}s")

    three = {"match": "all", "rules": [
        {"field": "industry", "op": "equals", "value": "Software"},
        {"field": "score", "op": "gte", "value": 100},
        {"field": "activity", "op": "has", "value": {"type": 1, "days": 30}},
    ]}
    pl = ProspectList.objects.create(bu=bu, name="Three criteria", kind=ProspectList.Kind.DYNAMIC, criteria=three)
    pl.bu = bu
    t0 = time.perf_counter()
    added, _ = services.refresh_list(pl)
    refresh_s = time.perf_counter() - t0
    log(f"dynamic list built: {added:,} members in {refresh_s:.2f}s")
    t0 = time.perf_counter()
    services.refresh_list(pl)
    log(f"steady-state refresh (nothing changed) in {time.perf_counter() - t0:.2f}s")
    others = [
        {"match": "all", "rules": [{"field": "score", "op": "gte", "value": 200}]},
        {"match": "any", "rules": [{"field": "industry", "op": "in", "value": ["Retail", "Food"]},
                                   {"field": "company", "op": "starts_with", "value": "Company 12"}]},
        {"match": "all", "rules": [{"field": "grade", "op": "at_least", "value": "B"}]},
        {"match": "all", "rules": [{"field": "activity", "op": "has", "value": {"type": 14, "days": 7}},
                                   {"field": "opted_out", "op": "is_false"}]},
    ]
    for i, tree in enumerate(others):
        extra = ProspectList.objects.create(bu=bu, name=f"List {i}", kind=ProspectList.Kind.DYNAMIC, criteria=tree)
        extra.bu = bu
        services.refresh_list(extra)
    rnd = random.Random(7)
    ids = [rnd.randint(first, last) for _ in range(samples)]

    def change_and_time(pid: int) -> float:
        # The change itself (not timed), then the incremental work it triggers (timed): what the ProspectChanged
        # subscriber does — after the commit, lists and rules for the prospect, and another round if a rule's action
        # changed the prospect again.
        Prospect.objects.filter(pk=pid).update(industry=rnd.choice(INDUSTRIES), score=rnd.randint(0, 249),
                                               updated_at=timezone.now())
        started = time.perf_counter()
        services.prospects_changed(bu.pk, [pid])  # autocommit: the on-commit flush runs at once
        return time.perf_counter() - started

    for pid in ids[:10]:
        change_and_time(pid)  # warm-up
    incremental = [change_and_time(pid) for pid in ids]
    log(f"incremental membership update p95 {p95(incremental)} ms")

    rule_trees = [
        {"match": "all", "rules": [{"field": "score", "op": "gte", "value": 240}]},
        {"match": "all", "rules": [{"field": "industry", "op": "equals", "value": "Legal"},
                                   {"field": "score", "op": "gte", "value": 150}]},
        {"match": "all", "rules": [{"field": "activity", "op": "has", "value": {"type": 4, "days": 30}}]},
        {"match": "all", "rules": [{"field": "list", "op": "member", "value": pl.pk}]},
        {"match": "any", "rules": [{"field": "tag", "op": "has", "value": "vip"},
                                   {"field": "grade", "op": "equals", "value": "A+"}]},
        {"match": "all", "rules": [{"field": "activity", "op": "has",
                                    "value": {"type": 13, "days": 30, "min_count": 3}}]},
        {"match": "all", "rules": [{"field": "company", "op": "contains", "value": "99"}]},
        {"match": "all", "rules": [{"field": "last_activity_at", "op": "not_within_days", "value": 90}]},
        {"match": "all", "rules": [{"field": "crm_id", "op": "is_not_empty"}]},
        {"match": "all", "rules": [{"field": "employees", "op": "gt", "value": 1000}]},
    ]
    for i, tree in enumerate(rule_trees):
        rule = services.save_rule(access, {"name": f"Rule {i}", "kind": "automation", "criteria": tree,
                                           "actions": [{"type": "adjust_score", "points": 1}], "repeat": True,
                                           "repeat_after_days": 1})
        AutomationRule.objects.filter(pk=rule.pk).update(status=AutomationRule.Status.ACTIVE)
    ids = [rnd.randint(first, last) for _ in range(samples)]
    for pid in ids[:10]:
        change_and_time(pid)
    rules = [change_and_time(pid) for pid in ids]
    log(f"rule evaluation (5 lists + 10 rules) p95 {p95(rules)} ms")
    return {"dynamic_list_refresh_s": round(refresh_s, 2), "incremental_update_p95_ms": p95(incremental),
            "rule_eval_p95_ms": p95(rules)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--prospects", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=None, help="PostgreSQL server URL (default: a SQLite file)")
    parser.add_argument("--activities-per-prospect", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200, help="timed prospect changes per figure")
    parser.add_argument("--skip-parts", action="store_true", help="do not run the scoring and programs parts")
    args = parser.parse_args()
    with bench_environment(args.database_url, prefix="loopline-bench-automation"):
        figures: dict = {"prospects": args.prospects}
        figures.update(_measure_lists_and_rules(args.prospects, args.activities_per_prospect, args.samples))
        if args.skip_parts:
            figures.update({"rescoring_s": None, "program_step_s": None, "alert_latency_p95_ms": None})
        else:
            figures.update(_merge("_automation_scoring", args.database_url, args.prospects,
                                  ("rescoring_s", "alert_latency_p95_ms")))
            figures.update(_merge("_automation_programs", args.database_url, args.prospects, ("program_step_s",)))
    order = ("prospects", "dynamic_list_refresh_s", "incremental_update_p95_ms", "rescoring_s", "rule_eval_p95_ms",
             "program_step_s", "alert_latency_p95_ms")
    print(json.dumps({k: figures.get(k) for k in order}), flush=True)


if __name__ == "__main__":
    main()
