"""Signed-in tracking pages: tracker settings and snippet, visitors, custom redirects, tracked files, reports."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from loopline.accounts.decorators import member_required
from loopline.platform import actions
from loopline.prospects.models import ActivityType

from . import selectors, services
from .forms import FileForm, RedirectForm, TrackerSettingsForm
from .models import CustomRedirect, TrackedFile


def _action_context(obj, errors=()):
    return {"action_rows": actions.actions_to_rows(getattr(obj, "actions", []) if obj else []),
            "action_choices": actions.choices(), "action_errors": errors}


@member_required("visitors.view")
def tracking_settings(request):
    access = request.access
    config = services.tracker_config(access.bu)
    form = TrackerSettingsForm(initial={
        "require_consent": config.require_consent, "show_banner": config.show_banner,
        "banner_text": config.banner_text, "allowed_origins": "\n".join(config.allowed_origins)})
    if request.method == "POST":
        access.require("settings.edit")
        form = TrackerSettingsForm(request.POST)
        if form.is_valid():
            data = {**form.cleaned_data, "allowed_origins": form.cleaned_data["allowed_origins"].splitlines()}
            try:
                services.save_tracker_config(access, data)
            except ValidationError as exc:
                form.add_error("allowed_origins", exc)
            else:
                messages.success(request, "Tracking settings saved.")
                return redirect("tracking:settings")
    snippet = (f'<script async src="{settings.PUBLIC_BASE_URL}/t/{config.key}/tracker.js"></script>')
    campaigns = access.bu.campaigns.order_by("name")[:100]
    return render(request, "tracking/settings.html", {
        "form": form, "config": config, "snippet": snippet, "campaigns": campaigns,
        "base": settings.PUBLIC_BASE_URL, "can_edit": access.can("settings.edit"),
    })


@member_required("visitors.view")
def visitor_list(request):
    access = request.access
    anonymous = request.GET.get("anonymous") == "1"
    page = Paginator(selectors.visitors(access, anonymous_only=anonymous), 50).get_page(request.GET.get("page"))
    for v in page:
        v.company_guess = selectors.company_guess(v.hostname)
    return render(request, "tracking/visitors.html", {"page": page, "anonymous": anonymous})


@member_required("visitors.view")
def visitor_detail(request, pk: int):
    visitor = selectors.get_visitor(request.access, pk)
    return render(request, "tracking/visitor_detail.html", {
        "visitor": visitor, "activities": selectors.visitor_activity(visitor),
        "company_guess": selectors.company_guess(visitor.hostname),
        "hostname": "" if visitor.hostname == services.UNRESOLVED else visitor.hostname})


@member_required("forms.view")
def redirect_list(request):
    access = request.access
    rows = selectors.click_rows(access.bu.pk, selectors.redirects(access), "custom_redirect",
                                ActivityType.CUSTOM_REDIRECT_CLICK)
    return render(request, "tracking/redirects.html", {
        "rows": rows, "base": settings.PUBLIC_BASE_URL,
        "chart": selectors.comparison_chart(rows, "human", "Human clicks")})


@member_required("forms.view")
def redirect_report(request, pk: int):
    obj = get_object_or_404(CustomRedirect, pk=pk, bu=request.access.bu)
    report = selectors.asset_report(request.access.bu.pk, "custom_redirect", obj.pk,
                                    {"Clicks": ActivityType.CUSTOM_REDIRECT_CLICK},
                                    days=selectors.report_days(request.GET.get("days")))
    return render(request, "tracking/asset_report.html", {
        "title": obj.name, "kind": "Custom redirect", "report": report, "back_url": reverse("tracking:redirects"),
        "back_label": "Custom redirects", "edit_url": reverse("tracking:redirect_edit", args=[obj.pk]),
        "public_url": f"{settings.PUBLIC_BASE_URL}/r/{obj.key}"})


@member_required("forms.create")
def redirect_edit(request, pk: int | None = None):
    access = request.access
    obj = get_object_or_404(CustomRedirect, pk=pk, bu=access.bu) if pk else None
    form = RedirectForm(request.POST or None, instance=obj, bu=access.bu)
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        try:
            data = dict(form.cleaned_data)
            data["actions"] = actions.rows_to_actions(access.bu, request.POST)
            saved = services.save_redirect(access, data, instance=obj)
        except ValidationError as exc:
            errors = exc.messages
        else:
            messages.success(request, f"Custom redirect “{saved.name}” saved.")
            return redirect("tracking:redirects")
    return render(request, "tracking/asset_form.html", {
        "form": form, "obj": obj, "kind": "custom redirect", "back": "tracking:redirects",
        **_action_context(obj, errors)})


@member_required("forms.view")
def file_list(request):
    access = request.access
    rows = selectors.click_rows(access.bu.pk, selectors.files(access), "file", ActivityType.FILE_ACCESS)
    return render(request, "tracking/files.html", {
        "rows": rows, "base": settings.PUBLIC_BASE_URL,
        "chart": selectors.comparison_chart(rows, "human", "Human downloads")})


@member_required("forms.view")
def file_report(request, pk: int):
    obj = get_object_or_404(TrackedFile, pk=pk, bu=request.access.bu)
    report = selectors.asset_report(request.access.bu.pk, "file", obj.pk, {"Downloads": ActivityType.FILE_ACCESS},
                                    days=selectors.report_days(request.GET.get("days")))
    return render(request, "tracking/asset_report.html", {
        "title": obj.name, "kind": "Tracked file", "report": report, "back_url": reverse("tracking:files"),
        "back_label": "Files", "edit_url": reverse("tracking:file_edit", args=[obj.pk]),
        "public_url": f"{settings.PUBLIC_BASE_URL}/file/{obj.key}/{obj.filename}"})


@member_required("forms.create")
def file_edit(request, pk: int | None = None):
    access = request.access
    obj = get_object_or_404(TrackedFile, pk=pk, bu=access.bu) if pk else None
    form = FileForm(request.POST or None, request.FILES or None, instance=obj, bu=access.bu)
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        data = {"name": form.cleaned_data["name"], "campaign": form.cleaned_data["campaign"]}
        if form.cleaned_data.get("upload"):
            data["file"] = form.cleaned_data["upload"]
        try:
            data["actions"] = actions.rows_to_actions(access.bu, request.POST)
            saved = services.save_file(access, data, instance=obj)
        except ValidationError as exc:
            errors = exc.messages
        else:
            messages.success(request, f"File “{saved.name}” saved.")
            return redirect("tracking:files")
    return render(request, "tracking/asset_form.html", {
        "form": form, "obj": obj, "kind": "file", "back": "tracking:files", "multipart": True,
        **_action_context(obj, errors)})
