"""Engagement programs ([M20]) and assignment ([M22]): building, starting, pausing, recipients, assignment.

The step-by-step engine that moves prospects through programs lives in :mod:`.runner`.

    program = services.create_program(access, {"name": "Nurture", "recipient_list_ids": [3]})
    email = services.add_step(access, program, {"kind": "action", "config": {"actions": [
        {"type": "send_email", "email_id": 7}]}})
    services.add_step(access, program, {"kind": "trigger", "config": {"event": "email_open", "email_id": 7},
                                        "wait_kind": "up_to", "wait_amount": 3, "wait_unit": "days"})
    services.start(access, program)
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import zoneinfo
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Exists, F, Max, OuterRef
from django.utils import timezone

from loopline.accounts.access import Access
from loopline.accounts.models import BusinessUnit, Membership
from loopline.platform import actions, audit, events
from loopline.prospects import services as prospect_services
from loopline.prospects.models import ActivityType, Prospect

from . import graph
from .models import (
    AssignmentGroup,
    AssignmentGroupMember,
    CrmAssignmentRequest,
    Program,
    ProgramMember,
    ProgramStep,
)

logger = logging.getLogger("loopline.programs")

SEND_EMAIL = "send_email"
MAX_WAIT_DAYS = 3650
UNIT_SECONDS = {"minutes": 60, "hours": 3600, "days": 86400}

# Trigger events ([M20]: did the prospect open/click email X, submit form Y, visit page Z — since entering).
# key -> (label, activity types, asset type of the optional asset id)
TRIGGERS: dict[str, tuple[str, tuple[int, ...], str]] = {
    "email_open": ("Opened an email", (ActivityType.EMAIL_OPEN,), "email"),
    "email_click": ("Clicked a link in an email", (ActivityType.EMAIL_CLICK,), "email"),
    "form_submit": ("Submitted a form", (ActivityType.FORM_SUCCESS,), "form"),
    "form_handler_submit": ("Submitted a form handler", (ActivityType.FORM_HANDLER_SUCCESS,), "form_handler"),
    "landing_page_submit": ("Submitted a landing page", (ActivityType.LANDING_PAGE_SUCCESS,), "landing_page"),
    "page_visit": ("Visited a page", (ActivityType.PAGE_VIEW,), ""),
    "file_download": ("Downloaded a file", (ActivityType.FILE_ACCESS,), "file"),
    "redirect_click": ("Clicked a custom redirect", (ActivityType.CUSTOM_REDIRECT_CLICK,), "custom_redirect"),
}
TRIGGER_ACTIVITY_TYPES = frozenset(t for _, types, _ in TRIGGERS.values() for t in types)


# --- Programs --------------------------------------------------------------------------------------------------------


def _ids(raw: Any, what: str) -> list[int]:
    if raw in (None, ""):
        return []
    if isinstance(raw, str):
        raw = [part for part in re.split(r"[,\s]+", raw) if part]
    if not isinstance(raw, list | tuple):
        raise ValidationError(f"{what}: a list of ids")
    try:
        out = sorted({int(x) for x in raw})
    except (TypeError, ValueError):
        raise ValidationError(f"{what}: ids must be whole numbers") from None
    if len(out) > 50:
        raise ValidationError(f"{what}: at most 50 lists")
    return out


def _check_lists(bu: BusinessUnit, ids: list[int], what: str) -> None:
    from loopline.automation.models import ProspectList

    known = set(ProspectList.objects.filter(bu=bu, pk__in=ids).values_list("pk", flat=True))
    missing = [i for i in ids if i not in known]
    if missing:
        raise ValidationError(f"{what}: no such list ({', '.join(map(str, missing))})")


def _parse_time(value: Any, what: str) -> dt.time | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.time):
        return value
    try:
        return dt.time.fromisoformat(str(value))
    except ValueError:
        raise ValidationError(f"{what}: a time like 09:00") from None


def clean_program(bu: BusinessUnit, data: Mapping[str, Any]) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    name = str(data.get("name", "") or "").strip()
    if not name or len(name) > 200:
        errors["name"] = ["A program needs a name (up to 200 characters)"]
    out["name"] = name
    out["description"] = str(data.get("description", "") or "")[:5000]
    campaign_id = data.get("campaign_id")
    out["campaign_id"] = None
    if campaign_id not in (None, ""):
        from loopline.campaigns.models import Campaign

        if not str(campaign_id).isdigit() or not Campaign.objects.filter(bu=bu, pk=int(campaign_id)).exists():
            errors["campaign_id"] = ["Choose a campaign of this business unit"]
        else:
            out["campaign_id"] = int(campaign_id)
    for key, what in (("recipient_list_ids", "Recipient lists"), ("suppression_list_ids", "Suppression lists")):
        try:
            ids = _ids(data.get(key), what)
            _check_lists(bu, ids, what)
            out[key] = ids
        except ValidationError as exc:
            errors[key] = exc.messages
    out["business_hours"] = bool(data.get("business_hours"))
    try:
        days = _ids(data.get("business_days"), "Business days") if data.get("business_days") not in (None, "") \
            else [0, 1, 2, 3, 4]
        if any(d < 0 or d > 6 for d in days):
            raise ValidationError("Business days: 0 (Monday) to 6 (Sunday)")
        out["business_days"] = days
        start = _parse_time(data.get("business_start"), "Opens at") or dt.time(9, 0)
        end = _parse_time(data.get("business_end"), "Closes at") or dt.time(17, 0)
        if end <= start:
            raise ValidationError("Business hours must close after they open")
        out["business_start"], out["business_end"] = start, end
    except ValidationError as exc:
        errors["business_hours"] = exc.messages
    tz = str(data.get("timezone", "") or "").strip()
    if tz:
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            errors["timezone"] = [f"Unknown time zone '{tz[:60]}'"]
    out["timezone"] = tz
    if errors:
        raise ValidationError(errors)
    return out


@transaction.atomic
def create_program(access: Access, data: Mapping[str, Any]) -> Program:
    access.require("automation.create")
    cleaned = clean_program(access.bu, data)
    if Program.objects.filter(bu=access.bu, name__iexact=cleaned["name"]).exists():
        raise ValidationError({"name": ["A program with this name exists already"]})
    program = Program.objects.create(bu=access.bu, created_by=access.user, **cleaned)
    audit.record("program.create", actor=access.user, bu=access.bu, obj=program, summary=program.name)
    return program


@transaction.atomic
def update_program(access: Access, program: Program, data: Mapping[str, Any]) -> Program:
    access.require("automation.edit")
    cleaned = clean_program(access.bu, data)
    if Program.objects.filter(bu=access.bu, name__iexact=cleaned["name"]).exclude(pk=program.pk).exists():
        raise ValidationError({"name": ["A program with this name exists already"]})
    for key, value in cleaned.items():
        setattr(program, key, value)
    program.save()
    if program.status == Program.Status.RUNNING:
        sync_recipients(program)
    return program


# --- Steps ----------------------------------------------------------------------------------------------------------


def _clean_action_list(bu: BusinessUnit, raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise ValidationError("An action step needs at least one action")
    if len(raw) > 10:
        raise ValidationError("An action step has at most 10 actions")
    cleaned = []
    for i, item in enumerate(raw, 1):
        if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
            raise ValidationError(f"Action {i}: needs a type")
        if item["type"] == SEND_EMAIL:
            cleaned.append({"type": SEND_EMAIL, "email_id": _check_email(bu, item.get("email_id"))})
        else:
            cleaned.extend(actions.validate_actions(bu, [dict(item)]))
    return cleaned


def _check_email(bu: BusinessUnit, raw: Any) -> int:
    try:
        email_id = int(raw)
    except (TypeError, ValueError):
        raise ValidationError("Choose the email to send") from None
    try:
        from loopline.emails.selectors import sendable_emails
    except ImportError:
        raise ValidationError("Email sending is not available yet") from None
    if not sendable_emails(bu).filter(pk=email_id).exists():
        raise ValidationError("That email cannot be sent (archived, or not in this business unit)")
    return email_id


def _clean_trigger(config: Mapping[str, Any]) -> dict:
    event = str(config.get("event", "") or "")
    if event not in TRIGGERS:
        raise ValidationError("Choose what the trigger listens for")
    out: dict[str, Any] = {"event": event}
    asset = config.get("asset_id")
    if asset not in (None, ""):
        try:
            out["asset_id"] = int(asset)
        except (TypeError, ValueError):
            raise ValidationError("The asset must be an id") from None
    url = str(config.get("url_contains", "") or "").strip()
    if url:
        out["url_contains"] = url[:500]
    if event == "page_visit" and not url:
        raise ValidationError("Say which page: part of its address")
    return out


def _clean_rule(bu: BusinessUnit, config: Mapping[str, Any]) -> dict:
    tree = config.get("criteria")
    if not isinstance(tree, Mapping) or not tree.get("rules"):
        raise ValidationError("A rule step needs at least one condition")
    if graph.count_conditions(tree) > graph.MAX_RULE_CONDITIONS:
        raise ValidationError(f"A rule step has at most {graph.MAX_RULE_CONDITIONS} conditions")
    try:
        from loopline.automation import criteria
    except ImportError:
        raise ValidationError("Rule conditions are not available yet") from None
    return {"criteria": criteria.validate(bu, dict(tree))}


def _clean_wait(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    wait_kind = str(data.get("wait_kind") or ("up_to" if kind == "trigger" else "none"))
    allowed = {"action": {"none", "delay", "until"}, "rule": {"none", "delay"}, "trigger": {"up_to"}, "end": {"none"}}
    if wait_kind not in allowed[kind]:
        raise ValidationError(f"That wait does not fit a {kind} step")
    out: dict[str, Any] = {"wait_kind": wait_kind, "wait_amount": 0, "wait_unit": "days", "wait_until": None}
    if wait_kind in ("delay", "up_to"):
        unit = str(data.get("wait_unit") or "days")
        if unit not in UNIT_SECONDS:
            raise ValidationError("Wait in minutes, hours or days")
        try:
            amount = int(data.get("wait_amount"))  # type: ignore[arg-type]  # ValueError/TypeError handled
        except (TypeError, ValueError):
            raise ValidationError("How long to wait: a whole number") from None
        if amount < 1 or amount * UNIT_SECONDS[unit] > MAX_WAIT_DAYS * 86400:
            raise ValidationError(f"Wait between 1 minute and {MAX_WAIT_DAYS} days")
        out.update(wait_amount=amount, wait_unit=unit)
    if wait_kind == "until":
        when = data.get("wait_until")
        if isinstance(when, str):
            try:
                when = dt.datetime.fromisoformat(when)
            except ValueError:
                raise ValidationError("Wait until: a date and time like 2026-12-01 09:00") from None
        if not isinstance(when, dt.datetime):
            raise ValidationError("Wait until: a date and time")
        if timezone.is_naive(when):
            when = timezone.make_aware(when, timezone.get_current_timezone())
        out["wait_until"] = when
    return out


def clean_step(bu: BusinessUnit, data: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(data.get("kind", "") or "")
    if kind not in ProgramStep.Kind.values:
        raise ValidationError("Choose a step type")
    config = data.get("config") or {}
    if not isinstance(config, Mapping):
        raise ValidationError("Step settings are not valid")
    if kind == "action":
        clean_config: dict = {"actions": _clean_action_list(bu, config.get("actions"))}
    elif kind == "trigger":
        clean_config = _clean_trigger(config)
    elif kind == "rule":
        clean_config = _clean_rule(bu, config)
    else:
        clean_config = {}
    return {"kind": kind, "config": clean_config, **_clean_wait(kind, data)}


def _require_editable(program: Program) -> None:
    if not program.is_editable:
        raise ValidationError("Pause the program before changing its steps")


def _link_targets(program: Program, data: Mapping[str, Any]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    ids = set(program.steps.values_list("pk", flat=True))
    for key in ("next_step_id", "yes_step_id", "no_step_id"):
        if key not in data:
            continue
        raw = data.get(key)
        if raw in (None, "", "end"):
            out[key] = None
            continue
        try:
            target = int(raw)
        except (TypeError, ValueError):
            raise ValidationError("Choose the next step from the list") from None
        if target not in ids:
            raise ValidationError("Choose the next step from the list")
        out[key] = target
    return out


def _check_no_cycle(program: Program) -> None:
    found = graph.problems(nodes_of(program), program.start_step_id)
    loops = [p for p in found if "loops back" in p]
    if loops:
        raise ValidationError(loops[0])


@transaction.atomic
def add_step(access: Access, program: Program, data: Mapping[str, Any], *, after: ProgramStep | None = None) -> \
        ProgramStep:
    """Append a step. It is linked from ``after`` (default: the last step in the editor if that one leads nowhere),
    and becomes the first step of an empty program."""
    access.require("automation.edit")
    program = Program.objects.select_for_update().get(pk=program.pk, bu=access.bu)
    _require_editable(program)
    cleaned = clean_step(access.bu, data)
    last = program.steps.order_by("-position", "-id").first()
    if program.steps.count() >= graph.MAX_STEPS:
        raise ValidationError(f"A program has at most {graph.MAX_STEPS} steps")
    step = ProgramStep.objects.create(program=program, position=(last.position + 1) if last else 1, **cleaned)
    links = _link_targets(program, data)
    if links:
        ProgramStep.objects.filter(pk=step.pk).update(**links)
    source = after or last
    if program.start_step_id is None:
        program.start_step = step
        program.save(update_fields=["start_step", "updated_at"])
    elif source is not None:
        source.refresh_from_db()
        if source.kind == "action" and source.next_step_id is None:
            source.next_step = step
            source.save(update_fields=["next_step"])
        elif source.branches and data.get("branch") in ("yes", "no"):
            setattr(source, f"{data['branch']}_step", step)
            source.save(update_fields=[f"{data['branch']}_step"])
    _check_no_cycle(program)
    step.refresh_from_db()
    return step


@transaction.atomic
def update_step(access: Access, step: ProgramStep, data: Mapping[str, Any]) -> ProgramStep:
    access.require("automation.edit")
    program = Program.objects.select_for_update().get(pk=step.program_id, bu=access.bu)
    _require_editable(program)
    cleaned = clean_step(access.bu, {**data, "kind": step.kind})
    links = _link_targets(program, data)
    if step.pk in links.values():
        raise ValidationError("A step cannot lead to itself")
    for key, value in {**cleaned, **links}.items():
        setattr(step, key, value)
    step.save()
    _check_no_cycle(program)
    return step


@transaction.atomic
def delete_step(access: Access, step: ProgramStep) -> None:
    access.require("automation.edit")
    program = Program.objects.select_for_update().get(pk=step.program_id, bu=access.bu)
    _require_editable(program)
    if ProgramMember.objects.filter(step=step, status__in=[ProgramMember.Status.ACTIVE,
                                                           ProgramMember.Status.REMOVED]).exists():
        raise ValidationError("Prospects are waiting at this step; it cannot be removed")
    # Whoever led here now leads where this step led (action steps), so the flow stays connected.
    follow = step.next_step_id if step.kind == "action" else None
    for field in ("next_step", "yes_step", "no_step"):
        ProgramStep.objects.filter(program=program, **{field: step}).update(**{field: follow})
    if program.start_step_id == step.pk:
        program.start_step_id = follow or program.steps.exclude(pk=step.pk).values_list("pk", flat=True).first()
        program.save(update_fields=["start_step", "updated_at"])
    step.delete()


def nodes_of(program: Program) -> list[graph.Node]:
    return [graph.Node(s.pk, s.kind, s.next_step_id, s.yes_step_id, s.no_step_id, label=f"Step {s.position}")
            for s in program.steps.all()]


def graph_problems(program: Program) -> list[str]:
    return graph.problems(nodes_of(program), program.start_step_id)


# --- Lifecycle -------------------------------------------------------------------------------------------------------


@transaction.atomic
def start(access: Access, program: Program) -> dict[str, int]:
    """Start a draft (or resume a paused) program: check the flow, let the recipients in."""
    access.require("automation.edit")
    program = Program.objects.select_for_update().get(pk=program.pk, bu=access.bu)
    if program.status == Program.Status.PAUSED:
        return resume(access, program)
    if program.status != Program.Status.DRAFT:
        raise ValidationError("Only a draft program can be started")
    found = graph_problems(program)
    if not program.recipient_list_ids:
        found.append("Choose at least one recipient list")
    if found:
        raise ValidationError(found)
    program.status = Program.Status.RUNNING
    program.started_at = timezone.now()
    program.save(update_fields=["status", "started_at", "updated_at"])
    audit.record("program.start", actor=access.user, bu=access.bu, obj=program, summary=program.name)
    return sync_recipients(program)


@transaction.atomic
def pause(access: Access, program: Program) -> None:
    """Everyone keeps their place and remaining wait ([M20])."""
    access.require("automation.edit")
    program = Program.objects.select_for_update().get(pk=program.pk, bu=access.bu)
    if program.status != Program.Status.RUNNING:
        raise ValidationError("Only a running program can be paused")
    program.status = Program.Status.PAUSED
    program.paused_at = timezone.now()
    program.save(update_fields=["status", "paused_at", "updated_at"])
    audit.record("program.pause", actor=access.user, bu=access.bu, obj=program, summary=program.name)


@transaction.atomic
def resume(access: Access, program: Program) -> dict[str, int]:
    access.require("automation.edit")
    program = Program.objects.select_for_update().get(pk=program.pk, bu=access.bu)
    if program.status != Program.Status.PAUSED:
        raise ValidationError("Only a paused program can be resumed")
    found = graph_problems(program)
    if found:
        raise ValidationError(found)
    now = timezone.now()
    paused_at = program.paused_at or now
    shift = now - paused_at
    if shift > dt.timedelta(0):
        # Remaining waits continue where they stopped; fixed dates ("wait until") stay fixed.
        members = ProgramMember.objects.filter(program=program).exclude(step__wait_kind=ProgramStep.Wait.UNTIL)
        members.filter(next_run_at__gt=paused_at).update(next_run_at=F("next_run_at") + shift)
        members.filter(deadline_at__gt=paused_at).update(deadline_at=F("deadline_at") + shift)
    program.status = Program.Status.RUNNING
    program.paused_at = None
    program.save(update_fields=["status", "paused_at", "updated_at"])
    audit.record("program.resume", actor=access.user, bu=access.bu, obj=program, summary=program.name)
    return sync_recipients(program)


@transaction.atomic
def archive(access: Access, program: Program) -> None:
    access.require("automation.delete")
    program = Program.objects.select_for_update().get(pk=program.pk, bu=access.bu)
    program.status = Program.Status.ARCHIVED
    program.save(update_fields=["status", "updated_at"])
    ProgramMember.objects.filter(program=program).update(next_run_at=None, locked_until=None)
    audit.record("program.archive", actor=access.user, bu=access.bu, obj=program, summary=program.name)


# --- Recipients ------------------------------------------------------------------------------------------------------


def arrival(step: ProgramStep | None, now: dt.datetime) -> dict[str, Any]:
    """Member fields for arriving at ``step`` now (None: the program is over for this prospect)."""
    base: dict[str, Any] = {"locked_until": None, "attempts": 0, "last_error": "", "step_entered_at": now,
                            "deadline_at": None}
    if step is None:
        return {**base, "status": ProgramMember.Status.FINISHED, "finished_at": now, "next_run_at": None}
    base["step_id"] = step.pk
    if step.wait_kind == ProgramStep.Wait.DELAY:
        base["next_run_at"] = now + dt.timedelta(seconds=step.wait_amount * UNIT_SECONDS[step.wait_unit])
    elif step.wait_kind == ProgramStep.Wait.UNTIL and step.wait_until is not None:
        base["next_run_at"] = max(step.wait_until, now)
    elif step.wait_kind == ProgramStep.Wait.UP_TO:
        # Checked at once (it may have fired since entering), then at the deadline or when a matching activity arrives.
        base["next_run_at"] = now
        base["deadline_at"] = now + dt.timedelta(seconds=step.wait_amount * UNIT_SECONDS[step.wait_unit])
    else:
        base["next_run_at"] = now
    return base


def recipient_ids(program: Program):
    """Prospect ids of the recipient lists minus the suppression lists (a subquery; BU-scoped, no recycle bin)."""
    from loopline.automation.selectors import list_recipient_ids

    return list_recipient_ids(program.bu, list(program.recipient_list_ids), list(program.suppression_list_ids))


def sync_recipients(program: Program, *, now: dt.datetime | None = None) -> dict[str, int]:
    """Compare the program with its lists, set-based: newcomers enter at the first step, prospects no longer on the
    lists leave (keeping their place), returning ones resume at their step ([M20])."""
    now = now or timezone.now()
    if program.status != Program.Status.RUNNING or not program.recipient_list_ids:
        return {"entered": 0, "removed": 0, "returned": 0}
    ids = recipient_ids(program)
    with transaction.atomic():
        members = ProgramMember.objects.filter(program=program)
        removed = members.filter(status=ProgramMember.Status.ACTIVE).exclude(prospect_id__in=ids).update(
            status=ProgramMember.Status.REMOVED)
        returned = members.filter(status=ProgramMember.Status.REMOVED, prospect_id__in=ids).update(
            status=ProgramMember.Status.ACTIVE, locked_until=None)
        entered = _enter(program, ids, now)
        Program.objects.filter(pk=program.pk).update(synced_at=now)
    if entered or removed or returned:
        logger.info("program %s: %d entered, %d left, %d returned", program.pk, entered, removed, returned)
    return {"entered": entered, "removed": removed, "returned": returned}


def _enter(program: Program, ids, now: dt.datetime) -> int:
    """INSERT ... SELECT the newcomers in one statement; duplicates (same prospect or same email address) are ignored
    by the unique constraints."""
    start_id = Program.objects.filter(pk=program.pk).values_list("start_step_id", flat=True).first()
    start = ProgramStep.objects.filter(pk=start_id, program_id=program.pk).first() if start_id else None
    if start is None:
        return 0
    fields = arrival(start, now)
    ops = connection.ops
    qn = ops.quote_name
    member_table = qn(ProgramMember._meta.db_table)
    prospect_table = qn(Prospect._meta.db_table)
    ids_sql, ids_params = ids.query.sql_with_params()
    columns = ["program_id", "prospect_id", "email_key", "step_id", "status", "entered_at", "step_entered_at",
               "next_run_at", "deadline_at", "attempts", "locked_until", "last_error", "finished_at"]
    values = [
        "%s", "p.id", "CASE WHEN p.email = '' THEN NULL ELSE LOWER(p.email) END", "%s", "%s", "%s", "%s", "%s", "%s",
        "0", "NULL", "''", "NULL",
    ]
    params: list[Any] = [program.pk, start.pk, ProgramMember.Status.ACTIVE, ops.adapt_datetimefield_value(now),
                         ops.adapt_datetimefield_value(now), ops.adapt_datetimefield_value(fields["next_run_at"]),
                         ops.adapt_datetimefield_value(fields["deadline_at"])]
    verb = "INSERT OR IGNORE INTO" if connection.vendor == "sqlite" else "INSERT INTO"
    tail = "" if connection.vendor == "sqlite" else " ON CONFLICT DO NOTHING"
    sql = (f"{verb} {member_table} ({', '.join(qn(c) for c in columns)}) "
           f"SELECT {', '.join(values)} FROM {prospect_table} p "
           f"WHERE p.bu_id = %s AND p.is_deleted = %s AND p.id IN ({ids_sql}) "
           f"AND NOT EXISTS (SELECT 1 FROM {member_table} m WHERE m.program_id = %s AND m.prospect_id = p.id) "
           f"ORDER BY p.id{tail}")
    params += [program.bu_id, False, *ids_params, program.pk]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return max(cursor.rowcount, 0)


def add_prospects(program: Program, prospect_ids: list[int], *, now: dt.datetime | None = None) -> int:
    """Let specific prospects of the program's BU enter now (API / tests); the usual way in is the recipient list."""
    ids = Prospect.objects.filter(bu_id=program.bu_id, pk__in=list(prospect_ids), is_deleted=False).values("pk")
    return _enter(program, ids, now or timezone.now())


