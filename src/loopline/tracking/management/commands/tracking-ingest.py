"""``loopline tracking-ingest``: the ingester process turning staged hits into visitors and activities."""

from django.core.management.base import BaseCommand

from loopline.tracking import ingest


class Command(BaseCommand):
    help = "Ingest staged tracking hits continuously (or once with --once)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Drain what is pending, then exit.")
        parser.add_argument("--batch", type=int, default=1000, help="Requests (rows of up to 50 hits) per batch.")

    def handle(self, *args, **opts):
        if opts["once"]:
            r = ingest.ingest_all(opts["batch"])
            self.stdout.write(f"Ingested {r.hits} hits into {r.activities} activities ({r.dropped} dropped).")
            return
        ingest.run_forever(limit=opts["batch"])
