"""Import and export pages: upload -> column mapping -> progress (htmx polling) -> summary + rejects report; CSV
export of the prospect list with the list's own filters. Thin: the work is in ``importing`` / ``exporting``."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from loopline.accounts.decorators import member_required
from loopline.platform.models import Job
from loopline.platform.tasks import enqueue_on_commit

from . import exporting, importing, selectors
from .fields import field_specs

MAX_UPLOAD_BYTES = getattr(settings, "LOOPLINE_IMPORT_MAX_BYTES", 500 * 1024 * 1024)
SAMPLE_ROWS = 3


def _job(request, job_id: int) -> Job:
    """An import job of the current BU, or 404 (also for other BUs' job ids)."""
    return get_object_or_404(Job, pk=job_id, bu_id=request.access.bu.pk, kind=importing.JOB_KIND)


@member_required("import_export.create")
def import_start(request):
    request.access.require("import_export.create")
    error = ""
    if request.method == "POST":
        upload = request.FILES.get("file")
        if upload is None:
            error = "Choose a CSV file to import."
        elif upload.size > MAX_UPLOAD_BYTES:
            error = f"The file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB; split it into smaller files."
        else:
            relative = importing.save_upload(upload.chunks(), upload.name)
            try:
                importing.read_csv(importing.media_path(relative))
            except importing.ImportSetupError as exc:
                importing.media_path(relative).unlink(missing_ok=True)
                error = str(exc)
            else:
                job = importing.create_job(request.access.bu, relative, Path(upload.name).name, actor=request.user)
                return redirect("prospects:import_map", job_id=job.pk)
    recent = Job.objects.filter(bu_id=request.access.bu.pk, kind=importing.JOB_KIND).select_related("created_by")[:10]
    return render(request, "prospects/import_start.html", {"error": error, "recent": recent},
                  status=400 if error else 200)


@member_required("import_export.create")
def import_map(request, job_id: int):
    request.access.require("import_export.create")
    job = _job(request, job_id)
    if job.params.get("stage") != "mapping":
        return redirect("prospects:import_job", job_id=job.pk)
    bu = request.access.bu
    specs = field_specs(bu.pk)
    path = importing.media_path(job.params["path"])
    try:
        header, rows = importing.read_csv(path)
    except (importing.ImportSetupError, OSError) as exc:
        raise Http404(str(exc)) from None
    samples: list[list[str]] = []
    for row in rows:
        if not row.error:
            samples.append(row.values)
        if len(samples) >= SAMPLE_ROWS:
            break
    targets = importing.targets(specs)
    valid = {t.key for t in targets}
    mapping = importing.suggest_mapping(header, specs)
    options = importing.ImportOptions(match="crm_id" if bu.allow_duplicate_emails else "email")
    errors: list[str] = []
    if request.method == "POST":
        mapping = []
        for i in range(len(header)):
            key = request.POST.get(f"col_{i}", "").strip()
            if key and key not in valid:
                errors.append(f"Column '{header[i]}': choose a field from the list")
                key = ""
            mapping.append(key or None)
        options = importing.ImportOptions(
            match=request.POST.get("match") if request.POST.get("match") in ("email", "crm_id") else options.match,
            update_existing=request.POST.get("update_existing") == "on",
            undelete=request.POST.get("undelete") == "on",
            overwrite_with_blanks=request.POST.get("overwrite_with_blanks") == "on",
            timeline_entry=request.POST.get("timeline_entry") == "on",
        )
        used: dict[str, str] = {}
        labels = {t.key: t.label for t in targets}
        for i, key in enumerate(mapping):
            if key and key in used:
                errors.append(f"Columns '{used[key]}' and '{header[i]}' are both mapped to {labels[key]}")
            elif key:
                used[key] = header[i]
        if not errors:
            try:
                importing.check_mapping(bu, mapping, options.match)
            except importing.ImportSetupError as exc:
                errors.append(str(exc))
        if not errors:
            from .tasks import run_import

            with transaction.atomic():
                importing.configure_job(job, mapping, options)
                enqueue_on_commit(run_import, job.pk)
            return redirect("prospects:import_job", job_id=job.pk)
    columns = [
        {"index": i, "name": name or f"(column {i + 1})", "target": mapping[i],
         "samples": [r[i] if i < len(r) else "" for r in samples]}
        for i, name in enumerate(header)
    ]
    return render(request, "prospects/import_map.html", {
        "job": job, "columns": columns, "targets": targets, "options": options, "errors": errors,
        "unique_email": not bu.allow_duplicate_emails,
    }, status=400 if errors else 200)


def _status_context(job: Job) -> dict:
    queued_at = parse_datetime(job.params.get("queued_at") or "") or job.created_at
    stale = (job.status == Job.Status.QUEUED and job.params.get("stage") == "queued"
             and (timezone.now() - queued_at).total_seconds() > 30)
    return {"job": job, "result": job.result or {}, "waiting_for_worker": stale}


@member_required("import_export.view")
def import_job(request, job_id: int):
    request.access.require("import_export.view")
    job = _job(request, job_id)
    if job.params.get("stage") == "mapping":
        return redirect("prospects:import_map", job_id=job.pk)
    return render(request, "prospects/import_progress.html", _status_context(job))


@member_required("import_export.view")
def import_status(request, job_id: int):
    """The progress partial, polled by htmx every second until the job finishes."""
    request.access.require("import_export.view")
    job = _job(request, job_id)
    return render(request, "prospects/import_status.html", _status_context(job))


@member_required("import_export.view")
def import_rejects(request, job_id: int):
    request.access.require("import_export.view")
    job = _job(request, job_id)
    relative = (job.result or {}).get("rejects_path")
    if not relative:
        raise Http404("This import has no rejected rows")
    try:
        path = importing.media_path(relative)
    except ValueError:
        raise Http404("No such report") from None
    if not path.is_file():
        raise Http404("The report is no longer available")
    name = f"rejected-rows-{Path(job.params.get('filename') or 'import').stem}.csv"
    return FileResponse(open(path, "rb"), as_attachment=True, filename=name, content_type="text/csv")


@member_required("prospects.view", "import_export.view")
def prospect_export(request):
    """CSV of the prospect list as filtered and sorted on screen (same GET parameters), streamed."""
    access = request.access
    access.require("import_export.view")
    queryset = selectors.filter_prospects(access, request.GET)
    include_tags = request.GET.get("tags") in ("1", "yes", "on")
    return exporting.streaming_response(queryset, bu_id=access.bu.pk, include_tags=include_tags,
                                        filename=f"prospects-{access.bu.slug}-{timezone.now():%Y%m%d-%H%M}.csv")

