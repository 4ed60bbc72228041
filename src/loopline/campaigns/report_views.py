"""Report pages under /reports/ ([M33]-[M36]): thin views over ``selectors``; CSV with ``?format=csv``."""

from __future__ import annotations

import csv
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from loopline.accounts.decorators import member_required

from . import selectors, services
from .models import AttributionModel, Campaign, ScheduledReport

STAGE_KEYS = ("prospect", "mql", "sql", "opportunity", "won")


def _model(request) -> int:
    key = request.GET.get("model", "even")
    return int(selectors.MODEL_KEYS.get(key, AttributionModel.EVEN_SPLIT))


def _model_key(model: int) -> str:
    return next(k for k, v in selectors.MODEL_KEYS.items() if v == model)


def _period(request, default: str):
    period, error = selectors.period_from(request.GET, default)
    if error:
        messages.warning(request, error)
    return period


def _csv(filename: str, header: list[str], rows) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return response


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, selectors.Figure):
        return "" if value.value is None else f"{value.value:.4f}"
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _numeric(text) else text  # no spreadsheet formulas


def _numeric(text: str) -> bool:
    try:
        Decimal(text)
    except Exception:
        return False
    return True


def _money(value) -> str:
    return "—" if value is None else f"{float(value):,.2f}"


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _show(f: selectors.Figure, *, pct: bool = False) -> dict[str, str]:
    """A figure for the page: the number, or the reason it has none (pre-formatted: these tables can be long)."""
    if f.value is None:
        return {"text": f.reason, "why": "1"}
    text = f"{f.value * 100:,.0f}%" if pct else f"{f.value:,.2f}"
    return {"text": text, "note": f.reason}


def _roi_cells(row: selectors.RoiRow, model: int) -> dict:
    cells: dict[str, Any] = {"name": row.name, "type": row.type or "—", "cost": _money(row.cost), "prospects": f"{row.prospects:,}",
            "opportunities": _count(row.opportunities), "pipeline": _money(row.pipeline),
            "won1": _money(row.won[1]), "won2": _money(row.won[2]), "won3": _money(row.won[3]),
            "won": _money(row.won[model]), "wins": _count(row.wins), "campaigns": row.campaigns,
            "campaign_id": row.campaign_id, "type_key": row.type,
            "url": f"/reports/roi/campaign/{row.campaign_id}/" if row.campaign_id else "",
            **({"roi": _show(row.figures["roi"], pct=True), "cpp": _show(row.figures["cost_per_prospect"]),
                "cpo": _show(row.figures["cost_per_opportunity"]), "cpw": _show(row.figures["cost_per_win"])}
               if row.figures else {})}
    if row.figures:
        cells["figs"] = [cells["roi"], cells["cpp"], cells["cpo"], cells["cpw"]]
        cells["short_figs"] = [cells["roi"], cells["cpw"]]
    return cells


def _wants_csv(request) -> bool:
    return request.GET.get("format") == "csv"


def _common(request, period, **extra):
    return {"period": period, "presets": selectors.PRESETS, **extra}


@member_required("reports.view")
def dashboard(request):
    period = _period(request, "30d")
    data = selectors.dashboard(request.access, period)
    return render(request, "reports/dashboard.html", _common(request, period, d=data))