# --- Triggers: an activity wakes the prospects listening for it -------------------------------------------------------


def on_activity(event: events.ActivityRecorded) -> None:
    if not event.prospect_id or event.is_machine or event.type not in TRIGGER_ACTIVITY_TYPES:
        return
    now = timezone.now()
    try:
        with transaction.atomic():
            ProgramMember.objects.filter(
                prospect_id=event.prospect_id, status=ProgramMember.Status.ACTIVE, next_run_at__gt=now,
                step__kind=ProgramStep.Kind.TRIGGER,
            ).update(next_run_at=now)
    except Exception:  # never break the activity that is being recorded
        logger.exception("could not wake program triggers for prospect %s", event.prospect_id)


# --- Business hours ----------------------------------------------------------------------------------------------------


def program_tz(program: Program) -> zoneinfo.ZoneInfo:
    for name in (program.timezone, getattr(program.bu, "timezone", ""), "UTC"):
        if name:
            try:
                return zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                continue
    return zoneinfo.ZoneInfo("UTC")


def next_business_time(program: Program, now: dt.datetime) -> dt.datetime:
    """``now`` if it is inside the program's business hours, else the next opening."""
    if not program.business_hours:
        return now
    tz = program_tz(program)
    days = set(program.business_days or [0, 1, 2, 3, 4]) or {0, 1, 2, 3, 4}
    opens = program.business_start or dt.time(9, 0)
    closes = program.business_end or dt.time(17, 0)
    local = now.astimezone(tz)
    for offset in range(8):
        day = (local + dt.timedelta(days=offset)).date()
        if day.weekday() not in days:
            continue
        start = dt.datetime.combine(day, opens, tzinfo=tz)
        end = dt.datetime.combine(day, closes, tzinfo=tz)
        if offset == 0 and start <= local < end:
            return now
        if local < start:
            return start.astimezone(dt.UTC)
    return now


