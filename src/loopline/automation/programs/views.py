"""Signed-in pages for engagement programs (list, settings, the step-flow editor, start/pause/resume, report) and
round-robin groups. Thin: reads through ``selectors``, writes through ``services``."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from loopline.accounts.decorators import member_required
from loopline.accounts.models import Membership
from loopline.automation import builder, criteria
from loopline.platform import actions

from . import selectors, services
from .models import Program, ProgramStep

ACTION_ROWS = 3


def _errors(exc: ValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {k: [m for e in v for m in e.messages] for k, v in exc.error_dict.items()}
    return {"general": exc.messages}


def _lists(bu) -> list[tuple[int, str]]:
    from loopline.automation import selectors as automation_selectors

    return [(pl.pk, pl.name) for pl in automation_selectors.lists(bu)]


def _emails(bu) -> list[tuple[int, str]]:
    try:
        from loopline.emails.selectors import sendable_emails
    except ImportError:
        return []
    return list(sendable_emails(bu).values_list("pk", "name"))


# --- Programs ----------------------------------------------------------------------------------------------------------


@member_required("automation.view")
def program_index(request):
    access = request.access
    rows = list(selectors.programs(access.bu))
    counts = selectors.member_counts([p.pk for p in rows])
    for p in rows:
        p.counts = counts[p.pk]  # type: ignore[attr-defined]
    chart = [{"name": p.name, "active": p.counts["active"], "finished": p.counts["finished"]}  # type: ignore[attr-defined]
             for p in rows[:20]]
    return render(request, "programs/index.html", {"rows": rows, "chart": chart if any(
        c["active"] or c["finished"] for c in chart) else []})


def _program_data(post) -> dict:
    return {"name": post.get("name", ""), "description": post.get("description", ""),
            "campaign_id": post.get("campaign_id", ""),
            "recipient_list_ids": post.getlist("recipient_list_ids"),
            "suppression_list_ids": post.getlist("suppression_list_ids"),
            "business_hours": bool(post.get("business_hours")), "business_days": post.getlist("business_days"),
            "business_start": post.get("business_start", ""), "business_end": post.get("business_end", ""),
            "timezone": post.get("timezone", "")}


def _campaigns(bu):
    from loopline.campaigns.models import Campaign

    return Campaign.objects.filter(bu=bu).order_by("name").only("pk", "name")


WEEKDAYS = [(0, "Mon"), (1, "Tue"), (2, "Wed"), (3, "Thu"), (4, "Fri"), (5, "Sat"), (6, "Sun")]


@member_required("automation.view")
def program_edit(request, pk: int | None = None):
    access = request.access
    program = selectors.get_program(access.bu, pk) if pk else None
    access.require("automation.edit" if program else "automation.create")
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        data = _program_data(request.POST)
        try:
            if program:
                saved = services.update_program(access, program, data)
            else:
                saved = services.create_program(access, data)
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, f"Program {saved.name} saved." + ("" if program else " Now add its steps."))
            return redirect("programs:detail", pk=saved.pk)
        values = {**data, "recipient_list_ids": [int(x) for x in data["recipient_list_ids"] if str(x).isdigit()],
                  "suppression_list_ids": [int(x) for x in data["suppression_list_ids"] if str(x).isdigit()],
                  "business_days": [int(x) for x in data["business_days"] if str(x).isdigit()]}
    elif program:
        values = {"name": program.name, "description": program.description, "campaign_id": program.campaign_id or "",
                  "recipient_list_ids": program.recipient_list_ids, "suppression_list_ids": program.suppression_list_ids,
                  "business_hours": program.business_hours, "business_days": program.business_days,
                  "business_start": program.business_start.strftime("%H:%M") if program.business_start else "09:00",
                  "business_end": program.business_end.strftime("%H:%M") if program.business_end else "17:00",
                  "timezone": program.timezone}
    else:
        values = {"name": "", "description": "", "campaign_id": "", "recipient_list_ids": [], "suppression_list_ids": [],
                  "business_hours": False, "business_days": [0, 1, 2, 3, 4], "business_start": "09:00",
                  "business_end": "17:00", "timezone": ""}
    return render(request, "programs/edit.html", {"program": program, "values": values, "errors": errors,
                                                  "lists": _lists(access.bu), "weekdays": WEEKDAYS,
                                                  "campaigns": _campaigns(access.bu)})


def _detail_context(program: Program) -> dict:
    rows = selectors.step_rows(program)
    counts = selectors.member_counts([program.pk])[program.pk]
    return {"program": program, "rows": rows, "chart": selectors.report_chart(rows), "counts": counts,
            "problems": services.graph_problems(program) if program.steps.exists() else [],
            "list_names": dict(_lists(program.bu))}


@member_required("automation.view")
def program_detail(request, pk: int):
    program = selectors.get_program(request.access.bu, pk)
    return render(request, "programs/detail.html", _detail_context(program))


@member_required("automation.view")
def program_report(request, pk: int):
    """htmx: the per-step report, polled while the program runs."""
    program = selectors.get_program(request.access.bu, pk)
    return render(request, "programs/_report.html", _detail_context(program))


def _lifecycle(request, pk: int, verb: str):
    access = request.access
    program = selectors.get_program(access.bu, pk)
    try:
        result = getattr(services, verb)(access, program)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        done = {"start": "started", "pause": "paused", "resume": "resumed", "archive": "archived"}[verb]
        extra = f" {result['entered']} prospect(s) entered." if isinstance(result, dict) else ""
        messages.success(request, f"Program {done}.{extra}")
    if verb == "archive":
        return redirect("programs:index")
    return redirect("programs:detail", pk=program.pk)


@member_required("automation.edit")
@require_POST
def program_start(request, pk: int):
    return _lifecycle(request, pk, "start")


@member_required("automation.edit")
@require_POST
def program_pause(request, pk: int):
    return _lifecycle(request, pk, "pause")


@member_required("automation.edit")
@require_POST
def program_resume(request, pk: int):
    return _lifecycle(request, pk, "resume")


@member_required("automation.delete")
@require_POST
def program_archive(request, pk: int):
    return _lifecycle(request, pk, "archive")


# --- Steps ---------------------------------------------------------------------------------------------------------------


def _step_data(bu, kind: str, post) -> dict:
    data: dict = {"kind": kind, "wait_kind": post.get("wait_kind", ""), "wait_amount": post.get("wait_amount", ""),
                  "wait_unit": post.get("wait_unit", "days"), "wait_until": post.get("wait_until", "") or None}
    if kind == "action":
        items: list[dict] = []
        if post.get("send_email_id"):
            items.append({"type": services.SEND_EMAIL, "email_id": post.get("send_email_id")})
        items.extend(actions.rows_to_actions(bu, post, prefix="action"))
        data["config"] = {"actions": items}
    elif kind == "trigger":
        data["config"] = {"event": post.get("event", ""), "asset_id": post.get("asset_id", ""),
                          "url_contains": post.get("url_contains", "")}
    elif kind == "rule":
        data["config"] = {"criteria": builder.tree_from_post(post)}
    for key in ("next_step_id", "yes_step_id", "no_step_id"):
        if key in post:
            data[key] = post.get(key)
    if post.get("branch"):
        data["branch"] = post.get("branch")
    return data


def _step_values(step: ProgramStep | None, kind: str) -> dict:
    if step is None:
        return {"wait_kind": "up_to" if kind == "trigger" else "none", "wait_amount": 3 if kind == "trigger" else 1,
                "wait_unit": "days", "wait_until": "", "send_email_id": None, "event": "email_open", "asset_id": "",
                "url_contains": "", "next_step_id": None, "yes_step_id": None, "no_step_id": None, "actions": []}
    config = step.config or {}
    items = config.get("actions") or []
    return {"wait_kind": step.wait_kind, "wait_amount": step.wait_amount or 1, "wait_unit": step.wait_unit,
            "wait_until": step.wait_until.strftime("%Y-%m-%dT%H:%M") if step.wait_until else "",
            "send_email_id": next((i.get("email_id") for i in items if i.get("type") == services.SEND_EMAIL), None),
            "event": config.get("event", ""), "asset_id": config.get("asset_id", ""),
            "url_contains": config.get("url_contains", ""), "next_step_id": step.next_step_id,
            "yes_step_id": step.yes_step_id, "no_step_id": step.no_step_id,
            "actions": [i for i in items if i.get("type") != services.SEND_EMAIL]}


def _values_from_post(post, kind: str) -> dict:
    def as_int(v):
        return int(v) if str(v or "").isdigit() else None

    return {"wait_kind": post.get("wait_kind", ""), "wait_amount": post.get("wait_amount", ""),
            "wait_unit": post.get("wait_unit", "days"), "wait_until": post.get("wait_until", ""),
            "send_email_id": as_int(post.get("send_email_id")), "event": post.get("event", ""),
            "asset_id": post.get("asset_id", ""), "url_contains": post.get("url_contains", ""),
            "next_step_id": as_int(post.get("next_step_id")), "yes_step_id": as_int(post.get("yes_step_id")),
            "no_step_id": as_int(post.get("no_step_id"))}


def _step_form(request, program: Program, step: ProgramStep | None, kind: str):
    access = request.access
    errors: list[str] = []
    tree = (step.config or {}).get("criteria") if step else None
    if request.method == "POST":
        op = str(request.POST.get("builder_op", ""))
        tree = builder.tree_from_post(request.POST) if kind == "rule" else None
        if not op:
            try:
                data = _step_data(access.bu, kind, request.POST)
                if step:
                    services.update_step(access, step, data)
                else:
                    services.add_step(access, program, data, after=_after(program, request.POST.get("after")))
            except ValidationError as exc:
                errors = [m for ms in _errors(exc).values() for m in ms]
            else:
                messages.success(request, "Step saved.")
                return redirect("programs:detail", pk=program.pk)
        elif tree is not None:
            tree = builder.apply_op(tree, op, criteria.field_catalogue(access.bu))
        values = _values_from_post(request.POST, kind)
        action_rows = actions.actions_to_rows([], blank=0)
        action_rows = [{"type": request.POST.get(f"action-{i}-type", ""), "arg": request.POST.get(f"action-{i}-arg", ""),
                        "value": request.POST.get(f"action-{i}-value", "")} for i in range(ACTION_ROWS)]
    else:
        values = _step_values(step, kind)
        action_rows = actions.actions_to_rows(values["actions"], blank=max(1, ACTION_ROWS - len(values["actions"])))
    context = {
        "program": program, "step": step, "kind": kind, "kind_label": dict(ProgramStep.Kind.choices)[kind],
        "values": values, "errors": errors, "action_rows": action_rows,
        "action_choices": [c for c in actions.choices() if c[0] != "send_autoresponder"],
        "emails": _emails(access.bu), "triggers": [(k, v[0]) for k, v in services.TRIGGERS.items()],
        "step_choices": selectors.step_choices(program, exclude=step.pk if step else None),
        "after": request.POST.get("after") or request.GET.get("after", ""),
        "branch": request.POST.get("branch") or request.GET.get("branch", ""),
        "units": ProgramStep.Unit.choices,
    }
    if kind == "rule":
        context.update(builder.builder_context(access.bu, tree or {"match": "all", "rules": [
            builder.default_rule(criteria.field_catalogue(access.bu))]}))
        context.update({"summary": "", "preview_count": None, "criteria_errors": []})
    template = "programs/_step_form.html" if request.htmx and request.method == "GET" else "programs/step_edit.html"
    return render(request, template, context)


def _after(program: Program, raw) -> ProgramStep | None:
    if raw and str(raw).isdigit():
        return program.steps.filter(pk=int(raw)).first()
    return None


@member_required("automation.edit")
def step_new(request, pk: int):
    program = selectors.get_program(request.access.bu, pk)
    kind = request.POST.get("kind") or request.GET.get("kind", "action")
    if kind not in ProgramStep.Kind.values:
        kind = "action"
    if not program.is_editable:
        messages.error(request, "Pause the program before changing its steps.")
        return redirect("programs:detail", pk=program.pk)
    return _step_form(request, program, None, kind)


@member_required("automation.edit")
def step_edit(request, pk: int, step_id: int):
    program = selectors.get_program(request.access.bu, pk)
    step = selectors.get_step(program, step_id)
    if not program.is_editable:
        messages.error(request, "Pause the program before changing its steps.")
        return redirect("programs:detail", pk=program.pk)
    return _step_form(request, program, step, step.kind)


@member_required("automation.edit")
@require_POST
def step_delete(request, pk: int, step_id: int):
    program = selectors.get_program(request.access.bu, pk)
    step = selectors.get_step(program, step_id)
    try:
        services.delete_step(request.access, step)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        messages.success(request, "Step removed.")
    return redirect("programs:detail", pk=program.pk)


@member_required("automation.edit")
@require_POST
def step_first(request, pk: int, step_id: int):
    program = selectors.get_program(request.access.bu, pk)
    step = selectors.get_step(program, step_id)
    if program.is_editable:
        Program.objects.filter(pk=program.pk).update(start_step=step)
        messages.success(request, "First step changed.")
    return redirect("programs:detail", pk=program.pk)


# --- Round-robin groups ----------------------------------------------------------------------------------------------------


def _bu_users(bu) -> list[tuple[int, str]]:
    return [(m.user_id, m.user.get_full_name() or m.user.email) for m in
            Membership.objects.filter(bu=bu).select_related("user").order_by("user__email")]


@member_required("automation.view")
def group_index(request):
    access = request.access
    rows = []
    for group in selectors.groups(access.bu):
        nxt = services.next_member(group)
        rows.append({"group": group, "members": list(group.members.all()), "next": nxt})
    return render(request, "programs/groups.html", {"rows": rows})


@member_required("automation.view")
def group_edit(request, group_id: int | None = None):
    access = request.access
    group = selectors.get_group(access.bu, group_id) if group_id else None
    access.require("automation.edit")
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        data = {"name": request.POST.get("name", ""), "user_ids": request.POST.getlist("user_ids"),
                "paused_user_ids": request.POST.getlist("paused_user_ids"),
                "is_active": bool(request.POST.get("is_active"))}
        try:
            saved = services.save_group(access, data, group)
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, f"Group {saved.name} saved.")
            return redirect("programs:groups")
        values = {"name": data["name"], "user_ids": [int(u) for u in data["user_ids"] if str(u).isdigit()],
                  "paused_user_ids": [int(u) for u in data["paused_user_ids"] if str(u).isdigit()],
                  "is_active": data["is_active"]}
    elif group:
        members = list(group.members.all())
        values = {"name": group.name, "user_ids": [m.user_id for m in members],
                  "paused_user_ids": [m.user_id for m in members if not m.is_active], "is_active": group.is_active}
    else:
        values = {"name": "", "user_ids": [], "paused_user_ids": [], "is_active": True}
    return render(request, "programs/group_edit.html", {"group": group, "values": values, "errors": errors,
                                                        "users": _bu_users(access.bu)})
