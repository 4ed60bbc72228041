"""Signed-in pages for lists, the criteria builder, segmentation and automation rules. Thin: reads through
``selectors``, writes through ``services``."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from loopline.accounts.decorators import member_required
from loopline.platform import actions
from loopline.prospects import selectors as prospect_selectors

from . import builder, criteria, selectors, services
from .models import AutomationRule, ListMembership, ProspectList

PREVIEW_CAP = 10_000


def _messages(exc: ValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {k: [m for e in v for m in e.messages] for k, v in exc.error_dict.items()}
    return {"general": exc.messages}


def _builder(bu, raw_tree, *, op: str = "", preview: bool = False) -> dict:
    """The builder context for a raw tree, after a button's edit; with a summary and a capped match count when the
    tree is valid."""
    catalogue = criteria.field_catalogue(bu)
    tree = raw_tree if isinstance(raw_tree, dict) and "rules" in raw_tree else {"match": "all", "rules": []}
    if op:
        tree = builder.apply_op(tree, op, catalogue)
    context = builder.builder_context(bu, tree)
    context.update({"summary": "", "preview_count": None, "preview_capped": False, "criteria_errors": []})
    if any(True for _ in criteria.iter_rules(tree)):
        try:
            cleaned = criteria.validate(bu, tree, catalogue=catalogue)
        except ValidationError as exc:
            if preview:
                context["criteria_errors"] = exc.messages
        else:
            context["summary"] = criteria.describe(bu, cleaned, catalogue=catalogue)
            if preview:
                n = criteria.matching_prospects(bu, cleaned, catalogue=catalogue).values("pk")[:PREVIEW_CAP + 1].count()
                context["preview_count"] = min(n, PREVIEW_CAP)
                context["preview_capped"] = n > PREVIEW_CAP
    return context


@member_required()
@require_POST
def criteria_builder(request):
    """htmx: redraw the builder after an edit (field chosen, condition added or removed)."""
    access = request.access
    if not (access.can("lists.view") or access.can("automation.view")):
        return HttpResponse(status=403)
    raw = builder.tree_from_post(request.POST)
    context = _builder(access.bu, raw, op=str(request.POST.get("builder_op", "")), preview=True)
    return render(request, "automation/_criteria_builder.html", context)


# --- Lists -----------------------------------------------------------------------------------------------------------


@member_required("lists.view")
def list_index(request):
    access = request.access
    rows = list(selectors.lists(access.bu))
    chart = [{"name": pl.name, "count": pl.member_count} for pl in sorted(rows, key=lambda r: -r.member_count)[:20]]
    return render(request, "automation/list_index.html", {"rows": rows, "chart": chart})


def _list_form_data(post) -> dict:
    return {
        "name": post.get("name", ""), "kind": post.get("kind", "static"), "is_public": bool(post.get("is_public")),
        "public_name": post.get("public_name", ""), "public_description": post.get("public_description", ""),
        "criteria": builder.tree_from_post(post),
    }


@member_required("lists.view")
def list_edit(request, pk: int | None = None):
    access = request.access
    pl = selectors.get_list(access.bu, pk) if pk else None
    access.require("lists.edit" if pl else "lists.create")
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        data = _list_form_data(request.POST)
        op = str(request.POST.get("builder_op", ""))
        if not op:
            try:
                saved = services.save_list(access, data, instance=pl)
            except ValidationError as exc:
                errors = _messages(exc)
            else:
                messages.success(request, f"List {saved.name} saved.")
                return redirect("automation:list_detail", pk=saved.pk)
        values = data
        tree = data["criteria"]
    else:
        op = ""
        values = {"name": pl.name, "kind": pl.kind, "is_public": pl.is_public, "public_name": pl.public_name,
                  "public_description": pl.public_description} if pl else {
            "name": "", "kind": request.GET.get("kind", "static"), "is_public": False}
        tree = pl.criteria if pl and pl.criteria else {"match": "all", "rules": [builder.default_rule({})]}
    context: dict[str, Any] = {"pl": pl, "values": values, "errors": errors}
    context.update(_builder(access.bu, tree, op=op))
    context["criteria_errors"] = errors.get("criteria", [])
    return render(request, "automation/list_edit.html", context)


@member_required("lists.view")
def list_detail(request, pk: int):
    access = request.access
    pl = selectors.get_list(access.bu, pk)
    members = selectors.members(access, pl)
    page = Paginator(members, 50).get_page(request.GET.get("page"))
    context = {
        "pl": pl, "page": page,
        "summary": criteria.describe(access.bu, pl.criteria) if pl.kind == ProspectList.Kind.DYNAMIC and pl.criteria
        else "",
        "unsubscribed": ListMembership.objects.filter(prospect_list=pl, opted_out=True).count(),
        "used_by": services.references_to_list(access.bu, pl.pk),
    }
    return render(request, "automation/list_detail.html", context)


@member_required("lists.edit")
@require_POST
def list_refresh(request, pk: int):
    pl = selectors.get_list(request.access.bu, pk)
    added, removed = services.refresh_list(pl)
    messages.success(request, f"Refreshed: {added} added, {removed} removed.")
    return redirect("automation:list_detail", pk=pl.pk)


@member_required("lists.delete")
@require_POST
def list_delete(request, pk: int):
    pl = selectors.get_list(request.access.bu, pk)
    try:
        services.delete_list(request.access, pl)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("automation:list_detail", pk=pl.pk)
    messages.success(request, f"List {pl.name} deleted.")
    return redirect("automation:list_index")


def _emails(text: str) -> list[str]:
    return [e.strip().lower() for e in text.replace(";", ",").replace("\n", ",").split(",") if e.strip()][:1000]


@member_required("lists.edit")
@require_POST
def list_members_add(request, pk: int):
    """Add prospects by email address (one per line or comma-separated)."""
    access = request.access
    pl = selectors.get_list(access.bu, pk)
    emails = _emails(request.POST.get("emails", ""))
    ids = prospect_selectors.scoped_prospects(access).filter(email__in=emails).values_list("pk", flat=True)
    found = list(ids)
    try:
        added = services.add_to_list(access.bu, pl, found)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        missing = len(set(emails)) - len(found)
        note = f" {missing} address{'es' if missing != 1 else ''} matched no prospect." if missing > 0 else ""
        messages.success(request, f"{added} prospect{'s' if added != 1 else ''} added.{note}")
    return redirect("automation:list_detail", pk=pl.pk)


@member_required("lists.edit")
@require_POST
def list_members_remove(request, pk: int):
    access = request.access
    pl = selectors.get_list(access.bu, pk)
    ids = [int(v) for v in request.POST.getlist("prospect") if str(v).isdigit()]
    visible = prospect_selectors.scoped_prospects(access).filter(pk__in=ids).values_list("pk", flat=True)
    try:
        removed = services.remove_from_list(access.bu, pl, list(visible))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{removed} prospect{'s' if removed != 1 else ''} removed.")
    return redirect("automation:list_detail", pk=pl.pk)


@member_required("lists.edit")
def add_filtered(request):
    """From the prospect list: add (or remove) every prospect that matches the current filters to a static list."""
    access = request.access
    params = request.POST if request.method == "POST" else request.GET
    filters = {k: params.get(k) for k in prospect_selectors.FILTER_PARAMS if params.get(k)}
    qs = prospect_selectors.filter_prospects(access, filters)
    count = qs.order_by().values("pk")[:PREVIEW_CAP + 1].count()
    lists = selectors.static_lists_for_picker(access.bu)
    if request.method == "POST":
        pl = selectors.get_list(access.bu, params.get("list"))
        ids = qs.order_by().values("pk")
        try:
            if params.get("mode") == "remove":
                done = services.remove_from_list(access.bu, pl, ids)
                messages.success(request, f"{done} prospect{'s' if done != 1 else ''} removed from {pl.name}.")
            else:
                done = services.add_to_list(access.bu, pl, ids)
                messages.success(request, f"{done} prospect{'s' if done != 1 else ''} added to {pl.name}.")
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect(request.get_full_path())
        return redirect("automation:list_detail", pk=pl.pk)
    return render(request, "automation/add_filtered.html", {
        "filters": filters, "count": min(count, PREVIEW_CAP), "capped": count > PREVIEW_CAP, "lists": lists})


@member_required("prospects.view")
def prospect_lists(request, prospect_id: int):
    """The "Lists" card of a prospect's page (loaded with htmx): its lists, add to / remove from static lists."""
    access = request.access
    prospect = prospect_selectors.get_prospect(access, prospect_id)
    if not access.can("lists.view"):
        return HttpResponse("")
    if request.method == "POST":
        if not access.can("lists.edit"):
            return HttpResponse(status=403)
        pl = selectors.get_list(access.bu, request.POST.get("list"))
        try:
            if request.POST.get("mode") == "remove":
                services.remove_from_list(access.bu, pl, [prospect.pk])
            else:
                services.add_to_list(access.bu, pl, [prospect.pk])
        except ValidationError as exc:
            error = " ".join(exc.messages)
        else:
            error = ""
        if not request.htmx:
            if error:
                messages.error(request, error)
            return redirect("prospects:detail", pk=prospect.pk)
        return render(request, "automation/_prospect_lists.html", _prospect_lists_context(access, prospect, error))
    return render(request, "automation/_prospect_lists.html", _prospect_lists_context(access, prospect, ""))


