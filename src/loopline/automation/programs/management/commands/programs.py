"""``loopline programs run-due`` (one pass) and ``loopline programs worker`` (a loop): the engagement-program engine.

Any number of workers may run at once; they claim disjoint batches. Killing one at any moment loses nothing and
repeats nothing (its batch is claimed again when the lease runs out)."""

from __future__ import annotations

import signal
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections


class Command(BaseCommand):
    help = "Run the engagement-program engine."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["run-due", "worker"])
        parser.add_argument("--batch-size", type=int, default=2000)
        parser.add_argument("--idle", type=float, default=2.0, help="seconds to sleep when nothing is due (worker)")
        parser.add_argument("--lease", type=float, default=None, help="lease seconds of a claimed batch")

    def handle(self, *args, action, batch_size, idle, lease, **options):
        from loopline.automation.programs import runner

        if lease is not None:
            runner.LEASE_SECONDS = lease
        if action == "run-due":
            self.stdout.write(str(runner.run_due(batch_size=batch_size)))
            return
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        while not stopping:
            close_old_connections()
            stats = runner.run_due(batch_size=batch_size, time_budget=30.0)
            if not stats["batches"]:
                time.sleep(idle)
