"""Completion actions ([M10]): one registry and one runner, shared by forms, form handlers, landing pages, custom
redirects, tracked files, email links — and later automation rules and engagement programs ([M19], [M20]).

An action is stored as plain JSON on the asset: ``{"type": "add_tag", "tag": "webinar"}``. ``validate_actions`` checks a
list when a user saves it (clear messages, unknown types rejected); ``run_actions`` applies a list to one prospect.

    from loopline.platform import actions
    cleaned = actions.validate_actions(bu, [{"type": "adjust_score", "points": 10}])   # at save time
    actions.run_actions(cleaned, actions.ActionContext(bu=bu, prospect=p, source="form", source_id=form.pk))

Rules the runner enforces: actions apply to prospects only (never anonymous visitors), each action runs in its own
savepoint so one failing action never loses the submission or the other actions, and every outcome is returned (and
logged). "Once per prospect" (email links) and "not for machine events" are the caller's decision.

To add an action type: ``register(ActionType("name", "Label", validate=..., run=...))``; ``validate(bu, params)``
returns cleaned params or raises ``ValidationError``; ``run(ctx, params)`` does the work through the owning app's
services and returns a short description.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

logger = logging.getLogger("loopline.actions")


@dataclass
class ActionContext:
    bu: Any
    prospect: Any
    source: str = ""  # form | form_handler | landing_page | custom_redirect | file | email_link | automation ...
    source_id: int | None = None
    actor: Any = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ActionType:
    name: str
    label: str
    validate: Callable[[Any, Mapping[str, Any]], dict]
    run: Callable[[ActionContext, Mapping[str, Any]], str]
    available: bool = True  # False: registered so saved configurations stay valid, but does nothing yet


@dataclass(frozen=True)
class ActionOutcome:
    type: str
    ok: bool
    detail: str


REGISTRY: dict[str, ActionType] = {}


def register(action_type: ActionType) -> None:
    REGISTRY[action_type.name] = action_type


def choices() -> list[tuple[str, str]]:
    return [(a.name, a.label + ("" if a.available else " (not available yet)")) for a in REGISTRY.values()]


def validate_actions(bu, raw: Any) -> list[dict]:
    if raw in (None, ""):
        return []
    if not isinstance(raw, list):
        raise ValidationError("Completion actions must be a list")
    cleaned = []
    for i, item in enumerate(raw, 1):
        if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
            raise ValidationError(f"Action {i}: needs a type")
        action_type = REGISTRY.get(item["type"])
        if action_type is None:
            raise ValidationError(f"Action {i}: unknown type '{item['type'][:40]}'")
        params = {k: v for k, v in item.items() if k != "type"}
        try:
            cleaned.append({"type": action_type.name, **action_type.validate(bu, params)})
        except ValidationError as exc:
            raise ValidationError(f"Action {i} ({action_type.label}): {'; '.join(exc.messages)}") from None
    return cleaned


def run_actions(action_list: list[dict], ctx: ActionContext) -> list[ActionOutcome]:
    """Apply the actions to ``ctx.prospect`` in order. Never raises for a failing action."""
    if ctx.prospect is None or not action_list:
        return []
    outcomes = []
    for item in action_list:
        action_type = REGISTRY.get(item.get("type", ""))
        if action_type is None:
            outcomes.append(ActionOutcome(str(item.get("type")), False, "unknown action type"))
            continue
        params = {k: v for k, v in item.items() if k != "type"}
        try:
            with transaction.atomic():
                detail = action_type.run(ctx, params)
            outcomes.append(ActionOutcome(action_type.name, True, detail))
        except Exception as exc:  # one broken action must not lose the submission or the others
            logger.exception("completion action %s failed for prospect %s", action_type.name, ctx.prospect.pk)
            outcomes.append(ActionOutcome(action_type.name, False, str(exc)[:200]))
    return outcomes


# --- Built-in action types ------------------------------------------------------------------------------------------


def _int_param(params, key: str, *, low: int, high: int) -> int:
    try:
        value = int(params.get(key))
    except (TypeError, ValueError):
        raise ValidationError(f"{key} must be a whole number") from None
    if not low <= value <= high:
        raise ValidationError(f"{key} must be between {low} and {high}")
    return value


def _validate_tag(bu, params):
    tag = str(params.get("tag", "")).strip()
    if not tag or len(tag) > 80:
        raise ValidationError("a tag needs 1 to 80 characters")
    return {"tag": tag}


def _run_add_tag(ctx, params):
    from loopline.prospects import services

    services.add_tags(ctx.prospect, [params["tag"]])
    return f"tagged {params['tag']}"


def _run_remove_tag(ctx, params):
    from loopline.prospects import services
    from loopline.prospects.models import Tag

    tag = Tag.objects.filter(bu_id=ctx.bu.pk, name__iexact=params["tag"]).first()
    if tag is not None:
        services.remove_tag(ctx.prospect, tag)
    return f"untagged {params['tag']}"


def _validate_score(bu, params):
    return {"points": _int_param(params, "points", low=-100000, high=100000)}


def _run_adjust_score(ctx, params):
    from django.db.models import F

    from loopline.platform import events
    from loopline.prospects.models import Prospect

    Prospect.objects.filter(pk=ctx.prospect.pk).update(score=F("score") + params["points"])
    ctx.prospect.refresh_from_db(fields=["score"])
    events.publish(events.ProspectChanged(bu_id=ctx.bu.pk, prospect_id=ctx.prospect.pk,
                                          changed_fields=frozenset({"score"}), source="system"))
    return f"score {params['points']:+d}"


def _validate_change_field(bu, params):
    from loopline.prospects.fields import clean_value, field_specs

    name = str(params.get("field", "")).removeprefix("custom.")
    spec = next((s for s in field_specs(bu.pk) if s.key == name), None)
    if spec is None or name == "email":
        raise ValidationError(f"unknown or read-only field '{name[:60]}'")
    clean_value(spec, params.get("value"))
    return {"field": spec.key, "value": params.get("value")}


def _run_change_field(ctx, params):
    from loopline.prospects import services

    services.update_prospect(ctx.prospect, {params["field"]: params["value"]}, source="system")
    return f"set {params['field']}"


def _validate_user(bu, params):
    from loopline.accounts.models import Membership

    user_id = _int_param(params, "user_id", low=1, high=2**62)
    if not Membership.objects.filter(bu_id=bu.pk, user_id=user_id).exists():
        raise ValidationError("the user is not a member of this business unit")
    return {"user_id": user_id}


def _run_assign(ctx, params):
    from loopline.accounts.models import User
    from loopline.prospects import services

    user = User.objects.get(pk=params["user_id"])
    done = services.assign_prospect(ctx.prospect, user)
    return f"assigned to {user.email}" if done else "already assigned (kept the owner)"


def _run_notify(ctx, params):
    from django.core.mail import send_mail

    from loopline.accounts.models import User

    user = User.objects.get(pk=params["user_id"])
    p = ctx.prospect
    subject = f"Loopline: {p.email or p.pk} completed a {ctx.source.replace('_', ' ') or 'step'}"
    body = f"{p.full_name or p.email} ({p.email}) completed {ctx.source} #{ctx.source_id}.\n"
    transaction.on_commit(lambda: _send_quietly(send_mail, subject, body, user.email))
    return f"notified {user.email}"


def _send_quietly(send_mail, subject, body, to):
    from django.conf import settings

    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [to])
    except Exception:
        logger.exception("notify-user email failed")


def _validate_campaign(bu, params):
    from loopline.campaigns.models import Campaign

    campaign_id = _int_param(params, "campaign_id", low=1, high=2**62)
    if not Campaign.objects.filter(bu_id=bu.pk, pk=campaign_id).exists():
        raise ValidationError("no such campaign in this business unit")
    return {"campaign_id": campaign_id}


def _run_add_to_campaign(ctx, params):
    # Campaign membership arrives with the campaigns issue ([M33]); until then the campaign becomes the prospect's
    # source campaign when it has none (first touch).
    from loopline.campaigns.models import Campaign
    from loopline.prospects import services

    if ctx.prospect.source_campaign_id:
        return "has a source campaign already"
    services.update_prospect(ctx.prospect, {}, extra={"source_campaign": Campaign.objects.get(pk=params["campaign_id"])},
                             source="system")
    return "source campaign set"


def _run_sync_crm(ctx, params):
    from loopline.platform import events

    # The connector turns this into an outbox entry for a full sync of the prospect.
    events.publish(events.ProspectsBulkChanged(bu_id=ctx.bu.pk, prospect_ids=(ctx.prospect.pk,), source="action"))
    return "CRM sync requested"


def _validate_list(bu, params):
    try:
        list_id = int(params.get("list_id"))
    except (TypeError, ValueError):
        raise ValidationError("list_id must be a whole number") from None
    return {"list_id": list_id}


def _not_yet(what: str):
    def run(ctx, params):
        logger.warning("%s: not available yet; action skipped for prospect %s", what, ctx.prospect.pk)
        return f"{what} not available yet"

    return run


def _no_params(bu, params):
    return {k: v for k, v in params.items() if isinstance(v, int | str) and k in ("email_id",)}


register(ActionType("add_tag", "Add tag", _validate_tag, _run_add_tag))
register(ActionType("remove_tag", "Remove tag", _validate_tag, _run_remove_tag))
register(ActionType("adjust_score", "Adjust score", _validate_score, _run_adjust_score))
register(ActionType("change_field", "Change prospect field", _validate_change_field, _run_change_field))
register(ActionType("assign_user", "Assign to user", _validate_user, _run_assign))
register(ActionType("notify_user", "Notify user (email)", _validate_user, _run_notify))
register(ActionType("add_to_campaign", "Add to campaign", _validate_campaign, _run_add_to_campaign))
register(ActionType("sync_crm", "Sync with CRM", lambda bu, p: {}, _run_sync_crm))
register(ActionType("add_to_list", "Add to list", _validate_list, _not_yet("lists"), available=False))
register(ActionType("remove_from_list", "Remove from list", _validate_list, _not_yet("lists"), available=False))
register(ActionType("send_autoresponder", "Send autoresponder email", _no_params, _not_yet("autoresponder emails"),
                    available=False))


# --- Editing helpers for the UI: a list of actions <-> simple rows (type, argument, value) --------------------------

ROW_ARGS = {
    "add_tag": ("tag", None), "remove_tag": ("tag", None), "adjust_score": ("points", None),
    "change_field": ("field", "value"), "assign_user": ("user_id", None), "notify_user": ("user_id", None),
    "add_to_campaign": ("campaign_id", None), "add_to_list": ("list_id", None), "remove_from_list": ("list_id", None),
    "sync_crm": (None, None), "send_autoresponder": (None, None),
}


def actions_to_rows(action_list: list[dict], *, blank: int = 2) -> list[dict]:
    rows = []
    for item in action_list or []:
        arg_key, value_key = ROW_ARGS.get(str(item.get("type", "")), (None, None))
        rows.append({"type": item.get("type", ""), "arg": item.get(arg_key, "") if arg_key else "",
                     "value": item.get(value_key, "") if value_key else ""})
    return rows + [{"type": "", "arg": "", "value": ""} for _ in range(blank)]


def rows_to_actions(bu, data, prefix: str = "action") -> list[dict]:
    """Read ``<prefix>-N-type/arg/value`` inputs into a validated action list (ValidationError on bad input).

    A user may be given by email and a campaign by name; both are turned into ids here."""
    from loopline.accounts.models import Membership
    from loopline.campaigns.models import Campaign

    raw = []
    for i in range(50):
        kind = str(data.get(f"{prefix}-{i}-type", "") or "").strip()
        if not kind:
            continue
        arg = str(data.get(f"{prefix}-{i}-arg", "") or "").strip()
        value = str(data.get(f"{prefix}-{i}-value", "") or "").strip()
        arg_key, value_key = ROW_ARGS.get(kind, (None, None))
        item: dict = {"type": kind}
        if arg_key == "user_id" and "@" in arg:
            member = Membership.objects.filter(bu_id=bu.pk, user__email__iexact=arg).values_list("user_id", flat=True)
            arg = str(member.first() or arg)
        if arg_key == "campaign_id" and arg and not arg.isdigit():
            found = Campaign.objects.filter(bu_id=bu.pk, name__iexact=arg).values_list("pk", flat=True).first()
            arg = str(found or arg)
        if arg_key:
            item[arg_key] = arg
        if value_key:
            item[value_key] = value
        raw.append(item)
    return validate_actions(bu, raw)
