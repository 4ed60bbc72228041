"""Signed-in pages for forms, form handlers and landing pages: lists with reports, the form builder, editors."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from loopline.accounts.decorators import member_required
from loopline.platform import actions
from loopline.prospects.fields import field_specs
from loopline.prospects.models import ActivityType
from loopline.tracking import selectors as tracking_selectors

from . import services
from .forms import FormHandlerForm, FormSettingsForm, LandingPageForm
from .models import Form, FormField, FormHandler, LandingPage

BLANK_FIELD_ROWS = 3


def _action_context(obj, errors=()):
    return {"action_rows": actions.actions_to_rows(obj.actions if obj else []),
            "action_choices": actions.choices(), "action_errors": errors}


@member_required("forms.view")
def form_list(request):
    access = request.access
    forms = Form.objects.filter(bu=access.bu, is_archived=False).select_related("campaign")
    rows = tracking_selectors.conversion_rows(access.bu.pk, forms, "form", ActivityType.FORM_SUCCESS,
                                              ActivityType.FORM_ERROR, ActivityType.FORM_VIEW)
    handlers = FormHandler.objects.filter(bu=access.bu)
    handler_rows = tracking_selectors.conversion_rows(access.bu.pk, handlers, "form_handler",
                                                      ActivityType.FORM_HANDLER_SUCCESS, ActivityType.FORM_HANDLER_ERROR)
    pages = LandingPage.objects.filter(bu=access.bu).select_related("form")
    page_rows = tracking_selectors.conversion_rows(access.bu.pk, pages, "landing_page",
                                                   ActivityType.LANDING_PAGE_SUCCESS, ActivityType.LANDING_PAGE_ERROR,
                                                   ActivityType.FORM_VIEW)
    chart = {"labels": [], "datasets": [{"label": "Views", "data": []}, {"label": "Submissions", "data": []}]}
    busiest = sorted([*rows, *page_rows], key=lambda r: (r["views"] or 0) + r["success"], reverse=True)[:12]
    for r in busiest:
        chart["labels"].append(str(r["asset"].name)[:40])
        chart["datasets"][0]["data"].append(r["views"] or 0)
        chart["datasets"][1]["data"].append(r["success"])
    return render(request, "forms/list.html", {
        "rows": rows, "handler_rows": handler_rows, "page_rows": page_rows, "base": settings.PUBLIC_BASE_URL,
        "chart": chart, "handler_chart": tracking_selectors.comparison_chart(handler_rows, "success", "Submissions")})


def _report(request, *, obj, asset_type: str, kind: str, series: dict, rate, edit_url: str, public_url: str):
    report = tracking_selectors.asset_report(request.access.bu.pk, asset_type, obj.pk, series, rate=rate,
                                             days=tracking_selectors.report_days(request.GET.get("days")))
    return render(request, "tracking/asset_report.html", {
        "title": obj.name, "kind": kind, "report": report, "back_url": reverse("forms:list"),
        "back_label": "Forms and landing pages", "edit_url": edit_url, "public_url": public_url,
        "has_rate": rate is not None, "rate_help": "Submissions per view over the period."})


@member_required("forms.view")
def form_report(request, pk: int):
    obj = get_object_or_404(Form, pk=pk, bu=request.access.bu)
    return _report(request, obj=obj, asset_type="form", kind="Form",
                   series={"Views": ActivityType.FORM_VIEW, "Submissions": ActivityType.FORM_SUCCESS,
                           "Errors": ActivityType.FORM_ERROR},
                   rate=("Submissions", "Views"), edit_url=reverse("forms:edit", args=[obj.pk]),
                   public_url=f"{settings.PUBLIC_BASE_URL}/f/{obj.key}/")


@member_required("forms.view")
def handler_report(request, pk: int):
    obj = get_object_or_404(FormHandler, pk=pk, bu=request.access.bu)
    return _report(request, obj=obj, asset_type="form_handler", kind="Form handler",
                   series={"Submissions": ActivityType.FORM_HANDLER_SUCCESS, "Errors": ActivityType.FORM_HANDLER_ERROR},
                   rate=None, edit_url=reverse("forms:handler_edit", args=[obj.pk]),
                   public_url=f"{settings.PUBLIC_BASE_URL}/fh/{obj.key}")


@member_required("forms.view")
def page_report(request, pk: int):
    obj = get_object_or_404(LandingPage, pk=pk, bu=request.access.bu)
    return _report(request, obj=obj, asset_type="landing_page", kind="Landing page",
                   series={"Views": ActivityType.FORM_VIEW, "Submissions": ActivityType.LANDING_PAGE_SUCCESS,
                           "Errors": ActivityType.LANDING_PAGE_ERROR},
                   rate=("Submissions", "Views"), edit_url=reverse("forms:page_edit", args=[obj.pk]),
                   public_url=f"{settings.PUBLIC_BASE_URL}/lp/{obj.key}/")


def _field_rows_from_post(post) -> list[dict]:
    rows = []
    for i in range(100):
        name = (post.get(f"field-{i}-prospect_field") or "").strip()
        if not name:
            continue
        try:
            position = int(post.get(f"field-{i}-position") or i)
        except ValueError:
            position = i
        rows.append((position, i, {
            "prospect_field": name, "label": post.get(f"field-{i}-label", ""), "kind": post.get(f"field-{i}-kind", ""),
            "required": bool(post.get(f"field-{i}-required")), "progressive": bool(post.get(f"field-{i}-progressive")),
            "default_value": post.get(f"field-{i}-default_value", ""), "help_text": post.get(f"field-{i}-help_text", ""),
        }))
    return [r for _, _, r in sorted(rows, key=lambda t: (t[0], t[1]))]


@member_required("forms.create")
def form_edit(request, pk: int | None = None):
    access = request.access
    obj = get_object_or_404(Form, pk=pk, bu=access.bu) if pk else None
    settings_form = FormSettingsForm(request.POST or None, instance=obj, bu=access.bu)
    errors: list[str] = []
    if obj:
        field_rows = [{"prospect_field": f.prospect_field, "label": f.label, "kind": f.kind, "required": f.required,
                       "progressive": f.progressive, "default_value": f.default_value, "help_text": f.help_text}
                      for f in obj.fields.all()]
    else:
        field_rows = [{"prospect_field": "email", "label": "Email", "kind": "email", "required": True},
                      {"prospect_field": "first_name", "label": "First name", "kind": "text"},
                      {"prospect_field": "last_name", "label": "Last name", "kind": "text"},
                      {"prospect_field": "company", "label": "Company", "kind": "text", "progressive": True}]
    action_rows_obj = obj
    if request.method == "POST":
        field_rows = _field_rows_from_post(request.POST)
        if settings_form.is_valid():
            data = {k: v for k, v in settings_form.cleaned_data.items() if k != "campaign"}
            data["campaign_id"] = settings_form.cleaned_data["campaign"].pk if settings_form.cleaned_data[
                "campaign"] else None
            try:
                data["actions"] = actions.rows_to_actions(access.bu, request.POST)
                saved = services.save_form(access, data, field_rows, instance=obj)
            except ValidationError as exc:
                errors = exc.messages
            else:
                messages.success(request, f"Form “{saved.name}” saved.")
                return redirect("forms:edit", pk=saved.pk)
    context = {
        "settings_form": settings_form, "obj": obj, "errors": errors,
        "field_rows": field_rows + [{} for _ in range(BLANK_FIELD_ROWS)],
        "specs": field_specs(access.bu.pk), "kinds": FormField.Kind.choices, "base": settings.PUBLIC_BASE_URL,
        **_action_context(action_rows_obj, errors),
    }
    return render(request, "forms/form_edit.html", context)


@member_required("forms.create")
def handler_edit(request, pk: int | None = None):
    access = request.access
    obj = get_object_or_404(FormHandler, pk=pk, bu=access.bu) if pk else None
    form = FormHandlerForm(request.POST or None, instance=obj, bu=access.bu)
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        data = {k: v for k, v in form.cleaned_data.items() if k not in ("campaign", "mappings_text")}
        data["campaign_id"] = form.cleaned_data["campaign"].pk if form.cleaned_data["campaign"] else None
        data["mappings"] = form.mappings()
        try:
            data["actions"] = actions.rows_to_actions(access.bu, request.POST)
            saved = services.save_form_handler(access, data, instance=obj)
        except ValidationError as exc:
            errors = exc.messages
        else:
            messages.success(request, f"Form handler “{saved.name}” saved.")
            return redirect("forms:handler_edit", pk=saved.pk)
    return render(request, "forms/asset_edit.html", {
        "form": form, "obj": obj, "kind": "form handler", "errors": errors, "base": settings.PUBLIC_BASE_URL,
        **_action_context(obj, errors)})


@member_required("forms.create")
def page_edit(request, pk: int | None = None):
    access = request.access
    obj = get_object_or_404(LandingPage, pk=pk, bu=access.bu) if pk else None
    form = LandingPageForm(request.POST or None, instance=obj, bu=access.bu)
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        cd = form.cleaned_data
        data = {"name": cd["name"], "title": cd["title"], "layout": cd["layout"], "is_published": cd["is_published"],
                "form_id": cd["form"].pk if cd["form"] else None,
                "campaign_id": cd["campaign"].pk if cd["campaign"] else None, "blocks": form.blocks()}
        try:
            data["actions"] = actions.rows_to_actions(access.bu, request.POST)
            saved = services.save_landing_page(access, data, instance=obj)
        except ValidationError as exc:
            errors = exc.messages
        else:
            messages.success(request, f"Landing page “{saved.name}” saved.")
            return redirect("forms:page_edit", pk=saved.pk)
    return render(request, "forms/asset_edit.html", {
        "form": form, "obj": obj, "kind": "landing page", "errors": errors, "base": settings.PUBLIC_BASE_URL,
        **_action_context(obj, errors)})