# --- Assignment ([M22]) ------------------------------------------------------------------------------------------------


@transaction.atomic
def save_group(access: Access, data: Mapping[str, Any], group: AssignmentGroup | None = None) -> AssignmentGroup:
    """Create or edit a round-robin group. ``user_ids`` in order; members keep their place in the rotation."""
    access.require("automation.edit")
    name = str(data.get("name", "") or "").strip()
    if not name or len(name) > 120:
        raise ValidationError({"name": ["A group needs a name (up to 120 characters)"]})
    same_name = AssignmentGroup.objects.filter(bu=access.bu, name__iexact=name)
    if group is not None:
        same_name = same_name.exclude(pk=group.pk)
    if same_name.exists():
        raise ValidationError({"name": ["A group with this name exists already"]})
    try:
        user_ids = [int(u) for u in data.get("user_ids") or []]
    except (TypeError, ValueError):
        raise ValidationError({"user_ids": ["Choose users from the list"]}) from None
    members = set(Membership.objects.filter(bu=access.bu, user_id__in=user_ids).values_list("user_id", flat=True))
    if set(user_ids) - members:
        raise ValidationError({"user_ids": ["Every member must be a user of this business unit"]})
    group = group or AssignmentGroup(bu=access.bu)
    group.name = name
    group.is_active = bool(data.get("is_active", True))
    group.save()
    paused = {int(u) for u in data.get("paused_user_ids") or [] if str(u).isdigit()}
    group.members.exclude(user_id__in=user_ids).delete()
    for position, user_id in enumerate(dict.fromkeys(user_ids), 1):
        AssignmentGroupMember.objects.update_or_create(
            group=group, user_id=user_id, defaults={"position": position, "is_active": user_id not in paused})
    audit.record("assignment_group.save", actor=access.user, bu=access.bu, obj=group, summary=name)
    return group


