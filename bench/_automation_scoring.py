#!/usr/bin/env python
"""Benchmark part: retroactive rescoring and real-time alert latency — issue #8's ``rescoring_s`` (target ≤ 300 s for
1,000,000 prospects / 20,000,000 activities on PostgreSQL) and ``alert_latency_p95_ms`` (target ≤ 2,000 ms).

    measure(database_url, prospects) -> {"rescoring_s": float, "alert_latency_p95_ms": float}

Called by ``bench/automation.py`` (inside its benchmark environment, or on its own: a fresh database is made when Django
is not set up yet). Stand-alone:

    python bench/_automation_scoring.py --prospects 1000000 --database-url postgres://postgres@127.0.0.1:5432/postgres

rescoring_s: one business unit gets N prospects and 20 activities each (SQL), scored under the default table. The
timed part is the real job after a rules change (page view 1 -> 2, form success 50 -> 40, email open 0 -> 1):
``services.save_rules`` + ``services.run_rescore`` (set-based deltas, chunked apply with progress, category scores).
A sample of scores is checked against a recount from the activities.

alert_latency_p95_ms: Loopline's WSGI app serves on 127.0.0.1 in a thread; a signed-in "browser" (an HTTP client with
the session cookie) polls the live badge endpoint every second exactly as the page's htmx does. The main thread records
an activity for a prospect assigned to that user; the sample is the time until the browser's poll shows the alert.
"""

from __future__ import annotations

import random
import re
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, measure_part, part_main

ACTIVITIES_PER_PROSPECT = 20
ALERT_SAMPLES = 40
POLL_SECONDS = 1.0  # the badge's hx-trigger="every 1s"


def _fill_prospects(bu_id: int, count: int) -> None:
    from django.db import connection

    if connection.vendor == "postgresql":
        from prospect_list import fill

        fill(bu_id, count)
        return
    from loopline.prospects.models import Prospect

    batch = []
    for i in range(1, count + 1):
        email = f"score{i}@bench.example"
        batch.append(Prospect(bu_id=bu_id, email=email, email_key=email, first_name="Bench"))
        if len(batch) == 5000:
            Prospect.objects.bulk_create(batch)
            batch = []
    Prospect.objects.bulk_create(batch)


# A realistic mix of the 20 activities: mostly page views and email opens, some visits and clicks, a few forms.
MIX = [1, 1, 1, 1, 1, 1, 1, 13, 13, 13, 13, 2, 2, 2, 14, 14, 12, 12, 4, 5]


def _fill_activities(bu_id: int, count: int) -> None:
    """N x 20 activities in set-based SQL, with the points the default table gives (as if scored live)."""
    from django.db import connection

    from loopline.prospects.models import Activity, Prospect
    from loopline.qualification.models import ScoreState
    from loopline.qualification.scoring import effective_points

    table = effective_points(None)
    first = Prospect.objects.filter(bu_id=bu_id).order_by("pk").values_list("pk", flat=True).first()
    mix = ", ".join(str(t) for t in MIX)
    case = "CASE x.t " + " ".join(f"WHEN {t} THEN {p}" for t, p in table.items() if p) + " ELSE 0 END"
    a, s, p = Activity._meta.db_table, ScoreState._meta.db_table, Prospect._meta.db_table
    total = count * ACTIVITIES_PER_PROSPECT
    chunk = 2_000_000
    with connection.cursor() as cur:
        for start in range(0, total, chunk):
            end = min(total, start + chunk) - 1
            if connection.vendor == "postgresql":
                source = (f"SELECT g, (ARRAY[{mix}])[1 + (g %% {len(MIX)})] AS t, "
                          f"now() - ((g %% 90000) || ' minutes')::interval AS at FROM generate_series(%s, %s) AS g")
                data, false = "'{}'::jsonb", "false"
            else:
                source = (f"WITH RECURSIVE q(g) AS (SELECT %s UNION ALL SELECT g + 1 FROM q WHERE g < %s) "
                          f"SELECT g, (SELECT value FROM json_each('[{mix}]') WHERE key = g %% {len(MIX)}) AS t, "
                          f"datetime('now', '-' || (g %% 90000) || ' minutes') AS at FROM q")
                data, false = "'{}'", "0"
            cur.execute(
                f"INSERT INTO {a} (bu_id, prospect_id, type, occurred_at, title, url, asset_type, is_machine, points, "
                f"data) SELECT {bu_id}, {first} + (x.g / {ACTIVITIES_PER_PROSPECT}), x.t, x.at, '', "
                f"'https://bench.example/page', '', {false}, {case}, {data} FROM ({source}) x",
                [start, end])
            log(f"inserted {end + 1:,} activities")
        cur.execute(f"INSERT INTO {s} (prospect_id, bu_id, activity_points) SELECT prospect_id, {bu_id}, SUM(points) "
                    f"FROM {a} WHERE bu_id = {bu_id} GROUP BY prospect_id")
        cur.execute(f"UPDATE {p} SET score = st.activity_points FROM {s} st WHERE st.prospect_id = {p}.id "
                    f"AND {p}.bu_id = {bu_id}")
        if connection.vendor == "postgresql":
            for t in (a, s, p):
                cur.execute(f"VACUUM ANALYZE {t}")


