"""Form, form handler and landing page use cases: building forms, validating and applying submissions ([M9]-[M11]).

A submission is never lost: it either succeeds (prospect created/updated, success activity, completion actions) or is
recorded as an error activity with the reason and the submitted values.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core import signing
from django.core.exceptions import ValidationError
from django.db import transaction

from loopline.platform import actions
from loopline.prospects import services as prospect_services
from loopline.prospects.fields import FieldSpec, clean_value, field_specs
from loopline.prospects.models import ActivityType, Prospect, Visitor
from loopline.prospects.selectors import find_by_email
from loopline.tracking import services as tracking_services

from .models import Form, FormField, FormHandler, LandingPage

logger = logging.getLogger("loopline.forms")

MAX_VALUE_LENGTH = 5000
KIND_FOR_TYPE = {"email": "email", "longtext": "textarea", "number": "number", "decimal": "number", "date": "date",
                 "checkbox": "checkbox", "dropdown": "select"}
ASSET_TYPES = {
    "form": (ActivityType.FORM_SUCCESS, ActivityType.FORM_ERROR),
    "landing_page": (ActivityType.LANDING_PAGE_SUCCESS, ActivityType.LANDING_PAGE_ERROR),
    "form_handler": (ActivityType.FORM_HANDLER_SUCCESS, ActivityType.FORM_HANDLER_ERROR),
}


@dataclass
class Submitter:
    """Who is submitting: IP and user agent, and the visitor cookie if tracking this browser is allowed."""

    ip: str | None = None
    user_agent: str = ""
    cookie: str | None = None  # visitor id (hex) — None in kiosk mode or without consent


@dataclass
class SubmissionResult:
    ok: bool
    errors: dict[str, list[str]] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    prospect: Prospect | None = None
    restored: bool = False


# --- Building ------------------------------------------------------------------------------------------------------


def spec_map(bu_id: int) -> dict[str, FieldSpec]:
    return {spec.key: spec for spec in field_specs(bu_id)}


def _check_fields(bu, fields: list[dict]) -> list[dict]:
    specs = spec_map(bu.pk)
    seen = set()
    cleaned = []
    for i, f in enumerate(fields):
        name = str(f.get("prospect_field", "")).removeprefix("custom.")
        spec = specs.get(name)
        if spec is None:
            raise ValidationError(f"Field {i + 1}: unknown prospect field '{name[:60]}'")
        if name in seen:
            raise ValidationError(f"Field {i + 1}: '{spec.label}' is on the form twice")
        seen.add(name)
        kind = f.get("kind") or KIND_FOR_TYPE.get(spec.type, "text")
        if kind not in FormField.Kind.values:
            raise ValidationError(f"Field {i + 1}: unknown kind '{kind}'")
        if kind == "hidden" and f.get("default_value"):
            clean_value(spec, f["default_value"])
        cleaned.append({
            "prospect_field": spec.key, "label": (str(f.get("label") or spec.label))[:120], "kind": kind,
            "required": bool(f.get("required")) or name == "email", "help_text": str(f.get("help_text", ""))[:200],
            "default_value": str(f.get("default_value", ""))[:255], "progressive": bool(f.get("progressive")),
            "choices": list(spec.options) if spec.options else [str(c)[:100] for c in f.get("choices") or []],
        })
    if "email" not in seen:
        raise ValidationError("A form needs an email field")
    return cleaned


@transaction.atomic
def save_form(access, data: Mapping[str, Any], fields: list[dict], instance: Form | None = None) -> Form:
    """Create or update a form with its fields (replacing them). ``fields``: dicts of FormField attributes."""
    access.require("forms.edit" if instance else "forms.create")
    form = instance or Form(bu=access.bu)
    for key in ("name", "submit_label", "thank_you_content", "redirect_url", "captcha", "campaign_id", "is_archived"):
        if key in data:
            setattr(form, key, data[key])
    if "actions" in data:
        form.actions = actions.validate_actions(access.bu, data["actions"])
    if form.campaign_id and form.campaign and form.campaign.bu_id != access.bu.pk:
        raise ValidationError({"campaign": "No such campaign"})
    form.full_clean(exclude=["bu", "key", "campaign"])
    cleaned = _check_fields(access.bu, fields)
    form.save()
    FormField.objects.filter(form=form).delete()
    FormField.objects.bulk_create([FormField(form=form, position=i, **f) for i, f in enumerate(cleaned)])
    return form


@transaction.atomic
def save_form_handler(access, data: Mapping[str, Any], instance: FormHandler | None = None) -> FormHandler:
    access.require("forms.edit" if instance else "forms.create")
    handler = instance or FormHandler(bu=access.bu)
    for key in ("name", "success_url", "error_url", "forward_url", "kiosk", "campaign_id"):
        if key in data:
            setattr(handler, key, data[key])
    if "actions" in data:
        handler.actions = actions.validate_actions(access.bu, data["actions"])
    if "mappings" in data:
        specs = spec_map(access.bu.pk)
        mappings = []
        for i, m in enumerate(data["mappings"] or []):
            name = str(m.get("name", "")).strip()
            target = str(m.get("field", "")).removeprefix("custom.")
            if not name or target not in specs:
                raise ValidationError(f"Mapping {i + 1}: needs an external name and a known prospect field")
            mappings.append({"name": name[:100], "field": target, "required": bool(m.get("required"))})
        if not any(m["field"] == "email" for m in mappings):
            raise ValidationError("A form handler needs a field mapped to email")
        handler.mappings = mappings
    handler.full_clean(exclude=["bu", "key", "campaign"])
    handler.save()
    return handler


@transaction.atomic
def save_landing_page(access, data: Mapping[str, Any], instance: LandingPage | None = None) -> LandingPage:
    access.require("forms.edit" if instance else "forms.create")
    page = instance or LandingPage(bu=access.bu)
    for key in ("name", "title", "layout", "form_id", "campaign_id", "is_published"):
        if key in data:
            setattr(page, key, data[key])
    if "blocks" in data:
        blocks = []
        for b in data["blocks"] or []:
            kind = b.get("kind") if b.get("kind") in ("heading", "text") else "text"
            blocks.append({"kind": kind, "text": str(b.get("text", ""))[:10000]})
        page.blocks = blocks
    if "actions" in data:
        page.actions = actions.validate_actions(access.bu, data["actions"])
    if page.form_id and page.form and page.form.bu_id != access.bu.pk:
        raise ValidationError({"form": "No such form"})
    page.full_clean(exclude=["bu", "key", "form", "campaign"])
    page.save()
    return page


# --- Rendering helpers -----------------------------------------------------------------------------------------------


def known_prospect(bu_id: int, cookie: str | None) -> Prospect | None:
    if not cookie:
        return None
    import uuid

    visitor = Visitor.objects.filter(bu_id=bu_id, cookie_id=uuid.UUID(cookie)).select_related("prospect").first()
    prospect = visitor.prospect if visitor else None
    return prospect if prospect is not None and not prospect.is_deleted else None


def _prospect_value(prospect: Prospect, key: str):
    spec_custom = key not in {f.name for f in Prospect._meta.fields}
    return (prospect.custom or {}).get(key) if spec_custom else getattr(prospect, key, None)


def visible_fields(form: Form, prospect: Prospect | None) -> list[FormField]:
    """Progressive profiling: a progressive field is asked only while the prospect's value is unknown."""
    result = []
    for f in form.fields.all():
        if f.progressive and prospect is not None and _prospect_value(prospect, f.prospect_field) not in (None, "", []):
            continue
        result.append(f)
    return result


