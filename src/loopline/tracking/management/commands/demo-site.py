"""``loopline demo-site --port 8001``: serve a 3-page sample website with the tracker and an embedded form."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from loopline.accounts.models import BusinessUnit
from loopline.tracking import demo


class Command(BaseCommand):
    help = "Serve a tiny sample website (another origin) that uses Loopline's tracker and an embedded form."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--bu", help="Business unit slug (default: the first one)")
        parser.add_argument("--base-url", default="", help="Loopline's public URL (default LOOPLINE_PUBLIC_URL)")

    def handle(self, *args, **opts):
        qs = BusinessUnit.objects.order_by("pk")
        bu = qs.filter(slug=opts["bu"]).first() if opts["bu"] else qs.first()
        if bu is None:
            raise CommandError("No business unit yet: create one first (loopline createadmin / the UI).")
        origin = f"http://{opts['host']}:{opts['port']}"
        config, form = demo.ensure_demo_assets(bu, origin=origin)
        base = (opts["base_url"] or settings.PUBLIC_BASE_URL).rstrip("/")
        server = demo.make_server(opts["port"], host=opts["host"], base_url=base, tracker_key=config.key,
                                  form_key=form.key)
        self.stdout.write(f"Demo site for {bu.name} on {origin}/ (Loopline at {base}); Ctrl+C to stop.")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
