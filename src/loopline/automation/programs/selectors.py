"""Reads for programs: the list, one program's flow in order, plain-language step descriptions and the per-step /
per-path report ([M20])."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404

from loopline.platform import actions

from . import graph
from .models import AssignmentGroup, CrmAssignmentRequest, Program, ProgramMember, ProgramStep, ProgramStepLog

UNIT_LABELS = {"minutes": ("minute", "minutes"), "hours": ("hour", "hours"), "days": ("day", "days")}


def pending_crm_assignments(bu_id: int, prospect_ids) -> set[int]:
    """Prospects handed to the CRM's assignment rule whose CRM record is not created yet ([M22]; the connector)."""
    return set(CrmAssignmentRequest.objects.filter(bu_id=bu_id, prospect_id__in=list(prospect_ids), pending=True)
               .values_list("prospect_id", flat=True))


def programs(bu) -> QuerySet[Program]:
    return Program.objects.filter(bu=bu).exclude(status=Program.Status.ARCHIVED)


def get_program(bu, pk) -> Program:
    return get_object_or_404(Program.objects.select_related("bu"), bu=bu, pk=pk)


def get_step(program: Program, pk) -> ProgramStep:
    return get_object_or_404(ProgramStep, program=program, pk=pk)


def groups(bu) -> QuerySet[AssignmentGroup]:
    return AssignmentGroup.objects.filter(bu=bu).prefetch_related("members__user")


def get_group(bu, pk) -> AssignmentGroup:
    return get_object_or_404(AssignmentGroup, bu=bu, pk=pk)


def member_counts(program_ids: list[int]) -> dict[int, dict[str, int]]:
    rows = (ProgramMember.objects.filter(program_id__in=program_ids).values("program_id", "status")
            .annotate(n=Count("id")))
    out: dict[int, dict[str, int]] = {pk: {"active": 0, "removed": 0, "finished": 0} for pk in program_ids}
    for row in rows:
        out[row["program_id"]][row["status"]] = row["n"]
    return out


def flow(program: Program) -> list[ProgramStep]:
    """Steps in flow order (from the first step, breadth first), numbered for people as "Step 1", "Step 2"..."""
    steps = {s.pk: s for s in program.steps.all()}
    nodes = [graph.Node(s.pk, s.kind, s.next_step_id, s.yes_step_id, s.no_step_id) for s in steps.values()]
    ordered = [steps[i] for i in graph.ordered(nodes, program.start_step_id)]
    for number, step in enumerate(ordered, 1):
        step.number = number  # type: ignore[attr-defined]
    return ordered


def _names(program: Program) -> dict[str, dict[int, str]]:
    from loopline.automation.models import ProspectList

    names: dict[str, dict[int, str]] = {"lists": dict(ProspectList.objects.filter(bu_id=program.bu_id)
                                                      .values_list("pk", "name")),
                                        "emails": {}, "groups": {}}
    try:
        from loopline.emails.selectors import sendable_emails

        names["emails"] = dict(sendable_emails(program.bu).values_list("pk", "name"))
    except ImportError:
        pass
    names["groups"] = dict(AssignmentGroup.objects.filter(bu_id=program.bu_id).values_list("pk", "name"))
    return names


def _action_text(item: dict, names: dict) -> str:
    kind = item.get("type", "")
    if kind == "send_email":
        return f"Send email “{names['emails'].get(item.get('email_id'), '#' + str(item.get('email_id')))}”"
    labels = dict(actions.choices())
    label = labels.get(kind, kind)
    if kind in ("add_tag", "remove_tag"):
        return f"{label}: {item.get('tag')}"
    if kind == "adjust_score":
        return f"{label}: {int(item.get('points', 0)):+d}"
    if kind == "change_grade":
        return f"Change grade: {int(item.get('thirds', 0)):+d}/3 letter"
    if kind in ("add_to_list", "remove_from_list"):
        return f"{label}: {names['lists'].get(item.get('list_id'), item.get('list_id'))}"
    if kind == "assign_round_robin":
        return f"{label}: {names['groups'].get(item.get('group_id'), item.get('group_id'))}"
    if kind == "assign_crm_queue":
        return f"{label}: {item.get('queue_id')}"
    if kind == "change_field":
        return f"{label}: {item.get('field')} = {item.get('value')}"
    return label