def _prospect_lists_context(access, prospect, error: str) -> dict:
    mine = list(selectors.lists_for_prospect(prospect))
    on = {pl.pk for pl in mine}
    return {"prospect": prospect, "memberships": mine, "error": error,
            "can_edit": access.can("lists.edit"),
            "addable": [pl for pl in selectors.static_lists_for_picker(access.bu) if pl.pk not in on]}


# --- Rules -----------------------------------------------------------------------------------------------------------


@member_required("automation.view")
def rule_index(request):
    bu = request.access.bu
    return render(request, "automation/rule_index.html", {
        "automation_rules": selectors.rules(bu, AutomationRule.Kind.AUTOMATION),
        "segmentation_rules": selectors.rules(bu, AutomationRule.Kind.SEGMENTATION),
    })


def _rule_form_data(bu, post) -> tuple[dict, list[str]]:
    action_errors: list[str] = []
    try:
        action_list = actions.rows_to_actions(bu, post)
    except ValidationError as exc:
        action_errors = exc.messages
        action_list = None
    data = {
        "name": post.get("name", ""), "kind": post.get("kind", AutomationRule.Kind.AUTOMATION),
        "criteria": builder.tree_from_post(post), "repeat": bool(post.get("repeat")),
        "repeat_after_days": post.get("repeat_after_days") or 30, "max_repeats": post.get("max_repeats") or None,
    }
    if action_list is not None:
        data["actions"] = action_list
    return data, action_errors


