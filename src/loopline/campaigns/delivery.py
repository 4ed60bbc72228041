"""Scheduled email delivery of a report: rendered as the report owner would see it (their role's scope)."""

from __future__ import annotations

import io

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from loopline.accounts.access import Access

from . import selectors
from .models import ScheduledReport


def _send(to: list[str], subject: str, text: str, html: str) -> None:
    import importlib

    try:  # the emails app's system mailer, when present
        send_operational = getattr(importlib.import_module("loopline.emails.services"), "send_operational", None)
    except ImportError:
        send_operational = None
    if send_operational is not None:
        for address in to:
            send_operational(address, subject, text, html)
        return
    from django.core.mail import EmailMultiAlternatives

    message = EmailMultiAlternatives(subject, text, settings.DEFAULT_FROM_EMAIL, to)
    message.attach_alternative(html, "text/html")
    message.send()


def _money(value) -> str:
    return f"{float(value or 0):,.2f}"


def render_report(row: ScheduledReport) -> tuple[str, str, list[list[str]]]:
    """(title, link, table rows — first row is the header)."""
    access = Access.for_user(row.owner, row.bu)
    period = selectors.preset_period(row.params.get("period") or "30d", timezone.now().date())
    model = int(selectors.MODEL_KEYS.get(row.params.get("model", "even"), selectors.MODEL_KEYS["even"]))
    base = getattr(settings, "PUBLIC_BASE_URL", "").rstrip("/")
    if row.report == ScheduledReport.Report.ROI:
        report = selectors.roi_report(access, period, model=model)
        table = [["Campaign", "Cost", "Prospects", "Opportunities", "Pipeline", "Won", "ROI"]]
        for r in report.rows:
            roi = r.figures["roi"]
            table.append([r.name, "—" if r.cost is None else _money(r.cost), str(r.prospects),
                          f"{r.opportunities:.1f}", _money(r.pipeline), _money(r.won[model]),
                          roi.reason if roi.value is None else f"{roi.value * 100:.0f}%"])
        title = f"Campaign ROI — {period.label} ({selectors.MODELS[model]}, {report.currency or 'no currency'})"
        link = base + reverse("reports:roi") + f"?{period.query()}"
    elif row.report == ScheduledReport.Report.LIFECYCLE:
        table = [["Stage", "Count", "Conversion", "Mean days from previous"]]
        for s in selectors.lifecycle_report(access, period):
            table.append([s.label, "—" if s.count is None else str(s.count),
                          "" if s.conversion is None else (s.conversion.reason if s.conversion.value is None
                                                           else f"{s.conversion.value:.1f}%"),
                          "" if s.mean_days is None else (s.mean_days.reason if s.mean_days.value is None
                                                          else f"{s.mean_days.value:.1f}")])
        title = f"Lifecycle — {period.label}"
        link = base + reverse("reports:lifecycle") + f"?{period.query()}"
    else:
        d = selectors.dashboard(access, period)
        table = [["Figure", "Value"], ["New prospects", str(d["new_prospects"])], ["MQLs", str(d["mqls"])],
                 ["SQLs", str(d["sqls"])], ["Open pipeline", f"{_money(d['pipeline'])} {d['currency']}"],
                 ["Won revenue", f"{_money(d['won_amount'])} {d['currency']}"]]
        table += [[f"Top campaign: {r.name}", _money(r.won[3])] for r in d["top_campaigns"]]
        title = f"Marketing dashboard — {period.label}"
        link = base + reverse("reports:dashboard") + f"?{period.query()}"
    return title, link, table


def send_report(row: ScheduledReport) -> None:
    title, link, table = render_report(row)
    buffer = io.StringIO()
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        buffer.write("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() + "\n")
    text = f"{title}\n\n{buffer.getvalue()}\nOpen the report: {link}\n"
    html = render_to_string("reports/email.html", {"title": title, "table": table, "link": link, "bu": row.bu})
    recipients = [r for r in row.recipients.split() if r]
    _send(recipients, f"[Loopline] {title}", text, html)
