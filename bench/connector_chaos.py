"""CRM connector chaos run: duplicates and lost records under crashes and a misbehaving CRM ([R25], [R26]).

    python bench/connector_chaos.py [--records 2000] [--kills 3] [--database-url URL] [--latency-ms 50]

Starts a crmsandbox (seeded with ``--records`` leads) and a throw-away database, imports the leads, resumes the
connector, then runs rounds of ``--records`` changes each way (new assigned prospects to create in the CRM, one in
ten without an email; CRM leads edited with a marker) — see bench/_connector_checks.py:

1. ``--kills`` rounds with the worker subprocess killed by SIGKILL at 20%, 50%, 80%, ... of the round, restarted;
2. a round with 5% ``UNABLE_TO_LOCK_ROW``, 5% ``SERVER_UNAVAILABLE`` (503), 2% ``DROP`` and 3% ``LOST_RESPONSE``
   (processed, answer lost) injected on every API call;
3. the last round's batch re-queued and re-drained, and the initial import re-run.

The last line on stdout is one JSON object; its closing keys: ``records, rounds, converged, duplicates, lost``.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import bench_environment, log, print_figures, start_crm_sandbox

FAULTS = {"UNABLE_TO_LOCK_ROW": 0.05, "SERVER_UNAVAILABLE": 0.05, "DROP": 0.02, "LOST_RESPONSE": 0.03}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    crm = start_crm_sandbox(leads=args.records)
    result: dict = {}
    try:
        with bench_environment(args.database_url, prefix="bench-chaos") as vendor:
            result["database"] = vendor
            result.update(run(crm, args))
    finally:
        crm.stop()
    closing = ("records", "rounds", "converged", "duplicates", "lost")
    print_figures(result, closing)


def run(crm, args) -> dict:
    import _connector_checks as checks

    from loopline.accounts import services as accounts
    from loopline.accounts.access import Access
    from loopline.connector import keys, services
    from loopline.connector.sync import pull
    from loopline.platform import crypto

    bu = accounts.create_business_unit("Chaos", postal_address="1 Chaos St")
    user = accounts.create_user(f"admin-{uuid.uuid4().hex[:6]}@bench.test", password="x" * 20, first_name="Admin")
    accounts.set_membership(bu, user, "administrator")
    access = Access.for_user(user, bu)
    connector = services.create_connector(access)
    private_pem, cert_pem = keys.generate_key_pair("chaos")
    consumer_key = crm.add_app("loopline-chaos", cert_pem)
    connector.private_key, connector.certificate = crypto.encrypt(private_pem), cert_pem
    connector.save()
    services.update_connection(access, connector, {"login_url": crm.login_url, "consumer_key": consumer_key,
                                                   "username": crm.integration_username, "ca_file": crm.ca_file})
    ok, message = services.verify_connection(access, connector)
    assert ok, message
    connector.refresh_from_db()
    crm.faults(latency_ms=args.latency_ms, jitter_ms=args.latency_ms / 5, seed=3)
    log("initial import")
    pull.initial_import(connector)
    services.resume(access, connector)
    connector.refresh_from_db()

    m = args.records
    rounds: list[dict] = []
    started = time.perf_counter()
    for i in range(args.kills):
        kill_at = min(0.9, 0.2 + 0.3 * i)
        log(f"round {i + 1}: kill -9 at {kill_at:.0%}")
        rounds.append({"kind": "kill", **checks.kill_round(bu, user, connector, crm, m, kill_at=kill_at)})
    log("faults round: " + ", ".join(f"{k} {v:.0%}" for k, v in FAULTS.items()))
    faults, batch = checks.fault_round(bu, user, connector, crm, m, rates=FAULTS)
    rounds.append({"kind": "faults", **faults})
    log("re-run of the same batch")
    rounds.append({"kind": "rerun", **checks.rerun_round(connector, crm, batch)})
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "detail": rounds,
        "records": m,
        "rounds": len(rounds),
        "converged": all(r.get("converged") for r in rounds),
        "duplicates": sum(r["duplicates"] for r in rounds),
        "lost": sum(r["lost"] for r in rounds),
    }


if __name__ == "__main__":
    main()
