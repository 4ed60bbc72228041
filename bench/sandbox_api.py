"""crmsandbox API benchmark: seed N leads through the CLI, serve the org over HTTPS and measure the calls a sync
engine makes. Progress goes to stderr; the last stdout line is JSON:

    {"leads", "query_page_2000_ms_p50", "composite_200_upsert_ms_p50", "get_by_id_per_s", "seed_records_per_s"}

Usage: ``python bench/sandbox_api.py --leads 1000000 [--pages 100] [--upserts 30] [--get-seconds 10]
[--clients 8] [--keep DIR]``. Targets at 1,000,000 leads: page <= 150 ms, upsert <= 250 ms, >= 1,000 GETs/s,
seeding >= 20,000 records/s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt

SRC = Path(__file__).resolve().parent.parent / "src"
V = "/services/data/v59.0"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-m", "crmsandbox", *args], check=True, capture_output=True,
                          text=True, env=env).stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--leads", type=int, default=100_000)
    ap.add_argument("--pages", type=int, default=100, help="query pages to time (2,000 records each)")
    ap.add_argument("--upserts", type=int, default=30, help="200-record collection upserts to time")
    ap.add_argument("--get-seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections (threads) for GETs")
    ap.add_argument("--keep", default=None, help="use (and keep) this data directory")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    data = tmp / "org"
    port = free_port()
    proc = None
    try:
        log(f"init {data} on port {port}")
        cli("init", "--data", str(data), "--port", str(port), env=env)
        log(f"seeding {args.leads} leads")
        t0 = time.perf_counter()
        cli("seed", "--data", str(data), "--leads", str(args.leads), env=env)
        seed_s = time.perf_counter() - t0
        seed_rate = args.leads / seed_s
        log(f"seeded in {seed_s:.1f}s ({seed_rate:,.0f} records/s)")
        info = json.loads(cli("info", "--data", str(data), env=env))
        proc = subprocess.Popen([sys.executable, "-m", "crmsandbox", "serve", "--data", str(data)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ctx = ssl.create_default_context(cafile=info["ca_file"])
        base = info["instance_url"]
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/services/data/", verify=ctx, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        key = Path(info["default_app"]["private_key_file"]).read_text()
        assertion = jwt.encode({"iss": info["default_app"]["consumer_key"], "sub": info["integration_user"]["username"],
                                "aud": info["login_url"], "exp": int(time.time()) + 3600}, key, algorithm="RS256")
        tok = httpx.post(base + "/services/oauth2/token", verify=ctx, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}).json()
        headers = {"Authorization": f"Bearer {tok['access_token']}"}
        # the benchmark makes more calls than the default daily allowance
        with httpx.Client(base_url=base, verify=ctx, headers=headers, timeout=120) as c:
            admin_tok = None
            admin = info["admin"]
            pw = httpx.post(base + "/services/oauth2/token", verify=ctx, data={
                "grant_type": "password", "client_id": info["default_app"]["consumer_key"],
                "client_secret": info["default_app"]["consumer_secret"], "username": admin["username"],
                "password": admin["password"]}).json()
            admin_tok = pw["access_token"]
            c.post("/_sandbox/faults", json={"daily_api_limit": 10_000_000, "reset_usage": True},
                   headers={"Authorization": f"Bearer {admin_tok}"}).raise_for_status()

            # ---- query pages
            start = (datetime.now(UTC) - timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
            soql = ("SELECT Id, FirstName, LastName, Email, Company, SystemModstamp FROM Lead "
                    f"WHERE SystemModstamp >= {start}")
            page_ms: list[float] = []
            ids: list[str] = []
            t = time.perf_counter()
            r = c.get(V + "/query", params={"q": soql})
            page_ms.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
            body = r.json()
            ids += [x["Id"] for x in body["records"]]
            while not body["done"] and len(page_ms) < args.pages:
                t = time.perf_counter()
                r = c.get(body["nextRecordsUrl"])
                page_ms.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                body = r.json()
                ids += [x["Id"] for x in body["records"]]
            log(f"query: {len(page_ms)} pages, p50 {statistics.median(page_ms):.1f} ms, "
                f"max {max(page_ms):.1f} ms (totalSize {body['totalSize']})")

            # ---- 200-record upserts on External_Id__c (half updates of earlier rounds, half inserts)
            up_ms: list[float] = []
            for i in range(args.upserts):
                recs = [{"attributes": {"type": "Lead"}, "External_Id__c": f"bench-{(i + k) % (args.upserts + 200)}",
                         "LastName": f"Up{i}-{k}", "Company": "Bench", "Email": f"up{i}.{k}@example.com",
                         "Title": f"T{i}"} for k in range(200)]
                t = time.perf_counter()
                r = c.patch(V + "/composite/sobjects/Lead/External_Id__c",
                            json={"allOrNone": False, "records": recs})
                up_ms.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                assert all(x["success"] for x in r.json()), r.text[:500]
            log(f"upsert: {len(up_ms)} x 200, p50 {statistics.median(up_ms):.1f} ms")

        # ---- single-record GETs: --clients threads, each with its own HTTPS keep-alive connection. The stdlib
        # http.client costs ~0.15 ms CPU per request against httpx's ~0.5 ms: with httpx the client process (one
        # GIL) saturates long before the server does, and the number measures the client.
        sample = ids[:20000] or ["00Q000000000001AAA"]
        host, port_s = base.removeprefix("https://").rsplit(":", 1)
        count = [0] * args.clients
        errors = [0] * args.clients
        conns = []
        for _ in range(args.clients):
            conn = http.client.HTTPSConnection(host, int(port_s), context=ctx, timeout=30)
            conn.request("GET", f"{V}/sobjects/Lead/{sample[0]}", headers=headers)  # connect + TLS handshake
            conn.getresponse().read()
            conns.append(conn)
        stop_at = [0.0]
        barrier = threading.Barrier(args.clients + 1)

        def worker(k: int) -> None:
            rnd = random.Random(k)
            conn = conns[k]
            barrier.wait()
            while time.perf_counter() < stop_at[0]:
                conn.request("GET", f"{V}/sobjects/Lead/{rnd.choice(sample)}", headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    count[k] += 1
                else:
                    errors[k] += 1

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.clients)]
        for th in threads:
            th.start()
        t = time.perf_counter()
        stop_at[0] = t + args.get_seconds
        barrier.wait()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t
        for conn in conns:
            conn.close()
        gets = sum(count) / elapsed
        log(f"GET by id: {sum(count)} in {elapsed:.1f}s over {args.clients} keep-alive connections = "
            f"{gets:,.0f}/s ({sum(errors)} errors)")
        result = {"leads": args.leads, "query_page_2000_ms_p50": round(statistics.median(page_ms), 1),
                  "composite_200_upsert_ms_p50": round(statistics.median(up_ms), 1),
                  "get_by_id_per_s": round(gets), "seed_records_per_s": round(seed_rate)}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