def _amount(step: ProgramStep) -> str:
    one, many = UNIT_LABELS.get(step.wait_unit, (step.wait_unit, step.wait_unit))
    return f"{step.wait_amount} {one if step.wait_amount == 1 else many}"


def wait_text(step: ProgramStep) -> str:
    if step.wait_kind == ProgramStep.Wait.DELAY:
        return f"after waiting {_amount(step)}"
    if step.wait_kind == ProgramStep.Wait.UNTIL and step.wait_until:
        return f"on {step.wait_until:%Y-%m-%d %H:%M} UTC"
    if step.wait_kind == ProgramStep.Wait.UP_TO:
        return f"listening for up to {_amount(step)}"
    return "immediately"


def step_text(step: ProgramStep, names: dict) -> str:
    config = step.config or {}
    if step.kind == ProgramStep.Kind.ACTION:
        return "; ".join(_action_text(i, names) for i in config.get("actions") or []) or "No action yet"
    if step.kind == ProgramStep.Kind.TRIGGER:
        from .services import TRIGGERS

        label = TRIGGERS.get(config.get("event", ""), ("Trigger",))[0]
        detail = ""
        if config.get("asset_id"):
            asset = names["emails"].get(config["asset_id"]) if config.get("event", "").startswith("email") else None
            detail += f" “{asset}”" if asset else f" #{config['asset_id']}"
        if config.get("url_contains"):
            detail += f" containing “{config['url_contains']}”"
        return f"{label}{detail}?"
    if step.kind == ProgramStep.Kind.RULE:
        try:
            from loopline.automation import criteria

            return "Does the prospect match: " + criteria.describe(step.program.bu, config.get("criteria") or {}) + "?"
        except Exception:
            return "Rule"
    return "End of the program"


@dataclass
class StepRow:
    step: ProgramStep
    number: int
    text: str
    wait: str
    waiting: int = 0
    removed: int = 0
    passed: int = 0
    yes: int = 0
    no: int = 0
    failed: int = 0
    links: dict[str, str] = field(default_factory=dict)


def step_rows(program: Program) -> list[StepRow]:
    """The flow with, per step, how many prospects are at it now and how many passed it (per path for branches)."""
    steps = flow(program)
    names = _names(program)
    numbers = {s.pk: s.number for s in steps}  # type: ignore[attr-defined]
    at = {(r["step_id"], r["status"]): r["n"] for r in ProgramMember.objects.filter(program=program).values(
        "step_id", "status").annotate(n=Count("id"))}
    logs = ProgramStepLog.objects.filter(program=program).values("step_id").annotate(
        passed=Count("id"), yes=Count("id", filter=Q(outcome="yes")), no=Count("id", filter=Q(outcome="no")),
        failed=Count("id", filter=Q(outcome="failed")))
    by_step: dict[int, dict] = {r["step_id"]: dict(r) for r in logs}

    def target(pk: int | None) -> str:
        return f"Step {numbers[pk]}" if pk in numbers else "End of the program"

    rows = []
    for s in steps:
        r = by_step.get(s.pk, {})
        row = StepRow(step=s, number=s.number, text=step_text(s, names), wait=wait_text(s),  # type: ignore[attr-defined]
                      waiting=at.get((s.pk, "active"), 0), removed=at.get((s.pk, "removed"), 0),
                      passed=r.get("passed", 0), yes=r.get("yes", 0), no=r.get("no", 0), failed=r.get("failed", 0))
        if s.kind == ProgramStep.Kind.ACTION:
            row.links = {"then": target(s.next_step_id)}
        elif s.branches:
            row.links = {"yes": target(s.yes_step_id), "no": target(s.no_step_id)}
        rows.append(row)
    return rows


def report_chart(rows: list[StepRow]) -> dict:
    return {"labels": [f"Step {r.number}" for r in rows], "waiting": [r.waiting for r in rows],
            "passed": [r.passed for r in rows], "yes": [r.yes for r in rows], "no": [r.no for r in rows]}


def step_choices(program: Program, exclude: int | None = None) -> list[tuple[int, str]]:
    names = _names(program)
    return [(s.pk, f"Step {s.number}: {step_text(s, names)[:60]}") for s in flow(program)  # type: ignore[attr-defined]
            if s.pk != exclude]
