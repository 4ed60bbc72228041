"""Scoring and grading pages (/scoring/): rules, rescoring progress, categories, grading profiles, and a prospect's
grade breakdown with thumbs up/down. Thin: the work is in services."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from loopline.accounts.decorators import member_required
from loopline.platform.models import Job
from loopline.prospects import selectors as prospect_selectors

from . import grading, selectors, services
from .models import GradingProfile, ScoreCategory

MAX_CRITERIA = 20


@member_required("scoring.view")
def overview(request):
    bu_id = request.access.bu.pk
    services.default_profile(request.access.bu)
    distribution = selectors.grade_distribution(bu_id)
    return render(request, "qualification/overview.html", {
        "rules": selectors.rules_rows(bu_id),
        "rescore": selectors.latest_job(bu_id, services.RESCORE_JOB),
        "regrade": selectors.latest_job(bu_id, services.REGRADE_JOB),
        "categories": selectors.categories(bu_id),
        "profiles": selectors.profiles(bu_id),
        "grade_labels": [g for g, _ in distribution], "grade_counts": [n for _, n in distribution],
    })


@member_required("scoring.edit")
def rules_edit(request):
    access = request.access
    rows = selectors.rules_rows(access.bu.pk)
    errors: list[str] = []
    if request.method == "POST":
        raw = {str(r["type"]): request.POST.get(f"points-{r['type']}", "") for r in rows}
        if "reset" in request.POST:
            raw = {str(r["type"]): str(r["default"]) for r in rows}
        try:
            cleaned = services.clean_points(raw)
        except ValidationError as exc:
            errors = exc.messages
            for r in rows:
                r["points"] = raw.get(str(r["type"]), "")
        else:
            job = services.save_rules(access.bu, cleaned, actor=request.user)
            if job is None:
                messages.info(request, "Nothing changed.")
                return redirect("qualification:overview")
            messages.success(request, "Scoring rules saved. Every prospect is being rescored in the background.")
            return redirect("qualification:job", job_id=job.pk)
    return render(request, "qualification/rules.html", {"rules": rows, "errors": errors},
                  status=400 if errors else 200)


def _job(request, job_id: int) -> Job:
    return get_object_or_404(Job, pk=job_id, bu_id=request.access.bu.pk,
                             kind__in=[services.RESCORE_JOB, services.REGRADE_JOB])


@member_required("scoring.view")
def job_detail(request, job_id: int):
    return render(request, "qualification/job.html", {"job": _job(request, job_id)})


@member_required("scoring.view")
def job_status(request, job_id: int):
    """Progress partial, polled by htmx every second until the job finishes."""
    return render(request, "qualification/_job_status.html", {"job": _job(request, job_id)})


@member_required("scoring.edit")
def category_edit(request, pk: int | None = None):
    access = request.access
    category = get_object_or_404(ScoreCategory, pk=pk, bu=access.bu) if pk else None
    error = ""
    data = {"name": category.name if category else "",
            "assets": "\n".join(f"{a['asset_type']}:{a['asset_id']}" for a in (category.assets if category else [])),
            "url_prefixes": "\n".join(category.url_prefixes if category else [])}
    if request.method == "POST":
        data = {k: request.POST.get(k, "") for k in data}
        try:
            services.save_category(access.bu, data, category, actor=request.user)
        except ValidationError as exc:
            error = " ".join(exc.messages)
        else:
            messages.success(request, f"Category {data['name']} saved; its scores are being recalculated.")
            return redirect("qualification:overview")
    return render(request, "qualification/category.html", {"category": category, "data": data, "error": error,
                                                           "asset_types": services.ASSET_TYPES},
                  status=400 if error else 200)


@require_POST
@member_required("scoring.delete")
def category_delete(request, pk: int):
    category = get_object_or_404(ScoreCategory, pk=pk, bu=request.access.bu)
    services.delete_category(request.access.bu, category, actor=request.user)
    messages.success(request, f"Category {category.name} deleted.")
    return redirect("qualification:overview")


def _criteria_from_post(post) -> list[dict]:
    rows = []
    for i in range(MAX_CRITERIA):
        rows.append({"label": post.get(f"c-{i}-label", ""), "field": post.get(f"c-{i}-field", ""),
                     "op": post.get(f"c-{i}-op", ""), "value": post.get(f"c-{i}-value", ""),
                     "weight": post.get(f"c-{i}-weight", "")})
    return [r for r in rows if any(str(v).strip() for v in r.values() if v is not None) and
            (r["field"] or r["label"] or r["value"])]


def _rows_for_form(criteria: list[dict], blank: int = 2) -> list[dict]:
    rows = [{**c, "value": ", ".join(c["value"]) if isinstance(c.get("value"), list) else c.get("value", ""),
             "weight": str(c.get("weight", ""))} for c in criteria]
    return rows + [{"label": "", "field": "", "op": "in", "value": "", "weight": "2"} for _ in range(blank)]


@member_required("scoring.edit")
def profile_edit(request, pk: int | None = None):
    access = request.access
    profile = get_object_or_404(GradingProfile, pk=pk, bu=access.bu) if pk else None
    name = profile.name if profile else ""
    criteria = profile.criteria if profile else []
    errors: list[str] = []
    if request.method == "POST":
        name = request.POST.get("name", "")
        criteria = _criteria_from_post(request.POST)
        try:
            profile, job = services.save_profile(access.bu, name, criteria, profile, actor=request.user)
        except ValidationError as exc:
            errors = exc.messages
        else:
            messages.success(request, f"Profile {profile.name} saved. Prospects are being regraded in the background.")
            return redirect("qualification:job", job_id=job.pk)
    return render(request, "qualification/profile.html", {
        "profile": profile, "name": name, "rows": _rows_for_form(criteria), "errors": errors,
        "fields": grading.GRADE_FIELDS, "ops": grading.OPS, "weights": grading.WEIGHTS,
    }, status=400 if errors else 200)


@member_required("prospects.view")
def prospect_grade(request, prospect_id: int):
    prospect = prospect_selectors.get_prospect(request.access, prospect_id)
    return render(request, "qualification/prospect.html", {
        "prospect": prospect, **selectors.prospect_breakdown(prospect),
        "profiles": selectors.profiles(request.access.bu.pk), "letters": grading.LETTERS,
    })


@require_POST
@member_required("prospects.edit")
def prospect_thumbs(request, prospect_id: int):
    prospect = prospect_selectors.get_prospect(request.access, prospect_id)
    direction = request.POST.get("direction")
    if direction not in ("up", "down"):
        return render(request, "qualification/_grade.html", {"prospect": prospect, "error": "Choose up or down."},
                      status=400)
    prospect.grade = services.thumbs(request.access.bu, prospect, direction == "up", actor=request.user)
    if request.headers.get("HX-Request"):
        return render(request, "qualification/_grade.html", {"prospect": prospect})
    return redirect("qualification:prospect", prospect_id=prospect.pk)


@require_POST
@member_required("scoring.edit")
def prospect_profile(request, prospect_id: int):
    prospect = prospect_selectors.get_prospect(request.access, prospect_id)
    raw = request.POST.get("profile", "")
    profile = get_object_or_404(GradingProfile, pk=raw, bu=request.access.bu) if raw else None
    services.set_prospect_profile(request.access.bu, prospect, profile)
    messages.success(request, "Grading profile changed; the grade was recalculated.")
    return redirect("qualification:prospect", prospect_id=prospect.pk)