CHALLENGE_SALT = "loopline.forms.challenge"


def new_challenge() -> tuple[str, str]:
    a, b = random.randint(1, 9), random.randint(1, 9)
    return f"What is {a} + {b}?", signing.dumps(a + b, salt=CHALLENGE_SALT)


def check_challenge(token: str, answer: str) -> bool:
    try:
        expected = signing.loads(token or "", salt=CHALLENGE_SALT, max_age=3600)
    except signing.BadSignature:
        return False
    return str(answer).strip() == str(expected)


# --- Submitting -----------------------------------------------------------------------------------------------------


def _raw(data: Mapping, name: str):
    if hasattr(data, "getlist"):
        values = data.getlist(name)
        if len(values) > 1:
            return [str(v)[:MAX_VALUE_LENGTH] for v in values[:50]]
        return str(values[0])[:MAX_VALUE_LENGTH] if values else None
    value = data.get(name)
    return value if value is None or isinstance(value, list) else str(value)[:MAX_VALUE_LENGTH]


def _clean(specs: dict[str, FieldSpec], items: list[tuple[str, str, bool, Any, str]]):
    """items: (key, label, required, raw, input name) -> (cleaned, errors keyed by input name, echo values)."""
    cleaned: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    echo: dict[str, str] = {}
    for key, label, required, raw, input_name in items:
        spec = specs.get(key)
        if spec is None:
            continue
        echo[input_name] = ", ".join(raw) if isinstance(raw, list) else ("" if raw is None else str(raw))
        blank = raw is None or (isinstance(raw, str) and not raw.strip()) or raw == []
        if blank:
            if required:
                errors.setdefault(input_name, []).append(f"{label} is required")
            continue
        try:
            cleaned[key] = clean_value(spec, raw)
        except ValidationError as exc:
            errors.setdefault(input_name, []).extend(exc.messages)
    return cleaned, errors, echo


