"""CRM connector chaos run (issue #5 item 7; [R9]–[R33], [R25]–[R27]).

    python bench/connector_chaos.py --edits N --fault-rate 0.05 --kills K [--database-url URL] [--latency-ms 100]

Starts a crmsandbox (seeded with leads, contacts and CRM users) and a throw-away database, imports the CRM, resumes
the connector and runs the sync worker as a subprocess. Then N random operations on both sides run concurrently
(field, email, owner and opt-out edits, CRM deletes/undeletes, merges, lead conversions, marketing data sharing
flips that move a record out of the BU's rule and back, new records on both sides, values the CRM rejects) while the
sandbox fails ``--fault-rate`` of the API calls (UNABLE_TO_LOCK_ROW, 503, dropped connections, lost answers), answers
REQUEST_LIMIT_EXCEEDED for a few seconds once, and the worker is killed with SIGKILL ``--kills`` times. After
quiescence every record is checked against what the sync rules say it must be — see bench/_chaos.py.

``--rounds M`` also runs the older correctness rounds afterwards (M new prospects and M CRM edits each: a SIGKILL
round, a faults round and a re-run of the same batch; bench/_connector_checks.py).

The last line on stdout is one JSON object; its closing keys:
``edits, seconds, mismatches, duplicates, lost, errors_in_queue, converge_s``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import bench_environment, log, print_figures

CLOSING = ("edits", "seconds", "mismatches", "duplicates", "lost", "errors_in_queue", "converge_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=10_000)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=4, help="concurrent editors")
    parser.add_argument("--leads", type=int, default=None, help="seeded CRM leads (default: edits / 4, ≥ 200)")
    parser.add_argument("--contacts", type=int, default=None, help="seeded CRM contacts (default: edits / 10, ≥ 50)")
    parser.add_argument("--settle-timeout", type=float, default=240, help="seconds to wait for quiescence")
    parser.add_argument("--rounds", type=int, default=0, help="also run the older correctness rounds of M records")
    args = parser.parse_args()

    import _chaos

    leads = args.leads if args.leads is not None else max(200, args.edits // 4)
    contacts = args.contacts if args.contacts is not None else max(50, args.edits // 10)
    log(f"starting crmsandbox with {leads} leads and {contacts} contacts")
    crm = _chaos.start_sandbox(leads=leads, contacts=contacts)
    result: dict = {"leads": leads, "contacts": contacts, "fault_rate": args.fault_rate,
                    "latency_ms": args.latency_ms}
    try:
        with bench_environment(args.database_url, prefix="bench-chaos") as vendor:
            result["database"] = vendor
            after = (lambda bu, user, connector: {"rounds": old_rounds(bu, user, connector, crm, args.rounds)}) \
                if args.rounds else None
            result.update(_chaos.run_chaos(crm, edits=args.edits, fault_rate=args.fault_rate, kills=args.kills,
                                           latency_ms=args.latency_ms, seed=args.seed, threads=args.threads,
                                           settle_timeout=args.settle_timeout,
                                           after=after))
    finally:
        crm.stop()
    print_figures(result, CLOSING)


def old_rounds(bu, user, connector, crm, m: int) -> dict:
    """The #4 rounds: SIGKILL mid-batch, a faults round, the same batch re-run ([R25], [R26])."""
    import _connector_checks as checks

    faults = {"UNABLE_TO_LOCK_ROW": 0.05, "SERVER_UNAVAILABLE": 0.05, "DROP": 0.02, "LOST_RESPONSE": 0.03}
    rounds = [{"kind": "kill", **checks.kill_round(bu, user, connector, crm, m, kill_at=0.5)}]
    out, batch = checks.fault_round(bu, user, connector, crm, m, rates=faults)
    rounds.append({"kind": "faults", **out})
    rounds.append({"kind": "rerun", **checks.rerun_round(connector, crm, batch)})
    return {"detail": rounds, "duplicates": sum(r["duplicates"] for r in rounds),
            "lost": sum(r["lost"] for r in rounds), "converged": all(r.get("converged") for r in rounds)}


if __name__ == "__main__":
    main()
