"""CRM connector admin pages: setup wizard, settings, field mapping, status, sync error queue, initial import and
metadata (User Sync, connected campaigns, describe data). Administrators only ([R5]); every write goes through a
service that audits it. Views stay thin.
"""

from __future__ import annotations

import datetime as dt
import importlib
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from loopline.accounts.decorators import member_required
from loopline.platform.models import Job
from loopline.prospects.models import CustomField

from . import initial_import, keys, mapping_admin, metadata, services, sharing
from .forms import (
    BehaviourForm,
    ConnectionForm,
    CustomMappingForm,
    ProfileRoleForm,
    SettingsForm,
    SharingRulesForm,
)
from .models import Connector, CrmDescribe, CrmUser, FieldMapping, SyncError, SyncRun
from .salesforce.auth import AuthError
from .salesforce.client import CrmApiError

ADMIN = "connector.edit"  # [R5]: the connector is visible and editable only to administrators


def _connector(request) -> Connector | None:
    """The connector of the current BU (never another BU's)."""
    return Connector.objects.select_related("bu").filter(bu=request.access.bu).first()


def _require_connector(request) -> Connector:
    connector = _connector(request)
    if connector is None:
        raise Http404("This business unit has no CRM connector yet")
    return connector


def _render(request, template: str, context: dict[str, Any], status: int = 200):
    """A full connector page: adds the open error count shown on the "Sync errors" tab."""
    connector = context.get("connector")
    if connector is not None and "open_errors" not in context:
        context["open_errors"] = SyncError.objects.filter(connector=connector,
                                                          status__in=["open", "retrying"]).count()
    return render(request, template, context, status=status)


def _first_message(exc: ValidationError) -> str:
    return "; ".join(exc.messages) if exc.messages else str(exc)


def _is_htmx(request) -> bool:
    return bool(getattr(request, "htmx", False)) or request.headers.get("HX-Request") == "true"


def _sync_module(name: str):
    """A sync-core module (``connector.sync.<name>``) or ``None`` while it is not installed."""
    try:
        return importlib.import_module(f"loopline.connector.sync.{name}")
    except ImportError:
        return None


# --- Setup wizard -----------------------------------------------------------------------------------------------


def _setup_steps(connector: Connector) -> list[dict[str, Any]]:
    has_credentials = bool(connector.login_url and connector.consumer_key and connector.username)
    return [
        {"key": "certificate", "title": "Give the CRM Loopline's certificate", "done": bool(connector.certificate)},
        {"key": "connection", "title": "Enter the connection details", "done": has_credentials},
        {"key": "verify", "title": "Verify the connection", "done": bool(connector.last_verified_at)},
        {"key": "resume", "title": "Resume syncing", "done": connector.status == Connector.Status.ACTIVE},
    ]


@member_required(ADMIN)
def overview(request):
    connector = _connector(request)
    if connector is None:
        return _render(request, "connector/create.html", {})
    initial = {f: getattr(connector, f) for f in services.CONNECTION_FIELDS}
    form = ConnectionForm(initial=initial)
    return _render(request, "connector/setup.html", _setup_context(connector, form))


def _setup_context(connector: Connector, form: ConnectionForm) -> dict[str, Any]:
    try:
        expiry = keys.certificate_expiry(connector.certificate) if connector.certificate else None
    except ValueError:
        expiry = None
    return {
        "connector": connector,
        "form": form,
        "steps": _setup_steps(connector),
        "certificate_expiry": expiry,
        "last_run": SyncRun.objects.filter(connector=connector, kind="metadata").first(),
        "import_job": initial_import.running_import(connector),
        "send_to_loopline": _send_to_loopline_info(connector),
    }


def _send_to_loopline_info(connector: Connector) -> dict[str, str] | None:
    """Endpoint and token for the CRM's "Send to Loopline" button ([R3]), when the sync core provides them."""
    manual = _sync_module("manual")
    if manual is None or not hasattr(manual, "send_to_loopline_token"):
        return None
    try:
        path = reverse("connector_public:send_to_loopline", args=[connector.bu.slug])
    except NoReverseMatch:
        path = f"/connector/{connector.bu.slug}/send-to-loopline"
    return {"path": path, "token": manual.send_to_loopline_token(connector)}


