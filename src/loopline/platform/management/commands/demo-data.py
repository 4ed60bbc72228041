"""``loopline demo-data [--prospects N]``: the Demo business unit with users, campaigns and sample prospects."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create (or complete) the Demo business unit: users in each role, campaigns, custom fields, prospects."

    def add_arguments(self, parser):
        parser.add_argument("--prospects", type=int, default=200, help="Sample prospects (default: 200).")

    def handle(self, *args, **opts):
        from loopline.platform.demo import build_demo

        if opts["prospects"] < 0 or opts["prospects"] > 100_000:
            raise CommandError("--prospects must be between 0 and 100000")
        summary = build_demo(opts["prospects"])
        self.stdout.write(
            f"Demo business unit '{summary.bu.name}': {summary.prospects_total} prospects "
            f"({summary.prospects_created} new)"
        )
        for role, user in summary.users.items():
            self.stdout.write(f"  {role:14} {user.email}")
        self.stdout.write(f"  password (all demo users): {summary.password}")