def _raw_action_rows(post) -> list[dict]:
    rows = []
    for i in range(50):
        kind = post.get(f"action-{i}-type", "")
        if kind or post.get(f"action-{i}-arg"):
            rows.append({"type": kind, "arg": post.get(f"action-{i}-arg", ""), "value": post.get(f"action-{i}-value", "")})
    return rows + [{"type": "", "arg": "", "value": ""} for _ in range(2)]


@member_required("automation.view")
def rule_edit(request, pk: int | None = None):
    access = request.access
    rule = selectors.get_rule(access.bu, pk) if pk else None
    access.require("automation.edit" if rule else "automation.create")
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        data, action_errors = _rule_form_data(access.bu, request.POST)
        op = str(request.POST.get("builder_op", ""))
        if not op:
            if action_errors:
                errors["actions"] = action_errors
            else:
                try:
                    saved = services.save_rule(access, data, instance=rule)
                except ValidationError as exc:
                    errors = _messages(exc)
                else:
                    messages.success(request, f"Rule {saved.name} saved{'' if rule else ' (paused)'}.")
                    return redirect("automation:rule_detail", pk=saved.pk)
        values = data
        tree = data["criteria"]
        action_rows = _raw_action_rows(request.POST)
    else:
        op = ""
        kind = request.GET.get("kind", AutomationRule.Kind.AUTOMATION)
        values = {"name": rule.name, "kind": rule.kind, "repeat": rule.repeat,
                  "repeat_after_days": rule.repeat_after_days, "max_repeats": rule.max_repeats} if rule else {
            "name": "", "kind": kind if kind in AutomationRule.Kind.values else "automation", "repeat": False,
            "repeat_after_days": 30, "max_repeats": None}
        tree = rule.criteria if rule else {"match": "all", "rules": [builder.default_rule({})]}
        action_rows = actions.actions_to_rows(rule.actions if rule else [])
    context: dict[str, Any] = {"rule": rule, "values": values, "errors": errors, "action_rows": action_rows,
               "action_choices": actions.choices(), "action_errors": errors.get("actions", [])}
    context.update(_builder(access.bu, tree, op=op))
    context["criteria_errors"] = errors.get("criteria", [])
    return render(request, "automation/rule_edit.html", context)


@member_required("automation.view")
def rule_detail(request, pk: int):
    access = request.access
    rule = selectors.get_rule(access.bu, pk)
    failed_only = request.GET.get("failed") == "1"
    return render(request, "automation/rule_detail.html", {
        "rule": rule, "summary": criteria.describe(access.bu, rule.criteria) if rule.criteria else "",
        "log": selectors.rule_log(rule, failed_only=failed_only), "failed_only": failed_only,
        "job": rule.job, "action_labels": dict(actions.choices()),
    })


@member_required("automation.view")
def rule_progress(request, pk: int):
    rule = selectors.get_rule(request.access.bu, pk)
    return render(request, "automation/_rule_progress.html", {"rule": rule, "job": rule.job})


@member_required("automation.edit")
@require_POST
def rule_resume(request, pk: int):
    access = request.access
    rule = selectors.get_rule(access.bu, pk)
    try:
        services.resume_rule(access, rule)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, "Rule started: it is evaluating every prospect now." if
                         rule.kind == AutomationRule.Kind.AUTOMATION else "Segmentation rule running.")
    return redirect("automation:rule_detail", pk=rule.pk)


@member_required("automation.edit")
@require_POST
def rule_pause(request, pk: int):
    rule = selectors.get_rule(request.access.bu, pk)
    services.pause_rule(request.access, rule)
    messages.success(request, "Rule paused.")
    return redirect("automation:rule_detail", pk=rule.pk)


@member_required("automation.delete")
@require_POST
def rule_delete(request, pk: int):
    rule = selectors.get_rule(request.access.bu, pk)
    services.delete_rule(request.access, rule)
    messages.success(request, f"Rule {rule.name} deleted.")
    return redirect("automation:rule_index")