@require_POST
@member_required(ADMIN)
def create(request):
    try:
        services.create_connector(request.access)
    except ValidationError as exc:
        messages.error(request, _first_message(exc))
    else:
        messages.success(request, "Connector created. It is paused: nothing syncs until you resume it.")
    return redirect("connector:overview")


@require_GET
@member_required(ADMIN)
def certificate(request):
    connector = _require_connector(request)
    response = HttpResponse(connector.certificate, content_type="application/x-pem-file")
    response["Content-Disposition"] = f'attachment; filename="loopline-{connector.bu.slug}.crt"'
    return response


@require_POST
@member_required(ADMIN)
def regenerate_certificate(request):
    connector = _require_connector(request)
    services.regenerate_certificate(request.access, connector)
    messages.warning(request, "A new certificate was generated. Upload it to the connected app in the CRM, then "
                              "verify the connection again — the old one no longer works.")
    return redirect(reverse("connector:overview") + "#certificate")


@require_POST
@member_required(ADMIN)
def connection(request):
    connector = _require_connector(request)
    form = ConnectionForm(request.POST)
    if form.is_valid():
        try:
            services.update_connection(request.access, connector, form.cleaned_data)
        except ValidationError as exc:
            if hasattr(exc, "error_dict"):
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                form.add_error(None, exc)
        else:
            messages.success(request, "Connection details saved. Now verify the connection.")
            return redirect(reverse("connector:overview") + "#verify")
    return _render(request, "connector/setup.html", _setup_context(connector, form), status=400)


@require_POST
@member_required(ADMIN)
def verify(request):
    connector = _require_connector(request)
    ok, message = services.verify_connection(request.access, connector)
    if ok:
        # Describe data, users and campaigns are useful at once (they sync while paused, [R2]); the run records
        # its own problems, so the verify answer never fails because of it.
        metadata.sync_metadata(connector)
    if _is_htmx(request):
        return render(request, "connector/_verify_result.html", {"ok": ok, "message": message,
                                                                  "connector": connector})
    (messages.success if ok else messages.error)(request, message)
    return redirect(reverse("connector:overview") + "#verify")


@require_POST
@member_required(ADMIN)
def pause(request):
    connector = _require_connector(request)
    services.pause(request.access, connector)
    messages.success(request, "The connector is paused. Changes made meanwhile are picked up when you resume.")
    return redirect(request.POST.get("next") or "connector:overview")


@require_POST
@member_required(ADMIN)
def resume(request):
    connector = _require_connector(request)
    try:
        services.resume(request.access, connector)
    except ValidationError as exc:
        messages.error(request, _first_message(exc))
    else:
        messages.success(request, "The connector is active: records now sync both ways.")
    target = request.POST.get("next") or ""
    return redirect(target if target.startswith("/connector/") else "connector:overview")


# --- Settings -------------------------------------------------------------------------------------------------------


@member_required(ADMIN)
def settings_page(request):
    connector = _require_connector(request)
    current = services.settings_of(connector)
    form = SettingsForm(request.POST or None, initial=current)
    if request.method == "POST" and form.is_valid():
        changes = {k: v for k, v in form.cleaned_data.items() if current.get(k) != v}
        try:
            services.update_settings(request.access, connector, changes)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Settings saved." if changes else "Nothing changed.")
            return redirect("connector:settings")
    return _settings_response(request, connector, form, None, 400 if request.method == "POST" else 200)


