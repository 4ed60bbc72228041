"""``loopline export --bu SLUG``: export prospects to CSV (the same filters as the prospect list)."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from loopline.accounts.models import BusinessUnit
from loopline.prospects import exporting
from loopline.prospects.models import Prospect


class Command(BaseCommand):
    help = "Export prospects of a business unit to CSV (stdout or --out FILE)."

    def add_arguments(self, parser):
        parser.add_argument("--bu", required=True, help="Business unit slug")
        parser.add_argument("--out", help="Output file (default: standard output)")
        parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                            help="A prospect-list filter, e.g. q=ada@, grade=A, tag=3, starred=yes (repeatable)")
        parser.add_argument("--as-user", help="Export what this user sees (their role's scoping); default: the whole BU")
        parser.add_argument("--tags", action="store_true", help="Add a Tags column")
        parser.add_argument("--include-deleted", action="store_true", help="Also export prospects in the recycle bin")

    def handle(self, *args, **opts):
        from loopline.accounts.access import Access
        from loopline.accounts.models import User
        from loopline.prospects.selectors import FILTER_PARAMS, filter_prospects

        bu = BusinessUnit.objects.filter(slug=opts["bu"]).first()
        if bu is None:
            raise CommandError(f"No business unit with the slug '{opts['bu']}'")
        params = {}
        for item in opts["filter"]:
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in FILTER_PARAMS:
                raise CommandError(f"--filter wants KEY=VALUE with KEY one of {', '.join(FILTER_PARAMS)}; got '{item}'")
            params[key.strip()] = value
        if opts["as_user"]:
            user = User.objects.filter(email=opts["as_user"].strip().lower()).first()
            if user is None:
                raise CommandError(f"No user {opts['as_user']}")
            qs = filter_prospects(Access.for_user(user, bu), params)
        else:
            if params.get("assigned") == "me":
                raise CommandError("assigned=me needs --as-user")
            if opts["include_deleted"]:
                if params:
                    raise CommandError("--include-deleted exports the whole BU; it cannot be combined with --filter")
                qs = Prospect.objects.filter(bu_id=bu.pk).order_by("id")
            else:
                qs = filter_prospects(_SystemAccess(bu), params)
        if opts["out"]:
            with open(opts["out"], "w", newline="", encoding="utf-8-sig") as fh:
                count = exporting.write_csv(qs, fh, bu_id=bu.pk, include_tags=opts["tags"])
            self.stderr.write(f"Exported {count} prospects to {opts['out']}")
        else:
            count = exporting.write_csv(qs, sys.stdout, bu_id=bu.pk, include_tags=opts["tags"])
            self.stderr.write(f"Exported {count} prospects")


class _SystemAccess:
    """The operator's view of a BU from the command line: every prospect, no role scoping."""

    sees_all_prospects = True

    def __init__(self, bu):
        self.bu = bu
        self.user = None