def _eligible_members(group: AssignmentGroup):
    in_bu = Membership.objects.filter(bu_id=group.bu_id, user_id=OuterRef("user_id"))
    return (group.members.filter(is_active=True, user__is_active=True).filter(Exists(in_bu))
            .order_by(F("last_assigned_at").asc(nulls_first=True), "position", "id"))


def next_member(group: AssignmentGroup) -> AssignmentGroupMember | None:
    """Who gets the next prospect: the active member assigned least recently (then by position)."""
    return _eligible_members(group).select_related("user").first()


@transaction.atomic
def assign_round_robin(bu: BusinessUnit, group: AssignmentGroup, prospect: Prospect, *, actor=None):
    """Assign to the next member of the group; returns the user, or None when the prospect already has an owner (never
    stolen, [M22]) or nobody in the group can take it."""
    fresh = Prospect.objects.select_for_update().filter(pk=prospect.pk, bu_id=bu.pk).first()
    if fresh is None or fresh.assigned_user_id or fresh.crm_owner_id:
        return None
    # Locking the group serialises the pointer, so two assignments never pick the same member twice in a row.
    locked = AssignmentGroup.objects.select_for_update().filter(pk=group.pk, bu_id=bu.pk, is_active=True).first()
    if locked is None:
        return None
    member = next_member(locked)
    if member is None:
        return None
    if not prospect_services.assign_prospect(fresh, member.user, actor=actor):
        return None
    latest = locked.members.aggregate(m=Max("last_assigned_at"))["m"]
    now = timezone.now()
    if latest is not None and latest >= now:
        now = latest + dt.timedelta(microseconds=1)  # a strict order even within one clock tick
    AssignmentGroupMember.objects.filter(pk=member.pk).update(last_assigned_at=now,
                                                              assigned_count=F("assigned_count") + 1)
    prospect.assigned_user_id = member.user_id
    prospect.assigned_at = fresh.assigned_at
    return member.user


