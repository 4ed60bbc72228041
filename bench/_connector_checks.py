"""Correctness rounds shared by bench/connector_sync.py and bench/connector_chaos.py --rounds ([R25]).

Each round changes ``m`` records on both sides at once — new assigned prospects to create in the CRM (one in ten
without an email: the external-id guard's case) and CRM leads edited with a marker title — lets the sync worker
converge, and counts duplicates and lost records:

- ``rerun``: the same batch again — every pushed prospect re-queued and drained again, the initial import re-run;
- ``kill``: the worker runs as ``loopline connector worker`` in a subprocess and is killed with SIGKILL mid-batch;
  leases of the dead worker run out (fast-forwarded here instead of waiting the 5 minutes), a new worker finishes;
- ``faults``: the sandbox fails a share of API calls with ``UNABLE_TO_LOCK_ROW`` (400) and ``SERVER_UNAVAILABLE``
  (503), and optionally loses the answer of calls it did process (``LOST_RESPONSE``).

Duplicates: CRM leads of one prospect (by its unique last name), prospects sharing a CRM id, prospects with more than
one link. Lost: prospects with no CRM lead or whose lead lacks the prospect's last change, CRM edits missing in
Loopline, outbox entries that ended failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _common import log

SRC = Path(__file__).resolve().parent.parent / "src"


def query_all(crm, soql: str) -> list[dict]:
    result = crm.request("GET", "query", params={"q": soql})
    records = list(result["records"])
    while not result.get("done", True):
        result = crm.request("GET", result["nextRecordsUrl"])
        records += result["records"]
    return records


def crm_update_titles(crm, ids: list[str], title: str) -> None:
    """Edit leads as a CRM user would (sObject Collections, 200 a call; the sandbox admin, not the connector)."""
    for i in range(0, len(ids), 200):
        body = {"allOrNone": False, "records": [{"attributes": {"type": "Lead"}, "Id": rid, "Title": title}
                                                for rid in ids[i:i + 200]]}
        for attempt in range(20):  # the bench's own edits ride out the injected faults
            try:
                crm.request("PATCH", "composite/sobjects", json=body)
                break
            except Exception:
                if attempt == 19:
                    raise
                time.sleep(0.2)


class Round:
    """One batch of changes on both sides and its checks."""

    def __init__(self, bu, user, connector, crm, m: int, label: str):
        self.bu, self.user, self.connector, self.crm, self.m, self.label = bu, user, connector, crm, m, label
        self.tag = uuid.uuid4().hex[:6]
        self.prospect_ids: list[int] = []
        self.pulled: dict[str, int] = {}  # CRM lead id → prospect id, for the edited leads
        self.marker = f"M{self.tag}"

    def start(self) -> None:
        from django.utils import timezone

        from loopline.prospects import services as prospects
        from loopline.prospects.models import Prospect

        rows = []
        for i in range(self.m):
            row = {"first_name": "Chaos", "last_name": f"K{i}x{self.tag}", "company": "Bench"}
            if i % 10:
                row["email"] = f"k{i}.{self.tag}@bench.test"
            rows.append(row)
        for i in range(0, len(rows), 5000):
            self.prospect_ids += prospects.bulk_upsert_prospects(self.bu, rows[i:i + 5000], source="user").created_ids
        Prospect.objects.filter(pk__in=self.prospect_ids).update(assigned_user=self.user, assigned_at=timezone.now())
        linked = list(Prospect.objects.filter(bu=self.bu).exclude(crm_lead_id="")
                      .exclude(pk__in=self.prospect_ids).order_by("?").values_list("crm_lead_id", "pk")[:self.m])
        self.pulled = dict(linked)
        crm_update_titles(self.crm, list(self.pulled), self.marker)

    def progress(self) -> float:
        from loopline.prospects.models import Prospect

        pushed = Prospect.objects.filter(pk__in=self.prospect_ids).exclude(crm_lead_id="").count()
        pulled = Prospect.objects.filter(pk__in=list(self.pulled.values()), job_title=self.marker).count()
        return (pushed + pulled) / max(1, len(self.prospect_ids) + len(self.pulled))

    def settled(self) -> bool:
        from loopline.connector.models import OutboxEntry

        busy = OutboxEntry.objects.filter(connector=self.connector, prospect_id__in=self.prospect_ids,
                                          status=OutboxEntry.Status.PENDING).exists()
        return not busy and self.progress() >= 1.0

    def wait(self, timeout: float, *, poke=None) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.settled():
                return True
            if poke is not None:
                poke()
            time.sleep(0.5)
        return self.settled()

    def requeue(self) -> None:
        """Re-run the same push batch: every prospect of the round queued again."""
        from loopline.connector import outbox

        for pid in self.prospect_ids:
            outbox.enqueue(self.connector.pk, pid, ["*"], reason="change")

    def check(self) -> dict[str, Any]:
        from django.db.models import Count

        from loopline.connector.models import CrmLink, OutboxEntry
        from loopline.prospects.models import Prospect

        leads = query_all(self.crm, f"SELECT Id, LastName FROM Lead WHERE LastName LIKE 'K%x{self.tag}'")
        per_name: dict[str, int] = {}
        for r in leads:
            per_name[r["LastName"]] = per_name.get(r["LastName"], 0) + 1
        crm_dupes = sum(n - 1 for n in per_name.values())
        names = dict(Prospect.objects.filter(pk__in=self.prospect_ids).values_list("pk", "last_name"))
        not_in_crm = sum(1 for name in names.values() if name not in per_name)
        unlinked = Prospect.objects.filter(pk__in=self.prospect_ids, crm_lead_id="").count()
        failed = OutboxEntry.objects.filter(connector=self.connector, prospect_id__in=self.prospect_ids,
                                            status=OutboxEntry.Status.FAILED).count()
        pulled_missing = len(self.pulled) - Prospect.objects.filter(pk__in=list(self.pulled.values()),
                                                                    job_title=self.marker).count()
        ll_dupes = sum(row["n"] - 1 for row in Prospect.objects.filter(bu=self.bu).exclude(crm_lead_id="")
                       .values("crm_lead_id").annotate(n=Count("id")).filter(n__gt=1))
        link_dupes = sum(row["n"] - 1 for row in CrmLink.objects.filter(connector=self.connector)
                         .values("prospect_id", "crm_object").annotate(n=Count("id")).filter(n__gt=1))
        out = {"duplicates": crm_dupes + ll_dupes + link_dupes,
               "lost": not_in_crm + max(unlinked, failed) + pulled_missing}
        log(f"{self.label}: {self.m} each way; crm dupes {crm_dupes}, loopline dupes {ll_dupes}, link dupes "
            f"{link_dupes}; not in CRM {not_in_crm}, unlinked {unlinked}, failed {failed}, CRM edits missing "
            f"{pulled_missing}")
        return out


def worker_process(connector_id: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "loopline", "connector", "worker", "--connector",
                             str(connector_id)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def expire_leases(connector) -> int:
    """The dead worker's leases run out (LEASE_SECONDS); fast-forwarded so the bench does not sit idle."""
    from django.utils import timezone

    from loopline.connector.models import OutboxEntry

    return OutboxEntry.objects.filter(connector=connector, status=OutboxEntry.Status.PENDING,
                                      locked_until__isnull=False).update(locked_until=timezone.now())