def _settings_response(request, connector: Connector, form: SettingsForm, sharing_form: SharingRulesForm | None,
                       status: int):
    groups = [
        ("Creating and matching records", ["auto_create_prospects", "update_email_from_crm",
                                           "match_by_email_when_no_crm_id", "new_record_object",
                                           "sync_person_accounts", "external_id_field"]),
        ("Field values", ["blank_crm_values_overwrite"]),
        ("Fixed fields sent to the CRM", ["score_field", "grade_field", "campaign_field"]),
        ("Activity", ["log_email_tasks"]),
        ("Speed and API use", ["poll_interval_seconds", "max_poll_interval_seconds", "api_share_percent",
                               "bulk_threshold"]),
    ]
    listed = {k for _, keys_ in groups for k in keys_}
    extra = [k for k in form.fields if k not in listed]
    if extra:
        groups.append(("Other", extra))
    stored = (connector.settings or {}).get(sharing.SETTINGS_KEY) or {}
    return _render(request, "connector/settings.html", {
        "connector": connector, "form": form,
        "groups": [(title, [form[k] for k in keys_ if k in form.fields]) for title, keys_ in groups],
        "bu": request.access.bu,
        # [R34]-[R37] marketing data sharing: editable only while paused
        "sharing_form": sharing_form or SharingRulesForm(rules=stored),
        "sharing_locked": connector.is_active,
        "sharing_others": sharing.org_connectors(connector),
    }, status=status)


@require_POST
@member_required(ADMIN)
def sharing_rules(request):
    connector = _require_connector(request)
    form = SharingRulesForm(request.POST)
    if form.is_valid():
        try:
            sharing.set_sharing_rules(connector, form.rules(), request.access)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Marketing data sharing rules saved.")
            return redirect(reverse("connector:settings") + "#sharing")
    settings_form = SettingsForm(initial=services.settings_of(connector))
    return _settings_response(request, connector, settings_form, form, 400)


# --- Field mapping ------------------------------------------------------------------------------------------------


def _mapping_context(connector: Connector, request, add_form: CustomMappingForm | None = None) -> dict[str, Any]:
    choices = {obj: mapping_admin.crm_field_choices(connector, obj) for obj, _ in mapping_admin.OBJECTS}
    form = add_form or CustomMappingForm(bu=request.access.bu, choices=choices)
    rows = mapping_admin.mapping_table(connector)
    return {
        "connector": connector,
        "rows": [r for r in rows if not r.row.fixed],
        "fixed_rows": [r for r in rows if r.row.fixed],
        "warnings": sum(1 for r in rows if r.warnings),
        "add_form": form,
        "has_describe": CrmDescribe.objects.filter(connector=connector).exists(),
        "has_custom_fields": CustomField.objects.filter(bu=request.access.bu).exists(),
    }


@member_required(ADMIN)
def mapping(request):
    connector = _require_connector(request)
    return _render(request, "connector/mapping.html", _mapping_context(connector, request))


@require_POST
@member_required(ADMIN)
def mapping_behaviour(request, mapping_id: int):
    connector = _require_connector(request)
    row = get_object_or_404(FieldMapping, pk=mapping_id, connector=connector)
    form = BehaviourForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the sync behaviours in the list.")
    else:
        try:
            mapping_admin.set_behaviour(request.access, connector, row, form.cleaned_data["behaviour"])
        except ValidationError as exc:
            messages.error(request, _first_message(exc))
        else:
            messages.success(request, f"{row.loopline_field}: now “{row.get_behaviour_display()}”. Records are not "
                                      "resynced now; the rule applies to their next change.")
    return redirect("connector:mapping")


@require_POST
@member_required(ADMIN)
def mapping_add(request):
    connector = _require_connector(request)
    choices = {obj: mapping_admin.crm_field_choices(connector, obj) for obj, _ in mapping_admin.OBJECTS}
    form = CustomMappingForm(request.POST, bu=request.access.bu, choices=choices)
    if form.is_valid():
        data = form.cleaned_data
        try:
            row = mapping_admin.save_custom_mapping(
                request.access, connector, data["custom_field"], lead_field=data["lead_field"],
                contact_field=data["contact_field"], person_account_field=data["person_account_field"],
                behaviour=data["behaviour"])
        except ValidationError as exc:
            if hasattr(exc, "error_dict"):
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                form.add_error(None, exc)
        else:
            messages.success(request, f"{data['custom_field'].name} is now mapped ({row.loopline_field}).")
            return redirect("connector:mapping")
    return _render(request, "connector/mapping.html", _mapping_context(connector, request, form), status=400)