CRM_ID_RE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")


@transaction.atomic
def assign_crm_queue(bu: BusinessUnit, queue_id: str, prospect: Prospect, *, actor=None) -> bool:
    """Give the prospect to a CRM queue: the owner id travels to the CRM through the connector outbox ([M22])."""
    if not CRM_ID_RE.match(queue_id or ""):
        raise ValidationError("A CRM queue id has 15 or 18 letters and digits")
    fresh = Prospect.objects.select_for_update().filter(pk=prospect.pk, bu_id=bu.pk).first()
    if fresh is None or fresh.assigned_user_id or fresh.crm_owner_id:
        return False
    prospect_services.update_prospect(fresh, {}, actor=actor, source="system",
                                      extra={"crm_owner_id": queue_id, "assigned_at": timezone.now()})
    prospect.crm_owner_id = queue_id
    return True


@transaction.atomic
def assign_crm_rule(bu: BusinessUnit, prospect: Prospect, *, source: str = "") -> bool:
    """Hand the prospect to the CRM's active assignment rule. Recorded here; the connector creates the CRM record with
    the rule on (``Sforce-Auto-Assign: TRUE``, no owner), reads back the owner it picked and clears ``pending``."""
    fresh = Prospect.objects.select_for_update().filter(pk=prospect.pk, bu_id=bu.pk).first()
    if fresh is None or fresh.assigned_user_id or fresh.crm_owner_id:
        return False
    _, created = CrmAssignmentRequest.objects.get_or_create(bu_id=bu.pk, prospect_id=fresh.pk,
                                                            defaults={"source": source[:40]})
    if created:
        events.publish(events.ProspectsBulkChanged(bu_id=bu.pk, prospect_ids=(fresh.pk,), source="assignment"))
    return created