@member_required("reports.view")
def roi(request):
    access = request.access
    period = _period(request, "365d")
    model = _model(request)
    currency = request.GET.get("currency")
    campaign_type = request.GET.get("type", "")[:60]
    report = selectors.roi_report(access, period, model=model, currency=currency if currency is not None else None,
                                  campaign_type=campaign_type)
    if _wants_csv(request):
        access.require("reports.report")
        return _csv("campaign-roi.csv", [
            "Campaign", "Type", "Cost", "Prospects created", "Opportunities created", "Pipeline",
            "Won (first touch)", "Won (last touch)", "Won (even split)", "Wins", "ROI", "Cost per prospect",
            "Cost per opportunity", "Cost per win", "Currency", "Model", "Period start", "Period end"],
            [[r.name, r.type, r.cost, r.prospects, r.opportunities, r.pipeline, r.won[1], r.won[2], r.won[3], r.wins,
              r.figures["roi"], r.figures["cost_per_prospect"], r.figures["cost_per_opportunity"],
              r.figures["cost_per_win"], report.currency, selectors.MODELS[model], period.start, period.end]
             for r in report.rows + report.types])
    chart_rows = [r for r in report.rows if r.won[model] or r.cost or r.pipeline][:15]
    chart = {"labels": [r.name for r in chart_rows],
             "won": [round(r.won[model], 2) for r in chart_rows],
             "cost": [float(r.cost) if r.cost is not None else 0 for r in chart_rows],
             "pipeline": [round(r.pipeline, 2) for r in chart_rows]}
    types = sorted(set(Campaign.objects.filter(bu_id=access.bu.pk).exclude(type="").values_list("type", flat=True)))
    return render(request, "reports/roi.html", _common(
        request, period, report=report, rows=[_roi_cells(r, model) for r in report.rows],
        type_rows=[_roi_cells(r, model) for r in report.types], total=_roi_cells(report.total, model),
        unattributed=_roi_cells(report.unattributed, model), model=model, model_key=_model_key(model), models=selectors.MODEL_KEYS,
        model_labels=selectors.MODELS, chart=chart, types=types, campaign_type=campaign_type))


@member_required("reports.view")
def roi_campaign(request, pk: int | None = None):
    """Drill-down of one ROI row: the campaign's new prospects and its credited opportunities."""
    access = request.access
    period = _period(request, "365d")
    model = _model(request)
    campaign = selectors.get_campaign(access, pk) if pk else None
    kind = "won" if request.GET.get("kind") == "won" else "created"
    opportunities = selectors.campaign_opportunities(access, period, campaign_id=pk, model=model, kind=kind)
    prospects = selectors.stage_prospects(access, "prospect", period, campaign_id=pk or 0)
    if _wants_csv(request):
        access.require("reports.report")
        return _csv(f"campaign-{pk or 'unattributed'}-opportunities.csv",
                    ["Opportunity", "CRM id", "Stage", "Amount", "Currency", "Created", "Close date", "Share",
                     "Attributed amount"],
                    [[o["opportunity"].name, o["opportunity"].crm_id, o["opportunity"].stage,
                      o["opportunity"].amount, o["opportunity"].currency, o["opportunity"].crm_created_at.date(),
                      o["opportunity"].close_date, f"{o['share']:.4f}", o["attributed"]] for o in opportunities])
    members, member_counts = selectors.campaign_members(access, pk) if pk else (None, {})
    return render(request, "reports/roi_campaign.html", _common(
        request, period, campaign=campaign, members=members[:100] if members is not None else [],
        member_counts=member_counts, member_total=sum(member_counts.values()), opportunities=opportunities, prospects=prospects[:200],
        prospect_count=prospects.count(), model=model, model_key=_model_key(model),
        model_label=selectors.MODELS[model], kind=kind))


@member_required("reports.view")
def lifecycle(request):
    access = request.access
    period = _period(request, "90d")
    rows = selectors.lifecycle_report(access, period)
    if _wants_csv(request):
        access.require("reports.report")
        return _csv("lifecycle.csv", ["Stage", "Count", "Conversion from previous (%)", "Mean days from previous",
                                      "Period start", "Period end"],
                    [[r.label, r.count, r.conversion, r.mean_days, period.start, period.end] for r in rows])
    chart = {"labels": [r.label for r in rows if r.count is not None],
             "counts": [r.count for r in rows if r.count is not None]}
    return render(request, "reports/lifecycle.html", _common(request, period, rows=rows, chart=chart))


@member_required("reports.view")
def lifecycle_stage(request, stage: str):
    access = request.access
    period = _period(request, "90d")
    if stage not in STAGE_KEYS:
        _not_found()
    people = selectors.stage_prospects(access, stage, period)
    if _wants_csv(request):
        access.require("reports.report")
        return _csv(f"lifecycle-{stage}.csv",
                    ["Prospect id", "Email", "Name", "Company", "Score", "Grade", "Source campaign", "Created",
                     "MQL", "SQL", "Opportunity", "Won"],
                    ([p.pk, p.email, p.full_name, p.company, p.score, p.grade,
                      p.source_campaign.name if p.source_campaign else "", p.created_at, p.mql_at, p.sql_at,
                      p.opportunity_at, p.won_at] for p in people.iterator(chunk_size=2000)))
    labels = dict(selectors._stage_labels())
    return render(request, "reports/stage_prospects.html", _common(
        request, period, stage=stage, stage_label=labels[stage], prospects=people[:200], total=people.count()))