@require_POST
@member_required(ADMIN)
def mapping_remove(request, mapping_id: int):
    connector = _require_connector(request)
    row = get_object_or_404(FieldMapping, pk=mapping_id, connector=connector)
    try:
        mapping_admin.remove_mapping(request.access, connector, row)
    except ValidationError as exc:
        messages.error(request, _first_message(exc))
    else:
        messages.success(request, f"{row.loopline_field} is no longer mapped.")
    return redirect("connector:mapping")


# --- Status page ([R28], [R29]) -----------------------------------------------------------------------------------


def _when(value: Any):
    if isinstance(value, str):
        from django.utils.dateparse import parse_datetime

        return parse_datetime(value)
    return value


def _status_figures(connector: Connector) -> dict[str, Any]:
    """The sync core's ``selectors.status_summary`` ([R28]) flattened for the template, plus records per hour."""
    from .selectors import status_summary

    raw = status_summary(connector)
    outbox = raw.get("outbox") or {}
    synced = raw.get("synced") or {}
    api = raw.get("api") or {}
    latency = raw.get("latency") or {}
    notes = []
    if api.get("reason") and api.get("mode") not in (None, "normal"):
        notes.append(f"API budget: {api['reason']}")
    return {
        "state": raw.get("state") or connector.status,
        "state_label": raw.get("state_text") or connector.get_status_display(),
        "version": raw.get("version") or connector.version,
        "connector_user": raw.get("connector_user") or connector.username,
        "paused_until": _when(raw.get("paused_until")),
        "last_poll": {obj: _when((info or {}).get("last_successful_poll"))
                      for obj, info in (raw.get("last_successful_poll") or {}).items()},
        "outbox_backlog": outbox.get("backlog", 0),
        "outbox_oldest_age_seconds": outbox.get("age_seconds") or 0,
        "synced_last_hour": (synced.get("last_hour") or {}).get("total", 0),
        "synced_last_day": (synced.get("last_day") or {}).get("total", 0),
        "api_calls_today": api.get("calls_24h", 0),
        "api_share_left": api.get("share_left"),
        "api_share_percent": services.settings_of(connector).get("api_share_percent"),
        "latency": [
            {"label": label, **{k: (latency.get(key) or {}).get(k) for k in ("p50", "p90", "p99", "samples")}}
            for label, key in (("CRM → Loopline", "crm_to_loopline"), ("Loopline → CRM", "loopline_to_crm"))
        ],
        "error_queue": (raw.get("errors") or {}).get("open", 0),
        "last_error": raw.get("last_error") or "",
        "notes": notes,
        "synced_per_hour": _synced_per_hour(connector),
    }


def _synced_per_hour(connector: Connector, hours: int = 24) -> list[tuple[Any, int]]:
    """Records created + updated per clock hour over the last ``hours`` hours, from the sync runs' counters."""
    from .engine import RunCounters

    now = timezone.now()
    first = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=hours - 1)
    buckets = {first + dt.timedelta(hours=i): 0 for i in range(hours)}
    for started, counters in (SyncRun.objects.filter(connector=connector, started_at__gte=first,
                                                     kind__in=["pull", "push", "manual", "initial_import"])
                              .values_list("started_at", "counters")):
        c = RunCounters.from_dict(counters or {})
        key = started.replace(minute=0, second=0, microsecond=0)
        if key in buckets:
            buckets[key] += c.created + c.updated
    if not any(buckets.values()):
        return []
    return list(buckets.items())


