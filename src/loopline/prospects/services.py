"""All writes to prospects, tags, custom fields and activities. Views, tasks, import and the API call these."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from loopline.accounts.access import Access
from loopline.accounts.models import BusinessUnit
from loopline.platform import audit, events

from .fields import STANDARD_BY_NAME, FieldSpec, clean_value, custom_spec, field_specs
from .models import Activity, ActivityType, CustomField, Prospect, ProspectTag, Tag, Visitor


class ProspectValidationError(ValidationError):
    """Field-level errors: ``.errors`` maps a field name to its messages."""

    def __init__(self, errors: Mapping[str, list[str] | str]):
        self.errors = {k: [v] if isinstance(v, str) else list(v) for k, v in errors.items()}
        super().__init__(dict(self.errors.items()))

    def __str__(self) -> str:
        return "; ".join(msg for msgs in self.errors.values() for msg in msgs)


def clean_prospect_data(
    bu: BusinessUnit, data: Mapping[str, Any], *, partial: bool, specs: Mapping[str, FieldSpec] | None = None
) -> dict[str, Any]:
    """Validate raw input. Keys are standard field names or custom field api names (optionally "custom.x").

    ``specs`` (``{spec.key: spec}`` from ``field_specs``) may be passed by bulk callers to load the catalogue once.
    """
    if specs is None:
        specs = {spec.key: spec for spec in field_specs(bu.pk)}
    cleaned: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for key, raw in data.items():
        name = key.removeprefix("custom.")
        spec = specs.get(name)
        if spec is None:
            errors.setdefault(name, []).append(f"Unknown field '{name}'")
            continue
        try:
            cleaned[spec.name] = clean_value(spec, raw)
        except ValidationError as exc:
            errors.setdefault(name, []).extend(exc.messages)
    if not partial:
        for spec in specs.values():
            if spec.required and spec.name not in cleaned:
                errors.setdefault(spec.key, []).append(f"{spec.label} is required")
    if errors:
        raise ProspectValidationError(errors)
    return cleaned


def _apply(prospect: Prospect, cleaned: Mapping[str, Any], now: dt.datetime) -> set[str]:
    """Set values on the instance; return the names of fields whose value actually changed."""
    changed: set[str] = set()
    custom = dict(prospect.custom or {})
    for name, value in cleaned.items():
        if name.startswith("custom."):
            key = name.removeprefix("custom.")
            if custom.get(key) != value:
                if value in (None, "", []):
                    custom.pop(key, None)
                else:
                    custom[key] = value
                changed.add(name)
        elif getattr(prospect, name) != value:
            setattr(prospect, name, value)
            changed.add(name)
    if any(n.startswith("custom.") for n in changed):
        prospect.custom = custom
    if changed:
        stamps = dict(prospect.field_changed_at or {})
        iso = now.isoformat()
        for name in changed:
            stamps[name] = iso
        prospect.field_changed_at = stamps
    return changed


def _email_key(bu: BusinessUnit, email: str) -> str | None:
    return email or None if not bu.allow_duplicate_emails else None


def _duplicate_email_error(email: str) -> ProspectValidationError:
    return ProspectValidationError({"email": [f"A prospect with the email {email} already exists in this business unit"]})


@transaction.atomic
def create_prospect(
    bu: BusinessUnit,
    data: Mapping[str, Any],
    *,
    actor=None,
    source: str = "user",
    extra: Mapping[str, Any] | None = None,
) -> Prospect:
    """Create a prospect from raw field values. ``extra`` sets trusted system fields (score, CRM ids, assignment)."""
    cleaned = clean_prospect_data(bu, data, partial=False)
    now = timezone.now()
    prospect = Prospect(bu=bu)
    _apply(prospect, cleaned, now)
    for name, value in (extra or {}).items():
        setattr(prospect, name, value)
    prospect.email_key = _email_key(bu, prospect.email)
    if prospect.email_key and Prospect.objects.filter(bu=bu, email_key=prospect.email_key).exists():
        raise _duplicate_email_error(prospect.email)
    try:
        with transaction.atomic():
            prospect.save()
    except IntegrityError:
        raise _duplicate_email_error(prospect.email) from None
    events.publish(
        events.ProspectChanged(
            bu_id=bu.pk, prospect_id=prospect.pk, changed_fields=frozenset(cleaned) | frozenset(extra or {}),
            created=True, actor_id=getattr(actor, "pk", None), source=source,
        )
    )
    return prospect


@transaction.atomic
def update_prospect(
    prospect: Prospect,
    data: Mapping[str, Any],
    *,
    actor=None,
    source: str = "user",
    extra: Mapping[str, Any] | None = None,
) -> set[str]:
    """Apply a partial update; returns the changed field names. Per-field change times are kept ([R16])."""
    bu = prospect.bu
    cleaned = clean_prospect_data(bu, data, partial=True)
    if "email" in cleaned and not cleaned["email"] and prospect.email:
        raise ProspectValidationError({"email": ["Email cannot be removed from a prospect"]})
    # Lock the row so two writers never lose each other's changes.
    locked = Prospect.objects.select_for_update().get(pk=prospect.pk)
    for attr in ("custom", "field_changed_at"):
        setattr(prospect, attr, getattr(locked, attr))
    now = timezone.now()
    changed = _apply(prospect, cleaned, now)
    for name, value in (extra or {}).items():
        if getattr(prospect, name) != value:
            setattr(prospect, name, value)
            changed.add(name)
    if not changed:
        return changed
    if "email" in changed:
        prospect.email_key = _email_key(bu, prospect.email)
        clash = Prospect.objects.filter(bu=bu, email_key=prospect.email_key).exclude(pk=prospect.pk)
        if prospect.email_key and clash.exists():
            raise _duplicate_email_error(prospect.email)
    try:
        with transaction.atomic():
            prospect.save()
    except IntegrityError:
        raise _duplicate_email_error(prospect.email) from None
    events.publish(
        events.ProspectChanged(
            bu_id=bu.pk, prospect_id=prospect.pk, changed_fields=frozenset(changed),
            actor_id=getattr(actor, "pk", None), source=source,
        )
    )
    return changed


def assign_prospect(prospect: Prospect, user, *, actor=None, steal: bool = False) -> bool:
    """Assign to a user. Never takes a prospect from an existing owner unless ``steal`` is explicit ([M22])."""
    if prospect.assigned_user_id and not steal:
        return False
    update_prospect(prospect, {}, actor=actor, extra={"assigned_user": user, "assigned_at": timezone.now()})
    return True


# --- Recycle bin and merge -------------------------------------------------------------------------------------------


@transaction.atomic
def move_to_recycle_bin(prospect: Prospect, *, actor=None, reason: str = "") -> None:
    if prospect.is_deleted:
        return
    Prospect.objects.filter(pk=prospect.pk).update(is_deleted=True, deleted_at=timezone.now(), updated_at=timezone.now())
    prospect.is_deleted = True
    events.publish(events.ProspectDeleted(bu_id=prospect.bu_id, prospect_id=prospect.pk))
    if actor is not None:
        audit.record("prospect.recycle", actor=actor, bu=prospect.bu, obj=prospect, summary=reason or str(prospect))


@transaction.atomic
def undelete(prospect: Prospect, *, actor=None) -> None:
    if not prospect.is_deleted:
        return
    prospect.is_deleted = False
    prospect.deleted_at = None
    prospect.save(update_fields=["is_deleted", "deleted_at", "updated_at"])
    events.publish(events.ProspectChanged(
        bu_id=prospect.bu_id, prospect_id=prospect.pk, changed_fields=frozenset({"is_deleted"}),
        actor_id=getattr(actor, "pk", None),
    ))
    if actor is not None:
        audit.record("prospect.undelete", actor=actor, bu=prospect.bu, obj=prospect, summary=str(prospect))


@transaction.atomic
def delete_permanently(access: Access, prospect: Prospect) -> None:
    """Admin only; the prospect must be in the recycle bin and no longer linked to a live CRM record ([R33])."""
    if not access.can("recycle_bin.delete"):
        raise PermissionDenied("Only administrators can delete prospects permanently")
    if not prospect.is_deleted:
        raise ValidationError("Move the prospect to the recycle bin first")
    if prospect.crm_id and not prospect.crm_deleted:
        raise ValidationError("Delete the prospect's CRM record first; Loopline never deletes CRM records")
    snapshot = {"email": prospect.email, "name": prospect.full_name}
    audit.record("prospect.delete_permanently", actor=access.user, bu=access.bu, obj=prospect, before=snapshot)
    pk = prospect.pk
    prospect.delete()
    events.publish(events.ProspectDeleted(bu_id=access.bu.pk, prospect_id=pk, permanent=True))


@transaction.atomic
def merge_prospects(survivor: Prospect, loser: Prospect, *, actor=None) -> Prospect:
    """Move the loser's activities, visitors and tags to the survivor, fill the survivor's blanks, recycle the loser."""
    if survivor.pk == loser.pk or survivor.bu_id != loser.bu_id:
        raise ValidationError("Choose two different prospects of the same business unit")
    # Work from the committed rows (scores and timestamps move through F() updates elsewhere).
    survivor = Prospect.objects.select_for_update().get(pk=survivor.pk)
    loser = Prospect.objects.select_for_update().get(pk=loser.pk)
    fills = {}
    for name in STANDARD_BY_NAME:
        if name == "email":
            continue
        if getattr(survivor, name) in ("", None) and getattr(loser, name) not in ("", None):
            fills[name] = getattr(loser, name)
    custom = {**(loser.custom or {}), **(survivor.custom or {})}
    Activity.objects.filter(prospect=loser).update(prospect=survivor)
    Visitor.objects.filter(prospect=loser).update(prospect=survivor)
    existing = set(ProspectTag.objects.filter(prospect=survivor).values_list("tag_id", flat=True))
    ProspectTag.objects.filter(prospect=loser).exclude(tag_id__in=existing).update(prospect=survivor)
    ProspectTag.objects.filter(prospect=loser).delete()
    events.publish(events.ProspectsMerged(bu_id=survivor.bu_id, survivor_id=survivor.pk, loser_id=loser.pk))
    extra: dict[str, Any] = {"score": survivor.score + loser.score}
    for name, value in fills.items():
        extra[name] = value
    if custom != survivor.custom:
        extra["custom"] = custom
    if loser.last_activity_at and (not survivor.last_activity_at or loser.last_activity_at > survivor.last_activity_at):
        extra["last_activity_at"] = loser.last_activity_at
    update_prospect(survivor, {}, actor=actor, extra=extra, source="merge")
    Prospect.objects.filter(pk=loser.pk).update(merged_into=survivor, email_key=None)
    loser.email_key = None
    move_to_recycle_bin(loser, actor=None)
    record_activity(survivor.bu_id, ActivityType.MERGED, prospect=survivor,
                    title=f"Merged with {loser.email or loser.pk}", data={"merged_prospect_id": loser.pk})
    if actor is not None:
        audit.record("prospect.merge", actor=actor, bu=survivor.bu, obj=survivor,
                     summary=f"Merged prospect {loser.pk} into {survivor.pk}")
    survivor.refresh_from_db()
    return survivor


# --- Tags ----------------------------------------------------------------------------------------------------------


def get_or_create_tag(bu: BusinessUnit, name: str) -> Tag:
    name = name.strip()
    if not name or len(name) > 80:
        raise ValidationError("A tag needs 1 to 80 characters")
    tag = Tag.objects.filter(bu=bu, name__iexact=name).first()
    if tag is None:
        try:
            with transaction.atomic():
                tag = Tag.objects.create(bu=bu, name=name)
        except IntegrityError:
            tag = Tag.objects.get(bu=bu, name__iexact=name)
    return tag


def add_tags(prospect: Prospect, names: Iterable[str]) -> list[Tag]:
    tags = [get_or_create_tag(prospect.bu, n) for n in names if n.strip()]
    ProspectTag.objects.bulk_create(
        [ProspectTag(prospect=prospect, tag=t) for t in tags], ignore_conflicts=True
    )
    return tags


def remove_tag(prospect: Prospect, tag: Tag) -> None:
    ProspectTag.objects.filter(prospect=prospect, tag=tag).delete()


# --- Custom fields ---------------------------------------------------------------------------------------------------


@transaction.atomic
def save_custom_field(access: Access, data: Mapping[str, Any], instance: CustomField | None = None) -> CustomField:
    access.require("settings.edit")
    cf = instance or CustomField(bu=access.bu)
    before = {k: getattr(cf, k) for k in ("name", "api_name", "type", "options", "required")} if instance else None
    for key, value in data.items():
        setattr(cf, key, value)
    if cf.type in (CustomField.Type.DROPDOWN, CustomField.Type.MULTI_SELECT) and not cf.options:
        raise ValidationError({"options": "Dropdown and multi-select fields need at least one choice"})
    cf.full_clean(exclude=["bu"])
    if cf.pattern:
        import re

        try:
            re.compile(cf.pattern)
        except re.error as exc:
            raise ValidationError({"pattern": f"Not a valid regular expression: {exc}"}) from None
    if cf.default_merge_value:
        clean_value(custom_spec(cf), cf.default_merge_value)
    cf.save()
    after = {k: getattr(cf, k) for k in ("name", "api_name", "type", "options", "required")}
    audit.record("custom_field.save", actor=access.user, bu=access.bu, obj=cf, before=before, after=after)
    return cf


# --- Activities ------------------------------------------------------------------------------------------------------


def record_activity(
    bu_id: int,
    type: int,
    *,
    prospect: Prospect | None = None,
    visitor: Visitor | None = None,
    occurred_at: dt.datetime | None = None,
    title: str = "",
    url: str = "",
    asset_type: str = "",
    asset_id: int | None = None,
    campaign_id: int | None = None,
    is_machine: bool = False,
    points: int = 0,
    data: dict | None = None,
) -> Activity:
    """Append an activity to the timeline and tell interested services (scoring, automation...)."""
    if prospect is None and visitor is not None:
        prospect_id = visitor.prospect_id
    else:
        prospect_id = prospect.pk if prospect else None
    when = occurred_at or timezone.now()
    activity = Activity.objects.create(
        bu_id=bu_id, prospect_id=prospect_id, visitor=visitor, type=type, occurred_at=when, title=title[:255],
        url=url[:2000], asset_type=asset_type, asset_id=asset_id, campaign_id=campaign_id, is_machine=is_machine,
        points=points, data=data or {},
    )
    if prospect_id and not is_machine and type not in _SYSTEM_TYPES:
        Prospect.objects.filter(pk=prospect_id).filter(
            Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=when)
        ).update(last_activity_at=when)
    if points and prospect_id:
        Prospect.objects.filter(pk=prospect_id).update(score=F("score") + points)
    events.publish(events.ActivityRecorded(
        bu_id=bu_id, activity_id=activity.pk, prospect_id=prospect_id, visitor_id=visitor.pk if visitor else None,
        type=type, is_machine=is_machine, data=activity.data,
    ))
    return activity


_SYSTEM_TYPES = {ActivityType.PROSPECT_CREATED, ActivityType.IMPORTED, ActivityType.MERGED, ActivityType.CRM_SYNC,
                 ActivityType.NOTE, ActivityType.EMAIL_SENT}