def kill_round(bu, user, connector, crm, m: int, *, kill_at: float = 0.3, timeout: float = 600) -> dict[str, Any]:
    """SIGKILL the worker subprocess once ``kill_at`` of the round's work is visible, then let a new one finish."""
    r = Round(bu, user, connector, crm, m, "kill -9")
    r.start()
    proc = worker_process(connector.pk)
    deadline = time.time() + timeout
    progress = 0.0
    try:
        while time.time() < deadline:
            progress = r.progress()
            if progress >= kill_at:
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log(f"kill -9: worker killed at {progress:.0%} of the round")
        expire_leases(connector)
        proc = worker_process(connector.pk)
        converged = r.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    out = r.check()
    out["killed_at"] = round(progress, 2)
    out["converged"] = converged
    return out


def in_process_worker(connector):
    from django.db import close_old_connections

    from loopline.connector.sync.worker import ConnectorWorker

    worker = ConnectorWorker([connector.pk])

    def loop():
        worker.run()
        close_old_connections()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return worker, thread


def fault_round(bu, user, connector, crm, m: int, *, rates: dict[str, float], timeout: float = 900,
                seed: int = 5) -> tuple[dict[str, Any], Round]:
    """The sandbox fails ``rates`` of the API calls while the worker syncs a round both ways."""
    r = Round(bu, user, connector, crm, m, "faults " + ",".join(f"{k}={v:g}" for k, v in rates.items()))
    r.start()
    crm.faults(error_rates=rates, seed=seed, merge=True)
    worker, thread = in_process_worker(connector)
    try:
        converged = r.wait(timeout)
    finally:
        worker.stop()
        thread.join(60)
        crm.faults(error_rates={}, merge=True)
    out = r.check()
    out["converged"] = converged
    return out, r


def rerun_round(connector, crm, previous: Round, *, reimport: bool = True, timeout: float = 600) -> dict[str, Any]:
    """The same batch again: the round's prospects re-queued and re-drained, the initial import re-run."""
    from loopline.connector.sync import pull
    from loopline.prospects.models import Prospect

    before = Prospect.objects.filter(bu=previous.bu).count()
    previous.label = "re-run"
    previous.requeue()
    worker, thread = in_process_worker(connector)
    try:
        converged = previous.wait(timeout)
    finally:
        worker.stop()
        thread.join(60)
    if reimport:
        pull.initial_import(connector)
    out = previous.check()
    extra = Prospect.objects.filter(bu=previous.bu).count() - before
    if extra:
        log(f"re-run: {extra} prospects appeared")
    out["duplicates"] += max(0, extra)
    out["converged"] = converged
    return out
