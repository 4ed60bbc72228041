"""CRM connector benchmark: initial pull, bulk push, sync latency both ways, idle API calls.

    python bench/connector_sync.py --records 10000 [--latency-ms 100] [--jitter-ms 20] [--database-url URL]
                                   [--samples 20] [--idle-seconds 60]

Starts its own crmsandbox (a subprocess over HTTPS, seeded with N leads; latency N±jitter ms on every API call), a
throw-away Loopline database (SQLite WAL, or a fresh database on the PostgreSQL server of --database-url), a
connector (JWT app registered in the sandbox) and the sync worker loop (``ConnectorWorker``, the embedded mode's
loop) in a thread. Then:

1. initial pull: the explicit initial import of the N seeded leads (records/s, API calls);
2. push: N prospects imported into Loopline and assigned → N new CRM leads (records/s, API calls);
3. latency: single edits on either side, timed until they show on the other side (the worker runs at default
   settings); CRM → Loopline checked in the Loopline database, Loopline → CRM by reading the lead back;
4. idle: the running worker left alone for ``--idle-seconds`` (≥ 60 s, after 12 s to settle into its idle interval);
   every API call it makes is counted (by path, logged) and extrapolated to an hour (``idle_api_calls_per_hour``).
   Cross-check from the real interval logic: calls per idle poll × 3600 / ``pull.next_interval`` after idle polls
   (``idle_api_calls_per_hour_model``, with ``idle_poll_interval_s`` and ``idle_calls_per_poll``);
5. correctness: duplicates (CRM leads sharing an email, prospects sharing a CRM id) and lost records of phases 1-2,
   then three rounds of ``--check-records`` changes each way (bench/_connector_checks.py): the worker killed with
   SIGKILL mid-batch and restarted; the sandbox failing 5% of calls with UNABLE_TO_LOCK_ROW and 5% with 503; the
   same batch re-run (re-queued and re-drained, the initial import re-run). ``duplicates`` and ``lost`` add them all.

The last line on stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import bench_environment, connected_bu, log, print_figures, start_crm_sandbox

KEYS = ("records", "pull_records_per_s", "pull_api_calls", "push_records_per_s", "push_api_calls",
        "crm_to_loopline_p50_s", "crm_to_loopline_p99_s", "loopline_to_crm_p50_s", "loopline_to_crm_p99_s",
        "idle_api_calls_per_hour", "duplicates", "lost")


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[k], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--jitter-ms", type=float, default=20)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--samples", type=int, default=20, help="latency samples per direction")
    parser.add_argument("--idle-seconds", type=float, default=60, help="idle window (at least 60 s)")
    parser.add_argument("--throughput-only", action="store_true", help="skip the latency and idle phases")
    parser.add_argument("--check-records", type=int, default=None,
                        help="records each way per correctness round (default: min(records, 10000))")
    args = parser.parse_args()
    if args.idle_seconds < 60:
        parser.error("--idle-seconds must be at least 60 (an idle poll comes every ~10 s)")

    n = args.records
    log(f"starting crmsandbox seeded with {n} leads")
    t = time.perf_counter()
    crm = start_crm_sandbox(leads=n)
    log(f"sandbox ready in {time.perf_counter() - t:.1f}s")
    result: dict = {"records": n}
    try:
        with bench_environment(args.database_url, prefix="bench-connector") as vendor:
            result["database"] = vendor
            result.update(run(crm, args, n))
    finally:
        crm.stop()
    print_figures(result, KEYS)


def run(crm, args, n: int) -> dict:
    from django.db import close_old_connections
    from django.utils import timezone

    from loopline.connector import services
    from loopline.connector.models import CrmLink, OutboxEntry
    from loopline.connector.sync import pull, push
    from loopline.connector.sync.context import shared_client
    from loopline.connector.sync.worker import ConnectorWorker
    from loopline.prospects import services as prospects
    from loopline.prospects.models import Prospect

    out: dict = {}
    bu, access, connector = connected_bu(crm, "Bench")
    user = access.user
    crm.faults(latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, seed=1)
    client = shared_client(connector)

    # 1. Initial pull.
    log("initial pull")
    calls = client.usage.calls
    t = time.perf_counter()
    counters = pull.initial_import(connector)
    elapsed = time.perf_counter() - t
    out["pull_records_per_s"] = round(counters.created / elapsed, 1)
    out["pull_api_calls"] = client.usage.calls - calls
    out["pull_seconds"] = round(elapsed, 2)
    log(f"pulled {counters.created} in {elapsed:.1f}s ({out['pull_api_calls']} calls): {counters.summary()[:200]}")
    pulled_ok = Prospect.objects.filter(bu=bu).exclude(crm_lead_id="").count()

    # 2. Push: N new prospects, imported and assigned.
    log("push: importing and assigning prospects")
    tag = uuid.uuid4().hex[:6]
    rows = [{"email": f"push{i}.{tag}@bench.test", "first_name": "Push", "last_name": f"P{i}", "company": "Bench"}
            for i in range(n)]
    created_ids: list[int] = []
    for i in range(0, n, 5000):
        res = prospects.bulk_upsert_prospects(bu, rows[i:i + 5000], source="user")
        created_ids += res.created_ids
    # Assignment in bulk (bench set-up; the import already queued one outbox entry per prospect).
    Prospect.objects.filter(pk__in=created_ids).update(assigned_user=user, assigned_at=timezone.now())
    services.resume(access, connector)
    connector.refresh_from_db()
    calls = client.usage.calls
    log(f"push: draining {OutboxEntry.objects.filter(status='pending').count()} outbox entries")
    t = time.perf_counter()
    pushed = push.drain_parallel(connector, threads=4, client=client)
    elapsed = time.perf_counter() - t
    out["push_records_per_s"] = round(pushed / elapsed, 1)
    out["push_api_calls"] = client.usage.calls - calls
    out["push_seconds"] = round(elapsed, 2)
    log(f"pushed {pushed} in {elapsed:.1f}s ({out['push_api_calls']} calls)")

    if args.throughput_only:
        return out
    # 3. Latency with the worker loop running at default settings.
    worker = ConnectorWorker([connector.pk])

    def loop():
        worker.run()
        close_old_connections()

    from loopline.connector.models import Watermark

    started = timezone.now()
    t = time.perf_counter()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    # The first poll after the push reads the N pushed leads back (their SystemModstamp moved) and skips them as
    # echoes [R24]; latency is sampled once that catch-up is done (steady state).
    while Watermark.objects.filter(connector=connector, last_success_at__gte=started).count() < 2:
        time.sleep(0.2)
    out["echo_catch_up_seconds"] = round(time.perf_counter() - t, 2)
    log(f"first poll after the push (echo catch-up) took {out['echo_catch_up_seconds']}s")
    time.sleep(1)
    sample_prospects = list(Prospect.objects.filter(bu=bu).exclude(crm_lead_id="").order_by("?")[:args.samples * 2])
    rng = random.Random(7)
    crm_to_ll: list[float] = []
    log("latency CRM → Loopline")
    for p in sample_prospects[:args.samples]:
        time.sleep(rng.uniform(0, 4))
        marker = f"T{uuid.uuid4().hex[:8]}"
        crm.update("Lead", p.crm_lead_id, Title=marker)
        t0 = time.time()
        while time.time() - t0 < 60:
            if Prospect.objects.filter(pk=p.pk, job_title=marker).exists():
                crm_to_ll.append(time.time() - t0)
                break
            time.sleep(0.05)
    log("latency Loopline → CRM")
    ll_to_crm: list[float] = []
    for p in sample_prospects[args.samples:]:
        time.sleep(rng.uniform(0, 2))
        marker = f"L{uuid.uuid4().hex[:8]}"
        p.refresh_from_db()
        prospects.update_prospect(p, {"job_title": marker})
        t0 = time.time()
        while time.time() - t0 < 60:
            if crm.request("GET", f"sobjects/Lead/{p.crm_lead_id}", params={"fields": "Title"}).get("Title") == marker:
                ll_to_crm.append(time.time() - t0)
                break
            time.sleep(0.05)
    out["crm_to_loopline_p50_s"] = percentile(crm_to_ll, 50)
    out["crm_to_loopline_p99_s"] = percentile(crm_to_ll, 99)
    out["loopline_to_crm_p50_s"] = percentile(ll_to_crm, 50)
    out["loopline_to_crm_p99_s"] = percentile(ll_to_crm, 99)
    out["latency_samples"] = [len(crm_to_ll), len(ll_to_crm)]
    if crm_to_ll:
        out["crm_to_loopline_mean_s"] = round(statistics.mean(crm_to_ll), 3)

    # 4. Idle.
    log(f"idle for {args.idle_seconds:.0f}s")
    time.sleep(12)  # let the adaptive interval settle into its idle value
    by_path: dict[str, int] = {}

    def count(response, *a, **k):
        if "/oauth2/" not in response.url:
            key = f"{response.request.method} {response.url.split('/services/data/')[-1].split('?')[0]}"
            by_path[key] = by_path.get(key, 0) + 1

    client._session.hooks["response"].append(count)
    calls = client.usage.calls
    t = time.perf_counter()
    time.sleep(args.idle_seconds)
    idle_calls = client.usage.calls - calls
    client._session.hooks["response"].remove(count)
    elapsed = time.perf_counter() - t
    out["idle_api_calls_per_hour"] = round(idle_calls * 3600 / elapsed)
    # The same figure from the worker's own interval logic: an idle poll's calls × idle polls per hour.
    polls = by_path.get(f"POST v{connector.api_version}/composite", 0)
    interval = pull.next_interval(connector, [0] * 8)
    out["idle_poll_interval_s"] = round(interval, 1)
    out["idle_calls_per_poll"] = round(idle_calls / polls, 2) if polls else None
    if polls:
        out["idle_api_calls_per_hour_model"] = round(idle_calls / polls * 3600 / interval)
    log(f"idle: {idle_calls} calls in {elapsed:.0f}s ({by_path}); idle interval {interval:.1f}s")
    worker.stop()
    thread.join(30)

    # 5. Correctness.
    crm.faults(reset=True)
    log("checking duplicates and lost records")
    leads = []
    soql = f"SELECT Id, Email FROM Lead WHERE Email LIKE 'push%.{tag}@bench.test'"
    result = crm.request("GET", "query", params={"q": soql})
    leads += result["records"]
    while not result.get("done", True):
        result = crm.request("GET", result["nextRecordsUrl"])
        leads += result["records"]
    emails = [r["Email"].lower() for r in leads]
    crm_dupes = len(emails) - len(set(emails))
    ll_dupes = (CrmLink.objects.filter(connector=connector).count()
                - CrmLink.objects.filter(connector=connector).values("prospect_id").distinct().count())
    lost_push = n - len(set(emails))
    lost_pull = n - pulled_ok
    duplicates = crm_dupes + max(0, ll_dupes)
    lost = max(0, lost_push) + max(0, lost_pull)
    log(f"phases 1-2: duplicates {duplicates}, lost {lost}")

    import _connector_checks as checks

    m = args.check_records or min(n, 10_000)
    rounds = {}
    log(f"correctness: kill -9 round ({m} each way)")
    rounds["kill"] = checks.kill_round(bu, user, connector, crm, m)
    log(f"correctness: faults round ({m} each way)")
    rounds["faults"], batch = checks.fault_round(bu, user, connector, crm, m,
                                                 rates={"UNABLE_TO_LOCK_ROW": 0.05, "SERVER_UNAVAILABLE": 0.05})
    log("correctness: re-run of the same batch")
    rounds["rerun"] = checks.rerun_round(connector, crm, batch)
    out["check_rounds"] = rounds
    out["api_calls_total"] = client.usage.calls
    out["duplicates"] = duplicates + sum(r["duplicates"] for r in rounds.values())
    out["lost"] = lost + sum(r["lost"] for r in rounds.values())
    log(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
