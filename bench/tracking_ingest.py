"""Tracking capture benchmark: page-view hits per second through a real HTTP server, with a SIGKILL mid-run.

    python bench/tracking_ingest.py --seconds 20 [--database-url URL] [--batch 10] [--connections 64]

Sets up a throw-away data directory and database (SQLite WAL by default, or a fresh database on the PostgreSQL
server of --database-url), runs granian (WSGI, 2 workers) and a separate load-generator process on loopback:

1. baseline: the same requests against a minimal Django view answering 204 (``/t/ping``), same server config;
2. capture: hits against ``/t/<key>/hit`` for --seconds (throughput and latency);
3. crash: load again, SIGKILL the server half-way, restart it, keep loading;
4. drain: the ingester turns every staged hit into activities; stored = page views written + hits still staged.

Prints one JSON line last: hits_per_s, accepted, stored, lost, baseline_hits_per_s, p99_ms (+ context keys).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- Load generator (runs in its own process) ------------------------------------------------------------------------


async def _worker(host, port, path, bodies, deadline, stats, lat):
    reader = writer = None
    i = 0
    while time.perf_counter() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            body = bodies[i % len(bodies)]
            i += 1
            req = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/plain\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            t0 = time.perf_counter()
            writer.write(req)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("closed")
            status = int(status_line.split()[1])
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value.strip())
            payload = await reader.readexactly(length) if length else b""
            lat.append(time.perf_counter() - t0)
            stats["responses"] += 1
            if status == 200 and payload:
                stats["accepted"] += json.loads(payload).get("accepted", 0)
            elif status == 204:
                stats["accepted"] += stats["batch"]
            else:
                stats["errors"] += 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats["errors"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)


async def _load(host, port, path, seconds, connections, batch, key):
    bodies = []
    for _ in range(200):
        vid = uuid.uuid4().hex
        hits = [{"type": "pageview", "url": f"https://www.example.com/page/{j}?utm_source=bench",
                 "title": f"Page {j}", "referrer": "https://search.example/"} for j in range(batch)]
        bodies.append(json.dumps({"visitor": vid, "hits": hits}).encode())
    stats = {"responses": 0, "accepted": 0, "errors": 0, "batch": batch}
    lat: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*[_worker(host, port, path, bodies, deadline, stats, lat) for _ in range(connections)])
    elapsed = time.perf_counter() - started
    lat.sort()
    def p(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None

    return {**stats, "seconds": round(elapsed, 2), "hits_per_s": round(stats["accepted"] / elapsed),
            "p50_ms": p(0.50), "p99_ms": p(0.99)}


def loadgen_main(args) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_load("127.0.0.1", args.port, args.path, args.seconds, args.connections, args.batch,
                               args.key))
    print(json.dumps(result))


def run_loadgen(port, path, seconds, connections, batch, key="") -> subprocess.Popen:
    return subprocess.Popen([PY, __file__, "--loadgen", "--port", str(port), "--path", path, "--seconds",
                             str(seconds), "--connections", str(connections), "--batch", str(batch), "--key", key],
                            stdout=subprocess.PIPE, text=True)


def collect(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    return json.loads(out.strip().splitlines()[-1])


# --- Orchestration ---------------------------------------------------------------------------------------------------


def start_server(env, port, workers, threads) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(Path(PY).parent / "granian"), "--interface", "wsgi", "--workers", str(workers), "--blocking-threads",
         str(threads), "--host", "127.0.0.1", "--port", str(port), "--backlog", "2048", "--log-level", "warning",
         "--no-respawn-failed-workers", "loopline.config.wsgi:application"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120  # a busy machine starts Django slowly
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /t/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 204"):
                    return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def kill_server(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--batch", type=int, default=10, help="hits per request (the tracker batches)")
    parser.add_argument("--connections", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=12)
    parser.add_argument("--loadgen", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="")
    parser.add_argument("--key", default="")
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="loopline-bench-"))
    env = {**os.environ, "LOOPLINE_DATA_DIR": str(tmp), "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-secret"),
           "LOOPLINE_TRACKING_RATE_PER_IP": "1000000", "LOOPLINE_TRACKING_BURST_PER_IP": "1000000",
           "LOOPLINE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO / "src"),
           "DJANGO_SETTINGS_MODULE": "loopline.config.settings"}
    pg_db = None
    if args.database_url and args.database_url.startswith("postgres"):
        base, _, _ = args.database_url.rpartition("/")
        pg_db = f"loopline_bench_{uuid.uuid4().hex[:8]}"
        env["DATABASE_URL"] = f"{base}/{pg_db}"
        subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE {pg_db}"], check=True)
    elif args.database_url:
        env["DATABASE_URL"] = args.database_url
    server = None
    try:
        setup = subprocess.run([PY, "-c", SETUP], env=env, capture_output=True, text=True, check=True)
        key = setup.stdout.strip().splitlines()[-1]
        port = free_port()
        server = start_server(env, port, args.workers, args.threads)
        warm = run_loadgen(port, "/t/ping", 1.5, args.connections, args.batch)
        collect(warm)
        base = collect(run_loadgen(port, "/t/ping", max(3.0, args.seconds / 2), args.connections, args.batch))
        cap = collect(run_loadgen(port, f"/t/{key}/hit", args.seconds, args.connections, args.batch))
        # Crash test: SIGKILL the server while hits are being acknowledged, then restart and keep going.
        crash_seconds = max(4.0, args.seconds / 2)
        lg = run_loadgen(port, f"/t/{key}/hit", crash_seconds, args.connections, args.batch)
        time.sleep(crash_seconds / 3)
        kill_server(server)
        server = start_server(env, port, args.workers, args.threads)
        crash = collect(lg)
        kill_server(server)
        server = None
        drain = subprocess.run([PY, "-c", DRAIN], env=env, capture_output=True, text=True, check=True)
        counts = json.loads(drain.stdout.strip().splitlines()[-1])
        accepted = cap["accepted"] + crash["accepted"]
        stored = counts["stored"]
        figures = {
            "hits_per_s": cap["hits_per_s"], "accepted": accepted, "stored": stored,
            "lost": max(0, accepted - stored), "baseline_hits_per_s": base["hits_per_s"], "p99_ms": cap["p99_ms"],
            "p50_ms": cap["p50_ms"], "ratio_to_baseline": round(cap["hits_per_s"] / max(1, base["hits_per_s"]), 2),
            "hits_per_request": args.batch, "connections": args.connections, "errors": cap["errors"],
            "crash_run_errors": crash["errors"], "ingest_hits_per_s": counts["ingest_hits_per_s"],
            "database": "postgresql" if pg_db else "sqlite", "seconds": args.seconds,
        }
        print(json.dumps(figures))
    finally:
        if server is not None:
            kill_server(server)
        if pg_db:
            subprocess.run(["psql", f"{env['DATABASE_URL'].rpartition('/')[0]}/postgres", "-qc",
                            f"DROP DATABASE IF EXISTS {pg_db} WITH (FORCE)"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


SETUP = """
import django; django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from loopline.accounts import services
from loopline.tracking.services import tracker_config
bu = services.create_business_unit("Bench BU")
print(tracker_config(bu).key)
"""

DRAIN = """
import django, json, time; django.setup()
from loopline.tracking.ingest import ingest_all, pending_count
from loopline.prospects.models import Activity, ActivityType
staged = pending_count()
t0 = time.perf_counter()
r = ingest_all()
dt = time.perf_counter() - t0
views = Activity.objects.filter(type=ActivityType.PAGE_VIEW).count()
print(json.dumps({"stored": views + pending_count(), "staged_before": staged,
                  "ingest_hits_per_s": round(r.hits / dt) if dt else 0}))
"""

if __name__ == "__main__":
    main()
