"""``loopline scheduler``: fire periodic schedules. Run one or more; only the lease holder fires."""

from __future__ import annotations

import importlib
import signal

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the periodic scheduler (safe to run several: one holds the lease, the others stand by)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--lease-seconds",
            type=float,
            default=30.0,
            help="A standby scheduler takes over this long after the active one died (default: 30).",
        )
        parser.add_argument("--tick", type=float, default=1.0, help="Seconds between rounds (default: 1).")
        parser.add_argument("--once", action="store_true", help="Run one round, then exit (cron-style).")
        parser.add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            help="Import this module first (it may register extra schedules). Repeatable.",
        )
        parser.add_argument("--list", action="store_true", help="List the registered schedules and exit.")

    def handle(self, *args, **opts):
        from loopline.platform.scheduler import Scheduler, schedules

        for module in opts["imports"]:
            importlib.import_module(module)
        if opts["list"]:
            for s in schedules():
                self.stdout.write(f"{s.name:40} every {s.every}  ({'task' if s.is_task else 'in scheduler'})")
            return
        scheduler = Scheduler(lease_seconds=opts["lease_seconds"], tick_seconds=opts["tick"])
        if opts["once"]:
            fired = scheduler.tick()
            scheduler.release()
            self.stdout.write(f"Fired: {', '.join(fired) or 'nothing'}")
            return

        def stop(signum, frame):
            scheduler.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"Scheduler {scheduler.holder} running {len(schedules())} schedule(s)")
        self.stdout.flush()
        scheduler.run()