def crm_assignments_done(bu_id: int, prospect_ids) -> int:
    """The connector created these prospects' CRM records with the assignment rule on: nothing is pending any more."""
    return CrmAssignmentRequest.objects.filter(bu_id=bu_id, prospect_id__in=list(prospect_ids), pending=True
                                               ).update(pending=False)


# Action types (registered in AppConfig.ready()) ------------------------------------------------------------------


def _validate_group(bu, params):
    raw = params.get("group_id", params.get("group"))
    group = None
    if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit()):
        group = AssignmentGroup.objects.filter(bu_id=bu.pk, pk=int(raw)).first()
    elif isinstance(raw, str) and raw.strip():
        group = AssignmentGroup.objects.filter(bu_id=bu.pk, name__iexact=raw.strip()).first()
    if group is None:
        raise ValidationError("no such round-robin group in this business unit")
    return {"group_id": group.pk}


def _run_round_robin(ctx: actions.ActionContext, params) -> str:
    group = AssignmentGroup.objects.get(bu_id=ctx.bu.pk, pk=params["group_id"])
    user = assign_round_robin(ctx.bu, group, ctx.prospect, actor=ctx.actor)
    return f"assigned to {user.email}" if user else "not assigned (has an owner, or nobody available)"


def _validate_queue(bu, params):
    queue_id = str(params.get("queue_id", "") or "").strip()
    if not CRM_ID_RE.match(queue_id):
        raise ValidationError("a CRM queue id has 15 or 18 letters and digits")
    return {"queue_id": queue_id}