def _hourly_bars(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Records synced per hour (from the summary's ``synced_per_hour``: a list of (label, count) or dicts)."""
    raw = summary.get("synced_per_hour") or summary.get("records_per_hour") or []
    points: list[tuple[str, int]] = []
    for item in raw:
        if isinstance(item, dict):
            label = item.get("hour") or item.get("label") or ""
            count = item.get("count") or item.get("records") or 0
        else:
            label, count = item[0], item[1]
        if isinstance(label, dt.datetime):
            label = (timezone.localtime(label) if timezone.is_aware(label) else label).strftime("%H:00")
        points.append((str(label), int(count or 0)))
    top = max((c for _, c in points), default=0)
    bars = []
    for i, (label, count) in enumerate(points):
        height = round(96 * count / top, 1) if top else 0
        bars.append({"label": label, "count": count, "x": i * 12, "y": 100 - height, "h": height})
    return bars


def _run_rows(runs: list[SyncRun]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        c = run.counters or {}
        skipped = c.get("skipped")
        if isinstance(skipped, dict):
            skipped_total = sum(int(v or 0) for v in skipped.values())
            skipped_text = ", ".join(f"{v} {str(k).replace('_', ' ')}" for k, v in skipped.items() if v)
        else:
            skipped_total, skipped_text = int(skipped or 0), ""
        rows.append({"run": run, "fetched": c.get("fetched"), "created": c.get("created"),
                     "updated": c.get("updated"), "failed": c.get("failed"), "skipped": skipped_total,
                     "skipped_text": skipped_text,
                     "note": run.note or ("still running" if run.finished_at is None else "")})
    return rows


def _status_context(connector: Connector) -> dict[str, Any]:
    summary = _status_figures(connector)
    runs = list(SyncRun.objects.filter(connector=connector)[:15])
    bars = _hourly_bars(summary)
    return {
        "connector": connector,
        "summary": summary,
        "bars": bars,
        "chart_width": max(12 * len(bars) - 2, 10),
        "runs": _run_rows(runs),
        "open_errors": connector.errors.filter(status__in=["open", "retrying"]).count(),
        "refreshed_at": timezone.now(),
    }


@member_required(ADMIN)
def status(request):
    connector = _require_connector(request)
    return _render(request, "connector/status.html", _status_context(connector))


@require_POST
@member_required(ADMIN)
def fetch_record(request):
    """Fetch one lead/contact from the CRM now (works while paused, [R3])."""
    connector = _require_connector(request)
    try:
        result = initial_import.fetch_one(request.access, connector, request.POST.get("crm_id", ""))
    except ValidationError as exc:
        messages.error(request, _first_message(exc))
    except (CrmApiError, AuthError) as exc:
        messages.error(request, f"The CRM answered an error: {exc}")
    else:
        (messages.success if result.ok else messages.error)(request, result.message)
        if result.ok and result.prospect_id:
            return redirect("prospects:detail", pk=result.prospect_id)
    return redirect("connector:status")


@require_GET
@member_required(ADMIN)
def status_panel(request):
    connector = _require_connector(request)
    return render(request, "connector/_status_panel.html", _status_context(connector))


# --- Sync error queue ([R26]) -------------------------------------------------------------------------------------

ERROR_FILTERS = [("open", "Open"), ("retrying", "Retrying"), ("dismissed", "Dismissed"), ("resolved", "Resolved"),
                 ("all", "All")]


@member_required(ADMIN)
def errors(request):
    connector = _require_connector(request)
    current = request.GET.get("status") or "open"
    if current not in dict(ERROR_FILTERS):
        current = "open"
    queryset = SyncError.objects.filter(connector=connector).select_related("prospect")
    if current != "all":
        queryset = queryset.filter(status=current)
    page = Paginator(queryset, 50).get_page(request.GET.get("page"))
    counts = {s: SyncError.objects.filter(connector=connector, status=s).count() for s, _ in ERROR_FILTERS[:-1]}
    return _render(request, "connector/errors.html", {
        "connector": connector, "page": page, "filters": ERROR_FILTERS, "current": current, "counts": counts,
    })


def _error_action(name: str):
    """The sync core's error-queue service ``connector.sync.errors.<name>`` (``None`` while missing)."""
    module = _sync_module("errors")
    return getattr(module, name, None) if module else None


def _errors_redirect(request):
    status_filter = request.POST.get("status") or ""
    url = reverse("connector:errors")
    return redirect(f"{url}?status={status_filter}" if status_filter else url)


@require_POST
@member_required(ADMIN)
def error_retry(request, error_id: int):
    connector = _require_connector(request)
    error = get_object_or_404(SyncError, pk=error_id, connector=connector)
    action = _error_action("retry_one")
    if action is None:
        messages.error(request, "Retrying is not available yet in this version.")
    else:
        try:
            action(request.access, error)
        except (ValidationError, PermissionDenied) as exc:
            messages.error(request, _first_message(exc) if isinstance(exc, ValidationError) else str(exc))
        else:
            messages.success(request, "The record will be synced again shortly.")
    return _errors_redirect(request)


@require_POST
@member_required(ADMIN)
def errors_retry_all(request):
    connector = _require_connector(request)
    action = _error_action("retry_all")
    if action is None:
        messages.error(request, "Retrying is not available yet in this version.")
    else:
        try:
            count = action(request.access, connector)
        except ValidationError as exc:
            messages.error(request, _first_message(exc))
        else:
            n = count if isinstance(count, int) else "All"
            messages.success(request, f"{n} record(s) will be synced again shortly.")
    return _errors_redirect(request)


@require_POST
@member_required(ADMIN)
def error_dismiss(request, error_id: int):
    connector = _require_connector(request)
    error = get_object_or_404(SyncError, pk=error_id, connector=connector)
    action = _error_action("dismiss")
    if action is None:
        messages.error(request, "Dismissing is not available yet in this version.")
    else:
        try:
            action(request.access, error)
        except ValidationError as exc:
            messages.error(request, _first_message(exc))
        else:
            messages.success(request, "Error dismissed. It comes back if the record fails again.")
    return _errors_redirect(request)


# --- Initial import ([R10]) ---------------------------------------------------------------------------------------


def _import_job(request, job_id: int) -> Job:
    return get_object_or_404(Job, pk=job_id, bu=request.access.bu, kind=initial_import.JOB_KIND)


@require_POST
@member_required(ADMIN)
def import_start(request):
    connector = _require_connector(request)
    try:
        job = initial_import.start_initial_import(request.access, connector)
    except ValidationError as exc:
        messages.error(request, _first_message(exc))
        return redirect("connector:overview")
    return redirect("connector:import_job", job_id=job.pk)


@member_required(ADMIN)
def import_job(request, job_id: int):
    connector = _require_connector(request)
    job = _import_job(request, job_id)
    return _render(request, "connector/import_progress.html",
                   {"connector": connector, **_import_status_context(job)})


def _import_status_context(job: Job) -> dict[str, Any]:
    waiting = (job.status == Job.Status.QUEUED and (timezone.now() - job.created_at).total_seconds() > 10)
    if job.kind == initial_import.EXPORT_KIND:
        return {"job": job, "waiting_for_worker": waiting, **_export_copy(job)}
    return {"job": job, "result": job.result or {}, "waiting_for_worker": waiting,
            "result_rows": [(str(k)[:1].upper() + str(k)[1:], v) for k, v in (job.result or {}).items()],
            "copy": IMPORT_COPY}


# The progress page and its status fragment serve the import and the export; these are the words that differ.
IMPORT_COPY = {
    "title": "Initial import", "intro": "the import goes on in the background", "finished": "Initial import finished",
    "stopped": "Initial import stopped", "running": "Importing CRM records…", "items": "CRM records",
    "work": "import", "status_url": "connector:import_status",
}
EXPORT_COPY = {
    "title": "Send prospects to the CRM", "intro": "the prospects are sent in the background",
    "finished": "Prospects sent to the CRM", "stopped": "Sending prospects stopped",
    "running": "Sending prospects to the CRM…", "items": "prospects", "work": "export",
    "status_url": "connector:export_status",
}
EXPORT_RESULT_LABELS = {
    "queued": "Queued for the CRM",
    "already_queued": "Already waiting in the outbox",
    "synced": "Linked to a CRM record so far",
    "created": "Created a CRM record",
    "linked": "Linked to an existing CRM record",
    "skipped": "Skipped (unassigned with no matching record, …)",
    "failed": "Failed (see the sync error queue)",
    "note": "Note",
}


def _export_copy(job: Job) -> dict[str, Any]:
    params = job.params or {}
    connector = Connector.objects.filter(pk=int(params.get("connector_id") or 0), bu_id=job.bu_id).first()
    notice = ""
    if not job.is_finished and connector is not None and connector.status != Connector.Status.ACTIVE:
        notice = ("The connector is paused: the queued prospects wait in the outbox, and the export continues once "
                  "the connector is resumed.")
    queueing = job.status == Job.Status.RUNNING and not params.get("queued_all")
    if queueing:
        notice = (f"Queueing prospects: {int(params.get('queued') or 0) + int(params.get('already_queued') or 0)} "
                  f"of {job.total} so far. {notice}").strip()
    result = job.result or {}
    rows = [(EXPORT_RESULT_LABELS.get(k, k), v) for k, v in result.items() if k != "already_queued" or v]
    return {"result": result, "result_rows": rows, "copy": EXPORT_COPY, "notice": notice}


@require_GET
@member_required(ADMIN)
def import_status(request, job_id: int):
    job = _import_job(request, job_id)
    return render(request, "connector/_import_status.html", _import_status_context(job))


# --- Initial export: existing prospects to the CRM ([R11], [R23]) --------------------------------------------------


def _export_job(request, job_id: int) -> Job:
    return get_object_or_404(Job, pk=job_id, bu=request.access.bu, kind=initial_import.EXPORT_KIND)


@require_POST
@member_required(ADMIN)
def export_start(request):
    connector = _require_connector(request)
    try:
        job = initial_import.start_initial_export(request.access, connector)
    except ValidationError as exc:
        messages.error(request, _first_message(exc))
        return redirect("connector:metadata")
    return redirect("connector:export_job", job_id=job.pk)


@member_required(ADMIN)
def export_job(request, job_id: int):
    connector = _require_connector(request)
    job = initial_import.refresh_stale_export(_export_job(request, job_id))
    return _render(request, "connector/import_progress.html",
                   {"connector": connector, **_import_status_context(job)})


@require_GET
@member_required(ADMIN)
def export_status(request, job_id: int):
    job = initial_import.refresh_stale_export(_export_job(request, job_id))
    return render(request, "connector/_import_status.html", _import_status_context(job))


# --- Metadata: describe, User Sync, connected campaigns ([R2], [R38]) -------------------------------------------


def _metadata_context(connector: Connector, role_form: ProfileRoleForm | None = None, request=None) -> dict:
    from loopline.campaigns.models import Campaign

    crm_users = list(CrmUser.objects.filter(connector=connector).select_related("user").order_by("username"))
    profiles = sorted({u.profile for u in crm_users if u.profile})
    form = role_form or ProfileRoleForm(bu=connector.bu, profiles=profiles,
                                        current=metadata.profile_role_map(connector))
    return {
        "connector": connector,
        "describes": CrmDescribe.objects.filter(connector=connector).order_by("object_type"),
        "crm_users": crm_users,
        "role_form": form,
        "profile_fields": [(p, form[f"profile_{i}"]) for i, p in enumerate(form.profiles)],
        "campaigns": Campaign.objects.filter(bu=connector.bu).exclude(crm_campaign_id="").order_by("name"),
        "last_run": SyncRun.objects.filter(connector=connector, kind="metadata").first(),
        "export_job": initial_import.running_export(connector),
        "connector_settings": services.settings_of(connector),
    }


@member_required(ADMIN)
def metadata_page(request):
    connector = _require_connector(request)
    return _render(request, "connector/metadata.html", _metadata_context(connector))


@require_POST
@member_required(ADMIN)
def metadata_refresh(request):
    connector = _require_connector(request)
    run = metadata.refresh_metadata(request.access, connector)
    if run.note.startswith("Metadata sync failed"):
        messages.error(request, run.note)
    else:
        messages.success(request, f"Metadata refreshed: {run.note}.")
    target = request.POST.get("next") or ""
    return redirect(target if target.startswith("/connector/") else "connector:metadata")


@require_POST
@member_required(ADMIN)
def metadata_roles(request):
    connector = _require_connector(request)
    profiles = sorted(set(CrmUser.objects.filter(connector=connector).exclude(profile="")
                          .values_list("profile", flat=True)))
    form = ProfileRoleForm(request.POST, bu=connector.bu, profiles=profiles,
                           current=metadata.profile_role_map(connector))
    if form.is_valid():
        try:
            metadata.update_profile_role_map(request.access, connector, form.mapping())
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "User Sync roles saved. They apply at the next metadata refresh.")
            return redirect("connector:metadata")
    return _render(request, "connector/metadata.html", _metadata_context(connector, form), status=400)