def _rescoring(prospects: int) -> tuple[float, object]:
    from django.db import connection
    from django.db.models import Case, IntegerField, Sum, Value, When

    from loopline.accounts import services as account_services
    from loopline.platform.models import Job
    from loopline.prospects.models import Activity, ActivityType, Prospect
    from loopline.qualification import services
    from loopline.qualification.scoring import effective_points

    bu = account_services.create_business_unit(f"Scoring bench {time.time_ns()}")
    log(f"{connection.vendor}: filling {prospects:,} prospects and {prospects * ACTIVITIES_PER_PROSPECT:,} activities")
    _fill_prospects(bu.pk, prospects)
    _fill_activities(bu.pk, prospects)
    new_rules = {**effective_points(None), ActivityType.PAGE_VIEW: 2, ActivityType.FORM_SUCCESS: 40,
                 ActivityType.EMAIL_OPEN: 1}
    log("rescoring after a rules change")
    started = time.perf_counter()
    job = services.save_rules(bu, new_rules)
    assert job is not None
    services.run_rescore(job.pk)
    elapsed = time.perf_counter() - started
    job.refresh_from_db()
    log(f"rescored: {job.done:,} scores moved in {elapsed:.1f}s ({job.status})")
    if job.status != Job.Status.SUCCEEDED:
        raise SystemExit(f"rescore failed: {job.error}")
    sample = list(Prospect.objects.filter(bu=bu).order_by("?").values_list("pk", "score")[:20])
    whens = [When(type=t, then=Value(p)) for t, p in new_rules.items() if p]
    for pk, score in sample:
        expected = Activity.objects.filter(prospect_id=pk, is_machine=False).aggregate(
            s=Sum(Case(*whens, default=Value(0), output_field=IntegerField())))["s"] or 0
        if expected != score:
            raise SystemExit(f"rescore check failed for prospect {pk}: score {score}, recount {expected}")
    return elapsed, bu


def _serve():
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from django.core.wsgi import get_wsgi_application

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    class Threaded(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = make_server("127.0.0.1", 0, get_wsgi_application(), server_class=Threaded, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _alert_latency(bu) -> float:
    from django.conf import settings
    from django.db import close_old_connections
    from django.test import Client

    from loopline.accounts import services as account_services
    from loopline.prospects import services as prospect_services
    from loopline.prospects.models import ActivityType

    password = "bench-password-123456"
    user = account_services.create_user(f"rep-{time.time_ns()}@bench.example", password=password)
    account_services.set_membership(bu, user, "sales")
    # Mail goes nowhere during the benchmark: alerts by email are queued as tasks (no worker is running here).
    client = Client()
    if not client.login(username=user.email, password=password):
        raise SystemExit("could not sign the benchmark user in")
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    server = _serve()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    prospect = prospect_services.create_prospect(bu, {"email": f"hot-{time.time_ns()}@bench.example",
                                                      "first_name": "Hot"})
    prospect_services.assign_prospect(prospect, user)

    seen: dict[int, float] = {}
    stop = threading.Event()

    def get(path: str) -> tuple[int, str]:
        request = urllib.request.Request(base + path, headers={"Cookie": cookie, "HX-Request": "true"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()

    def browser():
        status, body = get("/notifications/live/")
        state = re.search(r"after=(\d+)&amp;unread=(\d+)", body)
        after, unread = state.groups() if state else ("0", "0")
        while not stop.is_set():
            status, body = get(f"/notifications/live/?after={after}&unread={unread}")
            now = time.perf_counter()
            if status == 200:
                for nid in re.findall(r'data-notification-id="(\d+)"', body):
                    seen.setdefault(int(nid), now)
                state = re.search(r"after=(\d+)&amp;unread=(\d+)", body)
                if state:
                    after, unread = state.groups()
            close_old_connections()
            stop.wait(POLL_SECONDS)

    poller = threading.Thread(target=browser, daemon=True)
    poller.start()
    time.sleep(1.5)
    from loopline.notifications.models import Notification

    samples = []
    try:
        for i in range(ALERT_SAMPLES):
            time.sleep(random.uniform(0.3, 1.7))  # activities arrive at any point of the poll cycle
            t0 = time.perf_counter()
            prospect_services.record_activity(bu.pk, ActivityType.FORM_SUCCESS if i % 2 else ActivityType.VISIT,
                                              prospect=prospect, title="Pricing")
            nid = Notification.objects.filter(user=user).order_by("-id").values_list("pk", flat=True).first()
            deadline = time.perf_counter() + 10
            while nid not in seen and time.perf_counter() < deadline:
                time.sleep(0.01)
            if nid not in seen:
                raise SystemExit(f"alert {nid} never reached the browser")
            samples.append(seen[nid] - t0)
    finally:
        stop.set()
        poller.join(timeout=5)
        server.shutdown()
        server.server_close()
    p95 = statistics.quantiles(samples, n=20, method="inclusive")[18] * 1000
    log(f"alert latency: median {statistics.median(samples) * 1000:.0f} ms, p95 {p95:.0f} ms over {len(samples)}")
    return p95


def _run(prospects: int) -> dict:
    rescoring_s, bu = _rescoring(prospects)
    latency = _alert_latency(bu)
    return {"rescoring_s": round(rescoring_s, 2), "alert_latency_p95_ms": round(latency, 1)}


def measure(database_url: str | None, prospects: int) -> dict:
    """``{"rescoring_s": seconds, "alert_latency_p95_ms": ms}`` for a BU of ``prospects`` prospects."""
    return measure_part(_run, database_url, prospects, prefix="loopline-bench-scoring")


if __name__ == "__main__":
    part_main(measure, __doc__.splitlines()[1])