def _run_queue(ctx: actions.ActionContext, params) -> str:
    done = assign_crm_queue(ctx.bu, params["queue_id"], ctx.prospect, actor=ctx.actor)
    return f"queued to {params['queue_id']}" if done else "already owned (kept the owner)"


def _run_crm_rule(ctx: actions.ActionContext, params) -> str:
    done = assign_crm_rule(ctx.bu, ctx.prospect, source=ctx.source)
    return "handed to the CRM assignment rule" if done else "already owned or already handed over"


def register_actions() -> None:
    actions.register(actions.ActionType("assign_round_robin", "Assign to round-robin group", _validate_group,
                                        _run_round_robin))
    actions.register(actions.ActionType("assign_crm_queue", "Assign to CRM queue", _validate_queue, _run_queue))
    actions.register(actions.ActionType("assign_crm_rule", "Assign with the CRM's assignment rule",
                                        lambda bu, params: {}, _run_crm_rule))
    # The completion-action row editor maps its "argument" column to these keys.
    actions.ROW_ARGS.setdefault("assign_round_robin", ("group_id", None))
    actions.ROW_ARGS.setdefault("assign_crm_queue", ("queue_id", None))
    actions.ROW_ARGS.setdefault("assign_crm_rule", (None, None))


def connect() -> None:
    events.subscribe(events.ActivityRecorded, on_activity)

