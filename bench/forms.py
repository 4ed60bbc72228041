"""Forms benchmark: form submission latency and the identification merge of 10,000 anonymous activities.

    python bench/forms.py [--submissions 300] [--database-url URL]

Sets up a throw-away data directory and database (SQLite WAL by default; a fresh database on the PostgreSQL server of
--database-url otherwise), builds a form with completion actions, then:
- submit: POSTs the public form through Django's full request stack (middleware, view, validation, prospect
  create/update, visitor identification, success activity, completion actions) — new and returning prospects mixed;
- merge: a visitor with 10,000 anonymous activities is identified; the set-based move is timed.
Prints one JSON line last: submit_p95_ms, merge_10k_activities_ms (+ context keys).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--submissions", type=int, default=300)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loopline-forms-bench-"))
    os.environ.update({"LOOPLINE_DATA_DIR": str(tmp), "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-secret"),
                       "LOOPLINE_LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "loopline.config.settings",
                       "LOOPLINE_FORMS_RATE_PER_MINUTE": "1000000"})
    pg_db = None
    if args.database_url.startswith("postgres"):
        base = args.database_url.rpartition("/")[0]
        pg_db = f"loopline_formsbench_{uuid.uuid4().hex[:8]}"
        subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE {pg_db}"], check=True)
        os.environ["DATABASE_URL"] = f"{base}/{pg_db}"
    elif args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    sys.path.insert(0, str(REPO / "src"))
    try:
        figures = run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if pg_db:
            subprocess.run(["psql", f"{os.environ['DATABASE_URL'].rpartition('/')[0]}/postgres", "-qc",
                            f"DROP DATABASE IF EXISTS {pg_db} WITH (FORCE)"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures))


def run(args) -> dict:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    settings.ALLOWED_HOSTS = ["*"]
    settings.FORMS_RATE_PER_MINUTE = 10**9
    call_command("migrate", verbosity=0)
    from loopline.accounts import services as accounts
    from loopline.accounts.access import Access
    from loopline.forms import services as forms
    from loopline.prospects import services as ps
    from loopline.prospects.models import Activity, ActivityType, Visitor
    from loopline.tracking import services as tracking

    bu = accounts.create_business_unit("Bench")
    user = accounts.create_user("bench@example.com", password="bench-password-1")
    accounts.set_membership(bu, user, "marketing")
    access = Access.for_user(user, bu)
    form = forms.save_form(access, {"name": "Bench form", "actions": [
        {"type": "add_tag", "tag": "bench"}, {"type": "adjust_score", "points": 5}]}, [
        {"prospect_field": "email"}, {"prospect_field": "first_name", "required": True},
        {"prospect_field": "company", "progressive": True}, {"prospect_field": "source", "kind": "hidden",
                                                             "default_value": "web"}])
    client = Client(REMOTE_ADDR="10.0.0.1")
    for i in range(20):  # warm-up
        client.post(f"/f/{form.key}/", {"email": f"warm{i}@example.com", "first_name": "W"})
    latencies = []
    for i in range(args.submissions):
        email = f"p{i % (args.submissions // 2 or 1)}@example.com"  # half new, half returning
        data = {"email": email, "first_name": "Bench", "company": "Acme", "lp_vid": uuid.uuid4().hex}
        t0 = time.perf_counter()
        r = client.post(f"/f/{form.key}/", data)
        latencies.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.status_code
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]

    prospect = ps.create_prospect(bu, {"email": "merge@example.com"})
    vid = uuid.uuid4()
    visitor = Visitor.objects.create(bu=bu, cookie_id=vid)
    now = ps.timezone.now()
    Activity.objects.bulk_create([Activity(bu=bu, visitor=visitor, type=ActivityType.PAGE_VIEW, occurred_at=now,
                                           url=f"https://www.example.com/{i}") for i in range(10_000)],
                                 batch_size=2000)
    t0 = time.perf_counter()
    tracking.identify_visitor(bu.pk, vid.hex, prospect)
    merge_ms = (time.perf_counter() - t0) * 1000
    moved = Activity.objects.filter(prospect=prospect, type=ActivityType.PAGE_VIEW).count()
    from django.db import connection

    return {"submit_p95_ms": round(p95, 1), "submit_p50_ms": round(latencies[len(latencies) // 2], 1),
            "merge_10k_activities_ms": round(merge_ms, 1), "merged": moved, "submissions": args.submissions,
            "database": connection.vendor}


if __name__ == "__main__":
    main()
