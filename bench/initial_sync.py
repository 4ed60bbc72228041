"""Initial sync benchmark: N CRM leads and contacts into Loopline through Bulk API 2.0, with a SIGKILL at ~50%.

    python bench/initial_sync.py --records N [--latency-ms 100] [--jitter-ms 20] [--database-url URL]
                                 [--contacts-share 0.2] [--kill-at 0.5] [--page-records 50000] [--edits 50]

Starts its own crmsandbox (a subprocess over HTTPS, seeded with N records: leads and ``--contacts-share`` contacts;
latency N±jitter ms on every API call), a throw-away Loopline database (SQLite WAL, or a fresh database on the
PostgreSQL server of --database-url) and a connector. Then:

1. the initial import (``initial_import.import_from_crm``: counts, then Bulk API 2.0 above the threshold) runs in a
   worker subprocess; once ``--kill-at`` of the records are committed the worker is killed with SIGKILL and a new one
   resumes from the checkpoint. Meanwhile ``--edits`` leads are changed in the CRM (as a CRM user);
2. one normal poll catches up from the watermark recorded before the bulk jobs: the edited leads must show their
   new title in Loopline;
3. checks: every CRM id (read back with the sandbox admin's own bulk query) linked to exactly one prospect;
   ``duplicates`` = prospects or links beyond one per CRM record; ``lost`` = CRM records without a prospect (minus the
   ones in the error queue) + edits the catch-up poll missed.

``seconds`` runs from the first worker's start to the second one's exit (both Python start-ups included).
``api_calls`` are the connector's calls (both workers and the catch-up poll, logged per call as they happen, so the
killed worker's calls count too); ``bulk_job_calls`` the ones to ``jobs/query`` (create, status, result pages);
``api_calls_beyond_bulk`` the rest. The last line on stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import bench_environment, connected_bu, log, print_figures, start_crm_sandbox  # noqa: E402

KEYS = ("records", "seconds", "records_per_s", "api_calls", "bulk_jobs", "duplicates")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--jitter-ms", type=float, default=20)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--contacts-share", type=float, default=0.2)
    parser.add_argument(
        "--kill-at", type=float, default=0.5, help="share of records committed before the SIGKILL"
    )
    parser.add_argument("--page-records", type=int, default=None, help="maxRecords per result page")
    parser.add_argument("--edits", type=int, default=50, help="CRM edits made while the import runs")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--calls-log", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args)
        return

    n = args.records
    contacts = int(n * args.contacts_share)
    leads = n - contacts
    log(f"starting crmsandbox seeded with {leads} leads and {contacts} contacts")
    t = time.perf_counter()
    crm = start_crm_sandbox(leads=leads, contacts=contacts)
    log(f"sandbox ready in {time.perf_counter() - t:.1f}s")
    result: dict = {"records": n}
    try:
        with bench_environment(args.database_url, prefix="bench-initial-sync") as vendor:
            result["database"] = vendor
            result.update(run(crm, args, n))
    finally:
        crm.stop()
    print_figures(result, KEYS)


def worker(args) -> None:
    """The import in its own process (``--worker CONNECTOR_ID``), logging every API call as it happens."""
    import django

    django.setup()
    from loopline.connector.initial_import import import_from_crm
    from loopline.connector.models import Connector
    from loopline.connector.sync.context import shared_client

    connector = Connector.objects.select_related("bu").get(pk=args.worker)
    client = shared_client(connector)
    calls = open(args.calls_log, "a", buffering=1)  # noqa: SIM115 - one line per call, written at once

    def log_call(response, *a, **k):
        if "/oauth2/" not in response.url:
            url = response.url.split("?")[0]
            new_job = response.request.method == "POST" and url.endswith("/jobs/query")
            calls.write(("bulk-create" if new_job else "bulk" if "/jobs/" in url else "other") + "\n")

    client._session.hooks["response"].append(log_call)
    if args.page_records:
        from loopline.connector.sync import bulk

        bulk.PAGE_RECORDS = args.page_records
    counters = import_from_crm(connector, client=client)
    print(json.dumps(counters.as_dict()), flush=True)


def admin_ids(crm, object_type: str) -> set[str]:
    """Every id of ``object_type``, read with the sandbox admin's own Bulk API 2.0 query (not the connector's)."""
    import csv
    import io

    import requests

    job = crm.request(
        "POST", "jobs/query", json={"operation": "query", "query": f"SELECT Id FROM {object_type}"}
    )
    while crm.request("GET", f"jobs/query/{job['id']}")["state"] != "JobComplete":
        time.sleep(0.2)
    ids: set[str] = set()
    locator = ""
    while True:
        params = {"maxRecords": 200_000, **({"locator": locator} if locator else {})}
        r = requests.get(
            f"{crm.instance_url}/services/data/v59.0/jobs/query/{job['id']}/results",
            params=params,
            headers={"Authorization": f"Bearer {crm.admin_token()}"},
            verify=crm.ca_file,
            timeout=300,
        )
        r.raise_for_status()
        rows = list(csv.reader(io.StringIO(r.text)))
        ids.update(row[0] for row in rows[1:] if row)
        locator = r.headers.get("Sforce-Locator", "null")
        if locator in ("", "null"):
            return ids


def run(crm, args, n: int) -> dict:
    from django.db.models import Count, Sum

    from loopline.connector.models import BulkImportCheckpoint, CrmLink, SyncError
    from loopline.connector.sync import pull
    from loopline.connector.sync.context import shared_client
    from loopline.prospects.models import Prospect

    out: dict = {}
    bu, _access, connector = connected_bu(crm, "Bench")
    edit_ids = [r["Id"] for r in crm.query(f"SELECT Id FROM Lead LIMIT {args.edits}")] if args.edits else []
    crm.faults(latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, seed=1)

    calls_log = Path(os.environ["LOOPLINE_DATA_DIR"]) / "calls.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(connector.pk),
        "--calls-log",
        str(calls_log),
    ] + (["--page-records", str(args.page_records)] if args.page_records else [])

    def committed() -> int:
        return BulkImportCheckpoint.objects.filter(connector=connector).aggregate(n=Sum("done"))["n"] or 0

    marker = f"Edited {uuid.uuid4().hex[:6]}"
    edited = False
    killed_at = None
    log("import: first worker")
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        done = committed()
        if not edited and done >= n * args.kill_at / 2 and edit_ids:
            # CRM users keep working during the import ([R22]: the poll afterwards must catch this).
            for i in range(0, len(edit_ids), 200):
                crm.request(
                    "PATCH",
                    "composite/sobjects",
                    json={
                        "allOrNone": False,
                        "records": [
                            {"attributes": {"type": "Lead"}, "Id": rid, "Title": marker}
                            for rid in edit_ids[i : i + 200]
                        ],
                    },
                )
            edited = True
            log(f"edited {len(edit_ids)} leads in the CRM at {done} records committed")
        if done >= n * args.kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_at = done
            log(f"SIGKILL at {done} records committed ({time.perf_counter() - t0:.1f}s)")
            break
        time.sleep(0.1)
    if killed_at is not None:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        log("import: second worker resumes")
    stdout, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the import worker failed (exit {proc.returncode})")
    counters = json.loads(stdout.decode().strip().splitlines()[-1])
    log(f"import done in {seconds:.1f}s: {counters}")

    log("catch-up poll")
    client = shared_client(connector)
    poll_calls = client.usage.calls
    pull.poll(connector, client=client)
    poll_calls = client.usage.calls - poll_calls

    kinds = calls_log.read_text().split() if calls_log.exists() else []
    bulk_calls = kinds.count("bulk") + kinds.count("bulk-create")
    api_calls = len(kinds) + poll_calls
    checkpoints = list(BulkImportCheckpoint.objects.filter(connector=connector))

    log("checking every CRM record against Loopline")
    crm_ids = admin_ids(crm, "Lead") | admin_ids(crm, "Contact")
    links = CrmLink.objects.filter(connector=connector)
    linked = set(links.values_list("crm_id", flat=True))
    errored = set(SyncError.objects.filter(connector=connector).values_list("crm_id", flat=True))
    prospects = Prospect.objects.filter(bu=bu)
    dup_links = sum(r["n"] - 1 for r in links.values("prospect_id").annotate(n=Count("id")).filter(n__gt=1))
    dup_leads = sum(
        r["n"] - 1
        for r in prospects.exclude(crm_lead_id="")
        .values("crm_lead_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    dup_contacts = sum(
        r["n"] - 1
        for r in prospects.exclude(crm_contact_id="")
        .values("crm_contact_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    extra_prospects = max(0, prospects.count() - len(crm_ids & linked))
    missed_edits = len(edit_ids) - prospects.filter(crm_lead_id__in=edit_ids, job_title=marker).count()
    out.update(
        {
            "contacts": sum(cp.total for cp in checkpoints if cp.object_type == "Contact"),
            "killed_at_records": killed_at,
            "import_counters": {
                k: counters.get(k) for k in ("fetched", "created", "updated", "failed", "skipped")
            },
            "error_queue": len(errored),
            "catch_up_poll_calls": poll_calls,
            "edits_during_import": len(edit_ids) if edited else 0,
            "missed_edits": missed_edits,
            "bulk_job_calls": bulk_calls,
            "api_calls_beyond_bulk": api_calls - bulk_calls,
            "lost": len(crm_ids - linked - errored) + missed_edits,
            "unknown_links": len(linked - crm_ids),
            "seconds": round(seconds, 2),
            "records_per_s": round(n / seconds, 1),
            "api_calls": api_calls,
            "bulk_jobs": kinds.count("bulk-create"),
            "duplicates": dup_links + dup_leads + dup_contacts + extra_prospects,
            "load": os.getloadavg()[0],
        }
    )
    log(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
