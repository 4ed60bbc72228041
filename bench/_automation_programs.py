#!/usr/bin/env python
"""Benchmark part: an engagement program advancing N prospects one non-email step (add a tag) — issue #8's
``program_step_s`` (target ≤ 300 s for 1,000,000 prospects on PostgreSQL).

    measure(database_url, prospects) -> {"program_step_s": float}

Called by ``bench/automation.py`` (inside its benchmark environment, or on its own: a fresh database is made when
Django is not set up yet). Stand-alone:

    python bench/_automation_programs.py --prospects 1000000 --database-url postgres://postgres@127.0.0.1:5432/postgres

Fills one business unit with N prospects (SQL on PostgreSQL), lets them all enter a running program whose first step
adds a tag and whose second step waits a day, then times the real engine (``runner.run_due``: claim due prospects in
batches, tag them set-based, write the ledger, advance) until every prospect has passed the first step. Checks that
each prospect was tagged once and has exactly one ledger row.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, measure_part, part_main


def _fill(bu_id: int, count: int) -> None:
    from django.db import connection

    if connection.vendor == "postgresql":
        from prospect_list import fill

        fill(bu_id, count)
        return
    from loopline.prospects.models import Prospect

    batch = []
    for i in range(1, count + 1):
        email = f"prog{i}@bench.example"
        batch.append(Prospect(bu_id=bu_id, email=email, email_key=email, first_name="Bench"))
        if len(batch) == 5000:
            Prospect.objects.bulk_create(batch)
            batch = []
    Prospect.objects.bulk_create(batch)


def _run(prospects: int) -> dict:
    import django.apps
    from django.db import connection
    from django.utils import timezone

    assert django.apps.apps.ready
    from loopline.accounts import services as account_services
    from loopline.accounts.access import Access
    from loopline.automation.programs import runner, services
    from loopline.automation.programs.models import Program, ProgramMember, ProgramStepLog
    from loopline.prospects.models import Prospect, ProspectTag

    bu = account_services.create_business_unit(f"Programs bench {time.time_ns()}")
    user = account_services.create_user(f"programs-{time.time_ns()}@bench.example")
    account_services.set_membership(bu, user, "marketing")
    access = Access.for_user(user, bu)
    log(f"{connection.vendor}: filling {prospects:,} prospects")
    _fill(bu.pk, prospects)
    program = services.create_program(access, {"name": "Bench nurture"})
    first = services.add_step(access, program, {"kind": "action", "config": {"actions": [
        {"type": "add_tag", "tag": "nurtured"}]}})
    services.add_step(access, program, {"kind": "action", "wait_kind": "delay", "wait_amount": 1, "wait_unit": "days",
                                        "config": {"actions": [{"type": "add_tag", "tag": "day-two"}]}})
    t0 = time.perf_counter()
    entered = services.add_prospects(program, list(Prospect.objects.filter(bu=bu).values_list("pk", flat=True))) \
        if prospects <= 50_000 else services._enter(program, Prospect.objects.filter(bu=bu).values("pk"),
                                                    timezone.now())
    log(f"{entered:,} prospects entered in {time.perf_counter() - t0:.1f}s")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {ProgramMember._meta.db_table}")
    Program.objects.filter(pk=program.pk).update(status=Program.Status.RUNNING, synced_at=timezone.now())
    log("advancing one step")
    started = time.perf_counter()
    total = 0
    while True:
        stats = runner.run_due(sync=False, batch_size=5000, program_ids=[program.pk], time_budget=60)
        total += stats["advanced"]
        log(f"  {total:,} advanced ({time.perf_counter() - started:.0f}s)")
        if not stats["batches"]:
            break
    elapsed = time.perf_counter() - started
    passed = ProgramStepLog.objects.filter(step=first).count()
    tagged = ProspectTag.objects.filter(prospect__bu=bu, tag__name="nurtured").count()
    log(f"step 1 passed by {passed:,} prospects, {tagged:,} tagged, in {elapsed:.1f}s")
    if not passed == tagged == entered == prospects:
        raise SystemExit(f"engine check failed: {entered} entered, {passed} passed, {tagged} tagged")
    return {"program_step_s": round(elapsed, 2)}


def measure(database_url: str | None, prospects: int) -> dict:
    """``{"program_step_s": seconds}`` for a program advancing ``prospects`` prospects one non-email step."""
    return measure_part(_run, database_url, prospects, prefix="loopline-bench-programs")


if __name__ == "__main__":
    part_main(measure, __doc__.splitlines()[1])
