"""``loopline connector setup|status|pause|resume|import|sync-prospect|send-to-loopline|errors|worker``."""

from __future__ import annotations

import json
import signal

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from loopline.accounts.access import Access
from loopline.accounts.models import BusinessUnit, Membership


def _bu(value: str) -> BusinessUnit:
    bu = BusinessUnit.objects.filter(slug=value).first()
    if bu is None and value.isdigit():
        bu = BusinessUnit.objects.filter(pk=int(value)).first()
    if bu is None:
        raise CommandError(f"No business unit {value!r} (give its slug or id)")
    return bu


def _admin_access(bu: BusinessUnit, email: str | None) -> Access:
    members = Membership.objects.select_related("user", "role", "bu").filter(bu=bu, user__is_active=True)
    if email:
        members = members.filter(user__email__iexact=email)
    for m in members.order_by("id"):
        if m.can("connector.edit"):
            return Access.for_membership(m)
    raise CommandError(f"No administrator{' ' + email if email else ''} in {bu.slug}")


class Command(BaseCommand):
    help = "Manage the CRM connector of a business unit."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)

        def with_bu(name, help_text):
            p = sub.add_parser(name, help=help_text)
            p.add_argument("--bu", required=True, help="Business unit slug or id")
            p.add_argument("--as", dest="as_user", help="Administrator email (default: the first administrator)")
            return p

        p = with_bu("setup", "Create (or update) the connector and print its certificate")
        p.add_argument("--login-url", required=True)
        p.add_argument("--consumer-key", required=True)
        p.add_argument("--username", required=True)
        p.add_argument("--ca-file", default="")
        p.add_argument("--api-version", default="59.0")
        p.add_argument("--cert-out", default="", help="Write the certificate PEM to this file as well")
        p.add_argument("--verify", action="store_true", help="Verify the connection after saving")
        with_bu("status", "Print the status summary ([R28])").add_argument("--json", action="store_true")
        with_bu("pause", "Pause automatic sync ([R4])")
        with_bu("resume", "Resume automatic sync ([R4])")
        with_bu("verify", "Mint a token and call the API once")
        with_bu("import", "Run the explicit initial import of every Lead and Contact ([R10])")
        p = with_bu("reconcile", "Compare both sides now and repair the drift polling missed")
        p.add_argument("--limit", type=int, default=2000, help="Repair at most this many records (the rest next run)")
        p = with_bu("sync-prospect", "Sync one prospect both ways now, even while paused ([R3])")
        p.add_argument("prospect", help="Prospect id or email")
        p = with_bu("send-to-loopline", "Fetch a lead/contact by id and apply it ([R3])")
        p.add_argument("crm_id")
        p = with_bu("errors", "List the sync error queue, or retry/dismiss ([R26])")
        p.add_argument("--retry", type=int, help="Retry one error by id")
        p.add_argument("--retry-all", action="store_true")
        p.add_argument("--dismiss", type=int, help="Dismiss one error by id")
        p.add_argument("--all", action="store_true", help="Include resolved and dismissed errors")
        p = sub.add_parser("worker", help="Run the sync loop (poll + drain) until stopped")
        p.add_argument("--connector", type=int, action="append", help="Only these connector ids")
        p.add_argument("--once", action="store_true", help="One pass, then exit")

    def handle(self, *args, **opts):
        action = opts["action"]
        try:
            if action == "worker":
                return self.worker(opts)
            bu = _bu(opts["bu"])
            name = {"import": "import_"}.get(action, action.replace("-", "_"))
            return getattr(self, name)(bu, opts)
        except (ValidationError, PermissionDenied) as exc:
            raise CommandError("; ".join(getattr(exc, "messages", [str(exc)]))) from exc

    # --- actions ----------------------------------------------------------------------------------------------
    def _connector(self, bu):
        from loopline.connector.models import Connector

        connector = Connector.objects.select_related("bu").filter(bu=bu).first()
        if connector is None:
            raise CommandError(f"{bu.slug} has no CRM connector; run 'loopline connector setup' first")
        return connector

    def setup(self, bu, opts):
        from pathlib import Path

        from loopline.connector import services
        from loopline.connector.models import Connector

        access = _admin_access(bu, opts.get("as_user"))
        connector = Connector.objects.filter(bu=bu).first() or services.create_connector(access)
        services.update_connection(access, connector, {
            "login_url": opts["login_url"], "consumer_key": opts["consumer_key"], "username": opts["username"],
            "ca_file": opts["ca_file"], "api_version": opts["api_version"]})
        cert_path = Path(opts["cert_out"]) if opts["cert_out"] else None
        if cert_path:
            cert_path.write_text(connector.certificate)
        self.stdout.write(f"Connector {connector.pk} for {bu.slug} ({connector.get_status_display()}).")
        self.stdout.write("Paste this certificate into the CRM's connected app"
                          + (f" (also written to {cert_path}):" if cert_path else ":"))
        self.stdout.write(connector.certificate.strip())
        if opts["verify"]:
            ok, message = services.verify_connection(access, connector)
            self.stdout.write(message)
            if not ok:
                raise CommandError(message)

    def verify(self, bu, opts):
        from loopline.connector import services

        ok, message = services.verify_connection(_admin_access(bu, opts.get("as_user")), self._connector(bu))
        self.stdout.write(message)
        if not ok:
            raise CommandError(message)

    def status(self, bu, opts):
        from loopline.connector.selectors import status_summary

        summary = status_summary(self._connector(bu))
        if opts.get("json"):
            self.stdout.write(json.dumps(summary, indent=2, default=str))
            return
        s = summary
        self.stdout.write(f"State:            {s['state_text']}  (connector version {s['version']})")
        self.stdout.write(f"Connector user:   {s['connector_user']} {s['connector_user_id']}")
        if s["last_error"]:
            self.stdout.write(f"Last error:       {s['last_error']}")
        for obj, w in s["last_successful_poll"].items():
            self.stdout.write(f"Last poll {obj:<8} {w['last_successful_poll'] or 'never'}")
        o = s["outbox"]
        self.stdout.write(f"Outbox:           {o['backlog']} pending (oldest {o['age_seconds']} s), {o['failed']} failed")
        self.stdout.write(f"Synced:           {s['synced']['last_hour']['total']} last hour, "
                          f"{s['synced']['last_day']['total']} last day")
        a = s["api"]
        self.stdout.write(f"API calls (24 h): {a['calls_24h']} of a share of {a['share_calls'] or '?'} "
                          f"({a['mode']}: {a['reason']})")
        lat = s["latency"]
        self.stdout.write(f"Latency CRM→LL:   p50 {lat['crm_to_loopline']['p50']} s, p99 {lat['crm_to_loopline']['p99']} s")
        self.stdout.write(f"Latency LL→CRM:   p50 {lat['loopline_to_crm']['p50']} s, p99 {lat['loopline_to_crm']['p99']} s")
        self.stdout.write(f"Errors:           {s['errors']['open']} open ({s['errors']['retrying']} retrying)")

    def pause(self, bu, opts):
        from loopline.connector import services

        services.pause(_admin_access(bu, opts.get("as_user")), self._connector(bu))
        self.stdout.write("Paused.")

    def resume(self, bu, opts):
        from loopline.connector import services

        services.resume(_admin_access(bu, opts.get("as_user")), self._connector(bu))
        self.stdout.write("Resumed.")

    def import_(self, bu, opts):
        from loopline.connector.initial_import import import_from_crm
        from loopline.connector.sync.bulk import BulkDeferred

        try:
            counters = import_from_crm(self._connector(bu))  # REST or Bulk API 2.0 by the CRM's count
        except BulkDeferred as exc:
            raise CommandError(f"{exc.reason}; run the import again later: it resumes where it stopped") from exc
        self.stdout.write(counters.summary())

    def reconcile(self, bu, opts):
        from loopline.connector.sync import reconcile

        report = reconcile.reconcile(self._connector(bu), limit=opts["limit"])
        for line in report.objects:
            self.stdout.write(line.line())
        self.stdout.write("In sync." if report.in_sync else "Drift repaired (see the lines above).")

    def sync_prospect(self, bu, opts):
        from loopline.connector.sync import manual
        from loopline.prospects.models import Prospect

        ref = opts["prospect"]
        qs = Prospect.objects.filter(bu=bu)
        prospect = (qs.filter(pk=int(ref)) if ref.isdigit() else qs.filter(email__iexact=ref)).first()
        if prospect is None:
            raise CommandError(f"No prospect {ref!r} in {bu.slug}")
        result = manual.sync_prospect_now(_admin_access(bu, opts.get("as_user")), prospect)
        self.stdout.write(result.message)

    def send_to_loopline(self, bu, opts):
        from loopline.connector.sync import manual

        result = manual.send_to_loopline(self._connector(bu), opts["crm_id"])
        self.stdout.write(result.message)
        if not result.ok:
            raise CommandError(result.message)

    def errors(self, bu, opts):
        from loopline.connector.models import SyncError
        from loopline.connector.sync import errors

        connector = self._connector(bu)
        if opts.get("retry") or opts.get("dismiss") or opts.get("retry_all"):
            access = _admin_access(bu, opts.get("as_user"))
            if opts.get("retry_all"):
                self.stdout.write(f"Retrying {errors.retry_all(access, connector)} errors.")
            for key, fn in (("retry", errors.retry_one), ("dismiss", errors.dismiss)):
                if opts.get(key):
                    row = SyncError.objects.filter(connector=connector, pk=opts[key]).first()
                    if row is None:
                        raise CommandError(f"No error {opts[key]}")
                    fn(access, row)
                    self.stdout.write(f"{key.title()}: error {row.pk}")
            return
        rows = SyncError.objects.filter(connector=connector)
        if not opts.get("all"):
            rows = rows.filter(status__in=errors.LIVE)
        for e in rows[:200]:
            self.stdout.write(f"#{e.pk} {e.status:<9} {e.get_direction_display():<16} prospect {e.prospect_id or '-'} "
                              f"crm {e.crm_id or '-'} {e.code}: {e.message[:120]} (attempts {e.attempts})")
        if not rows.exists():
            self.stdout.write("No sync errors.")

    def worker(self, opts):
        from loopline.connector.sync.worker import ConnectorWorker

        worker = ConnectorWorker(opts.get("connector"))
        if opts.get("once"):
            self.stdout.write(json.dumps(worker.run_once()))
            return

        def stop(*_):
            worker.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        worker.run()
