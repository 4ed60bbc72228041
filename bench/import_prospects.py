#!/usr/bin/env python
"""Benchmark: CSV import speed. Prints one JSON line: {"rows", "seconds", "rows_per_s", "rejected"}.

    python bench/import_prospects.py --rows 100000 [--database-url postgres://postgres@127.0.0.1:5432/postgres]

Builds a CSV of N realistic rows (standard fields, three custom fields, 0.1 % bad rows), then times the real import
path (``importing.run_job``: parsing, validation with the shared field rules, batched upserts, activities, events, the
rejects report, Job progress) into an empty business unit. Target: >= 5,000 rows/s on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_environment, log

FIRST = ["Ada", "Grace", "Alan", "Linus", "Margaret", "Edsger", "Barbara", "Donald", "Zoë", "José", "Ken", "Radia"]
LAST = ["Lovelace", "Hopper", "Turing", "Torvalds", "Hamilton", "Dijkstra", "Liskov", "Knuth", "Müller", "García"]
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell", "Cyberdyne"]
CITIES = ["Paris", "Berlin", "Lisbon", "Austin", "Oslo", "Kyoto", "Lima", "Accra", "Perth", "Quebec"]


def make_csv(path: Path, rows: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["Email", "First Name", "Last Name", "Company", "Job Title", "City", "Country", "Phone",
                    "Employees", "Annual Revenue", "Opted Out", "Seats", "Plan", "Renewal"])
        for i in range(rows):
            email = f"user{i}@{rnd.choice(COMPANIES).lower()}.example"
            if i % 1000 == 999:
                email = f"broken-{i}-at-example"  # 0.1 % invalid rows, rejected with a reason
            w.writerow([email, rnd.choice(FIRST), rnd.choice(LAST), rnd.choice(COMPANIES), "Engineer",
                        rnd.choice(CITIES), "FR", f"+33 1 {rnd.randint(10, 99)} {rnd.randint(10, 99)} 00",
                        rnd.randint(1, 5000), f"{rnd.randint(1, 10**7)}.00", rnd.choice(["yes", "no", ""]),
                        rnd.randint(1, 900), rnd.choice(["Free", "Pro"]), f"2027-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}"])


def _server_cpu_reader(vendor: str):
    """CPU seconds used so far by this connection's PostgreSQL backend (same machine only); 0 for SQLite."""
    if vendor != "postgresql":
        return lambda: 0.0
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    stat = Path(f"/proc/{pid}/stat")
    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a remote server: not measurable
            return 0.0
        return (int(fields[11]) + int(fields[12])) / ticks

    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--database-url", default="", help="PostgreSQL server URL (a temporary database is created)")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    with bench_environment(args.database_url, prefix="loopline-bench-import") as vendor:
        from django.conf import settings

        from loopline.accounts import services as account_services
        from loopline.prospects import importing
        from loopline.prospects.models import CustomField, Prospect

        bu = account_services.create_business_unit("Bench")
        CustomField.objects.create(bu=bu, name="Seats", api_name="seats", type="number", min_value=0, max_value=1000)
        CustomField.objects.create(bu=bu, name="Plan", api_name="plan", type="dropdown", options=["Free", "Pro"])
        CustomField.objects.create(bu=bu, name="Renewal", api_name="renewal", type="date")
        path = Path(settings.DATA_DIR) / "bench.csv"
        log(f"writing {args.rows} rows to {path}")
        make_csv(path, args.rows)
        relative = importing.save_upload([path.read_bytes()], "bench.csv")
        job = importing.create_job(bu, relative, "bench.csv")
        mapping = importing.build_mapping(importing.read_csv(importing.media_path(relative))[0],
                                          importing.field_specs(bu.pk))
        importing.configure_job(job, mapping, importing.ImportOptions(batch_size=args.batch_size))
        last = [0.0]

        def progress(result, total):
            now = time.perf_counter()
            if now - last[0] > 2:
                last[0] = now
                log(f"{vendor}: {result.rows}/{total} rows")

        log(f"importing into {vendor}")
        server_cpu = _server_cpu_reader(vendor)
        started, cpu_started, server_started = time.perf_counter(), time.process_time(), server_cpu()
        job = importing.run_job(job.pk, progress=progress)
        seconds = time.perf_counter() - started
        cpu, server = time.process_time() - cpu_started, server_cpu() - server_started
        log(f"{vendor}: {seconds:.1f}s wall; CPU {cpu:.1f}s in this process + {server:.1f}s in the database server "
            f"= {args.rows / (cpu + server):.0f} rows per CPU-second (load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} CPUs)")
        assert job.status == job.Status.SUCCEEDED, job.error
        stored = Prospect.objects.filter(bu=bu).count()
        log(f"{vendor}: {job.result['created']} created, {job.result['rejected']} rejected, {stored} stored")
        assert stored == job.result["created"]
    print(json.dumps({"rows": args.rows, "seconds": round(seconds, 2), "rows_per_s": round(args.rows / seconds),
                      "rejected": job.result["rejected"]}))


if __name__ == "__main__":
    main()