def _scrub(value):
    """Text safe for every database (PostgreSQL refuses NUL characters in text and JSON)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _record_error(bu_id: int, asset_type: str, asset_id: int, *, errors, echo, submitter: Submitter,
                  campaign_id: int | None, email: str | None) -> None:
    """A failed submission is kept as an error activity with the reason and what was typed ([M9])."""
    _, error_type = ASSET_TYPES[asset_type]
    prospect = find_by_email(bu_id, email, include_deleted=False) if email else None
    visitor = None
    if submitter.cookie:
        import uuid

        visitor = Visitor.objects.filter(bu_id=bu_id, cookie_id=uuid.UUID(submitter.cookie)).first()
    prospect_services.record_activity(
        bu_id, error_type, prospect=prospect, visitor=visitor if prospect is None else None,
        asset_type=asset_type, asset_id=asset_id, campaign_id=campaign_id, title="Submission rejected",
        data=_scrub({"errors": {k[:100]: v[:3] for k, v in list(errors.items())[:30]},
                     "values": {k[:100]: v[:500] for k, v in list(echo.items())[:50]}, "ip": submitter.ip}),
    )


def _upsert_prospect(bu, cleaned: dict[str, Any]) -> tuple[Prospect, bool]:
    """Find the prospect by email (restoring it from the recycle bin in unique-email BUs, [M11]) or create it."""
    email = cleaned["email"]
    prospect = find_by_email(bu.pk, email, include_deleted=not bu.allow_duplicate_emails)
    restored = False
    if prospect is not None and prospect.merged_into_id:
        prospect = Prospect.objects.filter(pk=prospect.merged_into_id).first() or prospect
    if prospect is not None and prospect.is_deleted:
        prospect_services.undelete(prospect)
        restored = True
    values = {k: v for k, v in cleaned.items() if v not in (None, "", [])}
    if prospect is None:
        return prospect_services.create_prospect(bu, values, source="form"), False
    values.pop("email", None)
    if values:
        prospect_services.update_prospect(prospect, values, source="form")
    return prospect, restored


def apply_submission(*, bu, asset_type: str, asset_id: int, cleaned: dict[str, Any], submitter: Submitter,
                     campaign_id: int | None, action_lists: list[list], title: str, url: str = "",
                     data: dict | None = None) -> SubmissionResult:
    success_type, _ = ASSET_TYPES[asset_type]
    with transaction.atomic():
        prospect, restored = _upsert_prospect(bu, cleaned)
        visitor = None
        if submitter.cookie:
            visitor = tracking_services.identify_visitor(bu.pk, submitter.cookie, prospect, ip=submitter.ip,
                                                         user_agent=submitter.user_agent)
        if campaign_id and not prospect.source_campaign_id:
            prospect_services.update_prospect(prospect, {}, extra={"source_campaign_id": campaign_id}, source="form")
        prospect_services.record_activity(
            bu.pk, success_type, prospect=prospect, visitor=visitor, asset_type=asset_type, asset_id=asset_id,
            campaign_id=campaign_id, title=title[:255], url=_scrub(url[:2000]),
            data={**(data or {}), "fields": sorted(cleaned)[:50], **({"restored": True} if restored else {})},
        )
        ctx = actions.ActionContext(bu=bu, prospect=prospect, source=asset_type, source_id=asset_id)
        for action_list in action_lists:
            actions.run_actions(action_list, ctx)
    prospect.refresh_from_db()
    return SubmissionResult(ok=True, prospect=prospect, restored=restored)


def submit_form(form: Form, data: Mapping, submitter: Submitter, *, landing_page: LandingPage | None = None,
                url: str = "") -> SubmissionResult:
    """Validate and apply a submission of ``form`` (optionally on ``landing_page``)."""
    bu = form.bu
    specs = spec_map(bu.pk)
    prospect = known_prospect(bu.pk, submitter.cookie)
    fields = visible_fields(form, prospect)
    items = []
    for f in fields:
        raw = f.default_value if f.kind == FormField.Kind.HIDDEN else _raw(data, f.input_name)
        if f.kind == FormField.Kind.CHECKBOX:
            raw = "yes" if raw not in (None, "", "0", "off", "false") else "no"
        items.append((f.prospect_field, f.label, f.required or f.prospect_field == "email", raw, f.input_name))
    cleaned, errors, echo = _clean(specs, items)
    if form.captcha and not check_challenge(_raw(data, "lp_challenge_token") or "",
                                            _raw(data, "lp_challenge") or ""):
        errors.setdefault("lp_challenge", []).append("Please answer the question")
    asset_type, asset_id = ("landing_page", landing_page.pk) if landing_page else ("form", form.pk)
    campaign_id = (landing_page.campaign_id if landing_page else None) or form.campaign_id
    if errors:
        _record_error(bu.pk, asset_type, asset_id, errors=errors, echo=echo, submitter=submitter,
                      campaign_id=campaign_id, email=cleaned.get("email"))
        return SubmissionResult(ok=False, errors=errors, values=echo)
    action_lists = [form.actions] + ([landing_page.actions] if landing_page else [])
    try:
        return apply_submission(bu=bu, asset_type=asset_type, asset_id=asset_id, cleaned=cleaned,
                                submitter=submitter, campaign_id=campaign_id, action_lists=action_lists,
                                title=landing_page.name if landing_page else form.name, url=url)
    except prospect_services.ProspectValidationError as exc:
        errors = {k.replace(".", "_"): v for k, v in exc.errors.items()}
        _record_error(bu.pk, asset_type, asset_id, errors=errors, echo=echo, submitter=submitter,
                      campaign_id=campaign_id, email=cleaned.get("email"))
        return SubmissionResult(ok=False, errors=errors, values=echo)


def submit_form_handler(handler: FormHandler, data: Mapping, submitter: Submitter) -> SubmissionResult:
    bu = handler.bu
    specs = spec_map(bu.pk)
    items = [(m["field"], m["name"], m.get("required") or m["field"] == "email", _raw(data, m["name"]), m["name"])
             for m in handler.mappings]
    cleaned, errors, echo = _clean(specs, items)
    if errors:
        _record_error(bu.pk, "form_handler", handler.pk, errors=errors, echo=echo, submitter=submitter,
                      campaign_id=handler.campaign_id, email=cleaned.get("email"))
        return SubmissionResult(ok=False, errors=errors, values=echo)
    try:
        return apply_submission(bu=bu, asset_type="form_handler", asset_id=handler.pk, cleaned=cleaned,
                                submitter=submitter, campaign_id=handler.campaign_id, action_lists=[handler.actions],
                                title=handler.name, data={"kiosk": handler.kiosk} if handler.kiosk else None)
    except prospect_services.ProspectValidationError as exc:
        errors = dict(exc.errors)
        _record_error(bu.pk, "form_handler", handler.pk, errors=errors, echo=echo, submitter=submitter,
                      campaign_id=handler.campaign_id, email=cleaned.get("email"))
        return SubmissionResult(ok=False, errors=errors, values=echo)


def record_form_view(form: Form, submitter: Submitter, *, url: str = "", landing_page: LandingPage | None = None) -> None:
    if not submitter.cookie:
        return
    import uuid

    visitor, _ = Visitor.objects.get_or_create(bu_id=form.bu_id, cookie_id=uuid.UUID(submitter.cookie),
                                               defaults={"ip": submitter.ip, "user_agent": submitter.user_agent[:500]})
    asset_type, asset_id, title = (("landing_page", landing_page.pk, landing_page.name) if landing_page
                                   else ("form", form.pk, form.name))
    prospect_services.record_activity(form.bu_id, ActivityType.FORM_VIEW, visitor=visitor, asset_type=asset_type,
                                      asset_id=asset_id, title=title, url=url[:2000],
                                      campaign_id=(landing_page.campaign_id if landing_page else None)
                                      or form.campaign_id)
