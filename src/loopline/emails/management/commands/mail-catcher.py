"""``loopline mail-catcher``: the demo inbox (local SMTP catcher) and the bounce mailbox, until stopped."""

import signal
import threading

from django.core.management.base import BaseCommand

from loopline.emails.demo import start_demo_mail


class Command(BaseCommand):
    help = "Run the demo inbox (SMTP on EMAIL_PORT, default 2525) and the bounce mailbox (LOOPLINE_BOUNCE_PORT, 2526)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=None)
        parser.add_argument("--bounce-port", type=int, default=None)

    def handle(self, *args, **opts):
        controllers = start_demo_mail(port=opts["port"], bounce_port=opts["bounce_port"])
        for c in controllers:
            self.stdout.write(f"mail receiver listening on {c.hostname}:{c.port}")
        self.stdout.flush()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            for c in controllers:
                c.stop()