def _not_found():
    from django.http import Http404

    raise Http404("Unknown stage")


@member_required("reports.view")
def opportunities(request):
    access = request.access
    outcome = request.GET.get("outcome", "")
    q = request.GET.get("q", "").strip()[:100]
    qs = selectors.opportunity_list(access, outcome=outcome, q=q)
    if _wants_csv(request):
        access.require("reports.report")
        return _csv("opportunities.csv", ["CRM id", "Name", "Stage", "Amount", "Currency", "Created", "Close date",
                                          "Outcome"],
                    ([o.crm_id, o.name, o.stage, o.amount, o.currency, o.crm_created_at, o.close_date, o.outcome]
                     for o in qs.iterator(chunk_size=2000)))
    return render(request, "reports/opportunities.html", {"opportunities": qs[:200], "total": qs.count(),
                                                          "outcome": outcome, "q": q})


@member_required("reports.view")
def opportunity_detail(request, pk: int):
    access = request.access
    opp = selectors.get_opportunity(access, pk)
    return render(request, "reports/opportunity.html", {"opp": opp, **selectors.opportunity_breakdown(access, opp)})


@member_required("reports.report")
def schedules(request):
    access = request.access
    rows = ScheduledReport.objects.filter(bu_id=access.bu.pk).select_related("owner")
    form = {"report": request.GET.get("report", "dashboard"), "frequency": "weekly", "recipients": access.user.email,
            "period": request.GET.get("period", "30d"), "model": request.GET.get("model", "even")}
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        form = {k: request.POST.get(k, "") for k in ("report", "frequency", "recipients", "period", "model")}
        try:
            services.save_scheduled_report(access, report=form["report"], frequency=form["frequency"],
                                           recipients=form["recipients"],
                                           params={"period": form["period"] if form["period"] in selectors.PRESETS
                                                   else "30d", "model": form["model"]})
        except ValidationError as exc:
            errors = exc.message_dict
        else:
            messages.success(request, "The report will be sent by email.")
            return redirect("reports:schedules")
    return render(request, "reports/schedules.html", {
        "rows": rows, "form": form, "errors": errors, "reports": ScheduledReport.Report.choices,
        "frequencies": ScheduledReport.Frequency.choices, "presets": selectors.PRESETS,
        "models": [(k, selectors.MODELS[v]) for k, v in selectors.MODEL_KEYS.items()]}, status=400 if errors else 200)


@require_POST
@member_required("reports.report")
def schedule_delete(request, pk: int):
    row = get_object_or_404(ScheduledReport, pk=pk, bu_id=request.access.bu.pk)
    services.delete_scheduled_report(request.access, row)
    messages.success(request, "Scheduled report removed.")
    return redirect("reports:schedules")


@member_required("reports.edit")
def report_settings(request):
    access = request.access
    current = services.report_settings(access.bu.pk)
    values = {"mql_score": "" if current.mql_score is None else str(current.mql_score), "mql_grade": current.mql_grade,
              "mql_rule": current.mql_rule, "default_currency": current.default_currency}
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        values = {k: request.POST.get(k, "").strip() for k in values}
        score = None
        if values["mql_score"]:
            try:
                score = int(values["mql_score"])
            except ValueError:
                errors["mql_score"] = ["Enter a whole number."]
        if values["mql_rule"] not in ("or", "and"):
            errors["mql_rule"] = ["Choose how score and grade combine."]
        if not errors:
            try:
                services.save_report_settings(access, mql_score=score, mql_grade=values["mql_grade"],
                                              mql_rule=values["mql_rule"], default_currency=values["default_currency"])
            except ValidationError as exc:
                errors = exc.message_dict
            else:
                messages.success(request, "Reporting settings saved. Prospects already past the threshold become "
                                          "marketing-qualified within 15 minutes.")
                return redirect("reports:settings")
    return render(request, "reports/settings.html", {"values": values, "errors": errors, "grades": services.GRADES,
                                                     "rules": [("or", "Score OR grade"), ("and", "Score AND grade")]},
                  status=400 if errors else 200)
