"""All writes to prospects, tags, custom fields and activities. Views, tasks, import and the API call these."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


def _apply(
    prospect: Prospect, cleaned: Mapping[str, Any], now: dt.datetime,
    changed_at: Mapping[str, dt.datetime] | None = None,
) -> set[str]:
    """Set values on the instance; return the names of fields whose value actually changed.

    ``changed_at`` overrides the per-field change time (the CRM connector stamps a field with the time it changed in
    the CRM, not the time it was copied, so "most recently updated field" stays honest — [R16])."""
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
            stamps[name] = changed_at[name].isoformat() if changed_at and name in changed_at else iso
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
    changed_at: Mapping[str, dt.datetime] | None = None,
) -> set[str]:
    """Apply a partial update; returns the changed field names. Per-field change times are kept ([R16]);
    ``changed_at`` gives them explicitly (CRM connector)."""
    bu = prospect.bu
    cleaned = clean_prospect_data(bu, data, partial=True)
    if "email" in cleaned and not cleaned["email"] and prospect.email:
        raise ProspectValidationError({"email": ["Email cannot be removed from a prospect"]})
    # Lock the row so two writers never lose each other's changes: start from the committed row, not from the
    # caller's instance, which may predate another writer's commit (save() writes every column back).
    locked = Prospect.objects.select_for_update().get(pk=prospect.pk)
    for f in Prospect._meta.concrete_fields:
        if not f.primary_key:
            setattr(prospect, f.attname, getattr(locked, f.attname))
    now = timezone.now()
    changed = _apply(prospect, cleaned, now, changed_at)
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


CRM_LINK_FIELDS = frozenset({"crm_lead_id", "crm_contact_id", "crm_account_id", "crm_owner_id", "crm_last_sync_at"})


def set_crm_fields(bu_id: int, updates: Mapping[int, Mapping[str, Any]]) -> int:
    """Set the connector-owned CRM linkage fields of many prospects at once (no change event: these fields never
    flow back to the CRM). ``updates`` maps a prospect id to ``{field: value}`` with keys from ``CRM_LINK_FIELDS``.
    Used by the CRM connector's batch pull/push; single prospects go through ``update_prospect(..., extra=...)``.
    Ids of another BU are left alone. Returns the number of prospects written."""
    if not updates:
        return 0
    groups: dict[tuple[str, ...], dict[int, Mapping[str, Any]]] = {}
    for pk, values in updates.items():
        bad = set(values) - CRM_LINK_FIELDS
        if bad:
            raise ValueError(f"not CRM linkage fields: {sorted(bad)}")
        groups.setdefault(tuple(sorted(values)), {})[pk] = values
    count = 0
    for names, items in groups.items():
        count += _set_columns_in_bu(bu_id, items, names)
    return count


def _set_columns_in_bu(bu_id: int, items: Mapping[int, Mapping[str, Any]], names: Sequence[str]) -> int:
    """One UPDATE of ``names`` for the prospects ``items`` names, guarded by the BU.

    PostgreSQL: ``UPDATE … FROM unnest(arrays)`` with the arrays bound as binary parameters on a server-binding
    cursor (Django's client-side binding would quote every element into the SQL text in Python: the pull's hot spot).
    Elsewhere: the ids of the BU first, then ``platform.bulk.update_columns``."""
    from django.db import connections, router

    conn = connections[router.db_for_write(Prospect)]
    if conn.vendor != "postgresql":
        from loopline.platform.bulk import update_columns

        allowed = set(Prospect.objects.filter(bu_id=bu_id, pk__in=list(items)).values_list("pk", flat=True))
        return update_columns(Prospect, {pk: v for pk, v in items.items() if pk in allowed}, names)
    import psycopg
    from django.db import models

    opts = Prospect._meta
    fields: list[models.Field] = []
    for name in names:
        f = opts.get_field(name)
        assert isinstance(f, models.Field) and f.column, f"{name} is not a column of Prospect"
        fields.append(f)
    qn = conn.ops.quote_name
    sets = ", ".join(f"{qn(str(f.column))} = v.c{i}" for i, f in enumerate(fields))
    arrays = ", ".join(f"%b::{f.db_type(conn)}[]" for f in fields)
    aliases = ", ".join(f"c{i}" for i in range(len(fields)))
    sql = (f"UPDATE {qn(opts.db_table)} AS t SET {sets} FROM unnest(%b::bigint[], {arrays}) AS v(id, {aliases}) "
           "WHERE t.id = v.id AND t.bu_id = %b")
    params: list[Any] = [list(items)]
    params += [[f.get_db_prep_save(values[name], conn) for values in items.values()]
               for name, f in zip(names, fields, strict=True)]
    params.append(bu_id)
    conn.ensure_connection()
    with conn.wrap_database_errors, psycopg.Cursor(conn.connection) as cursor:
        cursor.execute(sql, params, prepare=False)
        return cursor.rowcount


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
def undelete(prospect: Prospect, *, actor=None, source: str = "user") -> None:
    """``source="crm"``: the CRM record came back ([R31]); the connector must not write the restore back to it."""
    if not prospect.is_deleted:
        return
    prospect.is_deleted = False
    prospect.deleted_at = None
    prospect.save(update_fields=["is_deleted", "deleted_at", "updated_at"])
    events.publish(events.ProspectChanged(
        bu_id=prospect.bu_id, prospect_id=prospect.pk, changed_fields=frozenset({"is_deleted"}),
        actor_id=getattr(actor, "pk", None), source=source,
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
    if tags:  # dynamic lists and rules with tag criteria follow at once
        events.publish(events.ProspectChanged(bu_id=prospect.bu_id, prospect_id=prospect.pk,
                                              changed_fields=frozenset({"tags"})))
    return tags


def remove_tag(prospect: Prospect, tag: Tag) -> None:
    if ProspectTag.objects.filter(prospect=prospect, tag=tag).delete()[0]:
        events.publish(events.ProspectChanged(bu_id=prospect.bu_id, prospect_id=prospect.pk,
                                              changed_fields=frozenset({"tags"})))


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


def delete_custom_field(access: Access, cf: CustomField) -> int:
    """Delete a custom field and its values on every prospect of the BU; returns how many prospects had a value.

    Refused while the CRM connector maps the field: the mapping must go first, or the next sync would fail.
    """
    from loopline.connector import selectors as connector_selectors

    access.require("settings.delete")
    if f"custom.{cf.api_name}" in connector_selectors.fields_mapped_to_crm(access.bu.pk):
        raise ValidationError(
            f"{cf.name} is mapped to a CRM field. Remove it from the connector's field mapping first."
        )
    with transaction.atomic():
        holders = Prospect.objects.filter(bu=access.bu, custom__has_key=cf.api_name)
        count = 0
        while True:  # in batches: a BU can hold millions of prospects
            rows = list(holders.order_by("pk").values_list("pk", "custom")[:2000])
            if not rows:
                break
            objs = []
            for pk, custom in rows:
                custom.pop(cf.api_name, None)
                objs.append(Prospect(pk=pk, custom=custom))
            Prospect.objects.bulk_update(objs, ["custom"])
            count += len(rows)
        before = {"name": cf.name, "api_name": cf.api_name, "type": cf.type, "prospects_with_value": count}
        cf.delete()
        audit.record("custom_field.delete", actor=access.user, bu=access.bu, object_type="custom field",
                     object_id=cf.pk or "", summary=f"Deleted custom field {before['name']}", before=before)
    return count


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


# --- Bulk create-or-update (import) ----------------------------------------------------------------------------------

# Trusted CRM keys a bulk caller may give to match rows; they are set on prospects created here, never changed on updates.
CRM_MATCH_KEYS = ("crm_contact_id", "crm_lead_id")
_CRM_ID_RE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")


@dataclass
class BulkUpsertResult:
    """What ``bulk_upsert_prospects`` did with each input row.

    ``outcomes[i]`` is one of "created", "updated", "unchanged", "skipped" (exists, updates not wanted) or "rejected";
    ``errors[i]`` maps a field key (standard name, custom api name, crm id key or "row") to messages.
    """

    outcomes: list[str]
    errors: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    created_ids: list[int] = field(default_factory=list)
    updated_ids: list[int] = field(default_factory=list)
    undeleted_ids: list[int] = field(default_factory=list)


def _bulk_insert(model, objs: Sequence[Any]) -> list[int]:
    """``bulk_create`` for wide rows without its per-value compiler overhead; returns the new primary keys.

    ``objs`` are model instances (each gets its pk; ``auto_now``/``auto_now_add`` are applied) or dicts of
    ``attname -> value`` (missing attributes take the field's default). Same semantics as ``bulk_create``: no save(),
    no signals, raises IntegrityError. PostgreSQL: ids from the table's sequence, then ``COPY ... FROM STDIN``.
    SQLite: multi-row ``INSERT ... VALUES ... RETURNING``.
    Use it only where ``bulk_create`` would do, for batches of new rows (import).
    """
    import json

    from django.db import connections, models, router

    if not objs:
        return []
    conn = connections[router.db_for_write(model)]
    opts = model._meta
    fields = [f for f in opts.concrete_fields if not f.primary_key]
    as_dicts = isinstance(objs[0], Mapping)
    now = timezone.now()
    if as_dicts:
        defaults = {f.attname: (now if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
                                else f.get_default()) for f in fields}
        values = [[row.get(f.attname, defaults[f.attname]) for f in fields] for row in objs]
    else:
        auto = [f.attname for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)]
        for obj in objs:
            for attname in auto:
                setattr(obj, attname, now)  # one timestamp for the whole batch, like one multi-row INSERT
        attnames = [f.attname for f in fields]
        values = [[d[a] for a in attnames] for d in (obj.__dict__ for obj in objs)]
    table, pk = conn.ops.quote_name(opts.db_table), conn.ops.quote_name(opts.pk.column)
    columns = ", ".join(conn.ops.quote_name(f.column) for f in fields)
    ids: list[int] = []
    json_cache: dict[Any, str] = {}

    def dump_json(value, encoder) -> str:
        """json.dumps, memoised for flat dicts (per-field change times repeat across a batch)."""
        try:
            # (types too: True == 1 must not share an entry with 1)
            key = (encoder, tuple((k, v.__class__, v) for k, v in value.items())) if type(value) is dict else None
            hash(key)
        except TypeError:
            key = None
        if key is None:
            return json.dumps(value, cls=encoder)
        text = json_cache.get(key)
        if text is None:
            text = json_cache[key] = json.dumps(value, cls=encoder)
        return text

    with conn.cursor() as cursor, conn.wrap_database_errors:  # raw cursors too raise django.db errors
        if conn.vendor == "postgresql":
            # Reserve the ids, then COPY the rows in (psycopg writes COPY data in C: the fastest way in).
            cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                           [opts.db_table, opts.pk.column, len(values)])
            ids = [r[0] for r in cursor.fetchall()]
            jsons = [n for n, f in enumerate(fields) if isinstance(f, models.JSONField)]
            encoders = {n: fields[n].encoder for n in jsons}
            with conn.connection.cursor() as raw, raw.copy(f"COPY {table} ({pk}, {columns}) FROM STDIN") as copy:
                for new_id, row in zip(ids, values, strict=True):
                    for n in jsons:
                        row[n] = dump_json(row[n], encoders[n])
                    copy.write_row((new_id, *row))
        else:
            passthrough = (models.CharField, models.TextField, models.BooleanField, models.IntegerField,
                           models.ForeignKey)
            cache: dict[Any, Any] = {}

            def prep(f):
                if isinstance(f, models.JSONField):
                    return lambda v: dump_json(v, f.encoder)

                def convert(v):  # datetimes and decimals repeat a lot within a batch
                    if v is None:
                        return None
                    key = (f.attname, v)
                    if key not in cache:
                        cache[key] = f.get_db_prep_save(v, conn)
                    return cache[key]

                return convert

            converters = [(n, prep(f)) for n, f in enumerate(fields) if not isinstance(f, passthrough)]
            for row in values:
                for n, conv in converters:
                    row[n] = conv(row[n])
            per_statement = max(1, min(500, 30000 // len(fields)))
            one_row = "(" + ", ".join(["?"] * len(fields)) + ")"  # sqlite3's own placeholders: no rewriting
            raw = conn.connection.cursor()
            try:
                for start in range(0, len(values), per_statement):
                    chunk = values[start:start + per_statement]
                    params: list[Any] = []
                    for row in chunk:
                        params.extend(row)
                    raw.execute(
                        f"INSERT INTO {table} ({columns}) VALUES {', '.join([one_row] * len(chunk))} RETURNING {pk}",
                        params,
                    )
                    ids.extend(r[0] for r in raw.fetchall())
            finally:
                raw.close()
    if not as_dicts:
        for obj, new_id in zip(objs, ids, strict=True):
            obj.pk = new_id
            obj._state.adding = False
            obj._state.db = conn.alias
    return ids


def _bulk_update(model, objs: Sequence[Any], fields: Sequence[str]) -> None:
    """``bulk_update`` of ``fields`` (attribute names) on many instances in one statement per 1,000 rows.

    PostgreSQL: ``UPDATE ... FROM unnest(<one text[] per column>)`` — Django's ``bulk_update`` builds one CASE WHEN
    per row and field, which costs more to compile than the update itself. Elsewhere: ``bulk_update``.
    """
    import json

    from django.db import connections, models, router

    if not objs:
        return
    conn = connections[router.db_for_write(model)]
    if conn.vendor != "postgresql":
        model._base_manager.bulk_update(objs, list(fields), batch_size=200)
        return
    opts = model._meta
    targets = [opts.get_field(name) for name in fields]

    def text(f):
        if isinstance(f, models.BooleanField):
            return lambda v: None if v is None else ("t" if v else "f")
        if isinstance(f, models.JSONField):
            return lambda v: json.dumps(v, cls=f.encoder)
        if isinstance(f, models.DateTimeField | models.DateField):
            return lambda v: None if v is None else v.isoformat()
        if isinstance(f, models.ForeignKey):
            return lambda v: None if v is None else str(v.pk if isinstance(v, models.Model) else v)
        return lambda v: None if v is None else str(v)

    converters = [text(f) for f in targets]
    q = conn.ops.quote_name
    sets = ", ".join(f"{q(f.column)} = v.c{n}::{f.db_type(conn)}" for n, f in enumerate(targets))
    names = ", ".join(f"c{n}" for n in range(len(targets)))
    sql = (f"UPDATE {q(opts.db_table)} AS t SET {sets} FROM unnest(%s::bigint[], "
           f"{', '.join(['%s::text[]'] * len(targets))}) AS v(id, {names}) WHERE t.{q(opts.pk.column)} = v.id")
    with conn.cursor(), conn.wrap_database_errors, conn.connection.cursor() as raw:
        for start in range(0, len(objs), 1000):
            chunk = objs[start:start + 1000]
            arrays = [[obj.pk for obj in chunk]]
            arrays += [[conv(getattr(obj, f.attname)) for obj in chunk] for conv, f in zip(converters, targets, strict=True)]
            raw.execute(sql, arrays)


def _new_prospect(template: Prospect) -> Prospect:
    """A fresh unsaved Prospect equal to ``template`` (defaults + BU): a dict copy, far cheaper than Model.__init__."""
    from django.db.models.base import ModelState

    obj = Prospect.__new__(Prospect)
    obj.__dict__.update(template.__dict__)
    obj._state = ModelState()
    obj.custom, obj.field_changed_at = {}, {}
    return obj


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, list | tuple) and not value)


@transaction.atomic
def bulk_upsert_prospects(
    bu: BusinessUnit,
    rows: Sequence[Mapping[str, Any]],
    *,
    match: str | None = None,
    update_existing: bool = True,
    undelete: bool = False,
    overwrite_with_blanks: bool = False,
    specs: Mapping[str, FieldSpec] | None = None,
    queryset=None,
    seen: dict[tuple[str, str], int] | None = None,
    row_numbers: Sequence[int] | None = None,
    activity_title: str = "",
    actor=None,
    source: str = "import",
    crm_fields: Sequence[Mapping[str, Any]] | None = None,
) -> BulkUpsertResult:
    """Create or update many prospects in one transaction, with the same rules as ``create_prospect``/``update_prospect``.

    Each row holds raw values keyed like ``clean_prospect_data`` input, plus optionally ``crm_contact_id`` /
    ``crm_lead_id``. Every value goes through ``clean_value``; a bad row is rejected (reported in ``errors``) and the
    other rows are still written. Matching:

    - ``match="email"`` (default in unique-email BUs): the prospect with that email.
    - ``match="crm_id"`` (default where duplicate emails are allowed): the prospect with that CRM contact or lead id;
      in unique-email BUs a row whose CRM id matches nothing still matches by email (the email must stay unique).
    - A match in the recycle bin is restored when ``undelete`` is set; otherwise the row is rejected, never duplicated.

    ``update_existing=False`` leaves matched prospects as they are ("skipped"). Blank values never overwrite
    stored ones unless ``overwrite_with_blanks``. Email can never be removed. Per-field change times
    (``field_changed_at``) and ``email_key`` are kept exactly as the single-prospect services keep them.

    ``seen`` carries match keys across calls (one import = many batches): a row whose email or CRM id already
    appeared in an accepted earlier row is rejected as a duplicate within the file (the first row wins).
    ``queryset`` restricts which prospects may be matched (e.g. ``scoped_prospects(access, include_deleted=True)``).
    Publishes one ``ProspectsBulkChanged`` event; writes an IMPORTED activity per changed prospect when
    ``activity_title`` is given. Callers check abilities first.
    ``crm_fields`` (the CRM connector's pull; one mapping per row, keys from ``CRM_LINK_FIELDS``) are set on the
    prospects this call creates, in the same INSERT (``set_crm_fields`` would rewrite every new row once more).
    """
    if specs is None:
        specs = {spec.key: spec for spec in field_specs(bu.pk)}
    unique_email = not bu.allow_duplicate_emails
    match = match or ("email" if unique_email else "crm_id")
    if match not in ("email", "crm_id"):
        raise ValueError(f"match must be 'email' or 'crm_id', not {match!r}")
    seen = {} if seen is None else seen
    numbers = list(row_numbers) if row_numbers is not None else list(range(1, len(rows) + 1))
    result = BulkUpsertResult(outcomes=["rejected"] * len(rows))
    now = timezone.now()

    def reject(i: int, key: str, message: str) -> None:
        result.errors.setdefault(i, {}).setdefault(key, []).append(message)
        result.outcomes[i] = "rejected"

    # 1. Clean every row with the shared rules.
    prepared: list[tuple[int, dict[str, Any], dict[str, str]]] = []
    for i, raw in enumerate(rows):
        data, crm = {}, {}
        for key, value in raw.items():
            if key in CRM_MATCH_KEYS:
                text = "" if value is None else str(value).strip()
                if text and not _CRM_ID_RE.fullmatch(text):
                    reject(i, key, f"'{text[:40]}' is not a CRM id (15 or 18 letters and digits)")
                elif text:
                    crm[key] = text
            elif overwrite_with_blanks or not (value is None or (type(value) is str and not value.strip())):
                data[key] = value
        try:
            cleaned = clean_prospect_data(bu, data, partial=True, specs=specs)
        except ProspectValidationError as exc:
            for key, messages in exc.errors.items():
                for message in messages:
                    reject(i, key, message)
            continue
        if i in result.errors:
            continue
        if not cleaned.get("email") and not crm:
            reject(i, "email", "Email is required (or a CRM id) to import a prospect")
            continue
        prepared.append((i, cleaned, crm))

    # 2. Load every prospect the batch could match, in one query per key, locked against concurrent writers.
    emails = {c["email"] for _, c, _ in prepared if c.get("email")}
    leads = {k["crm_lead_id"] for _, _, k in prepared if "crm_lead_id" in k}
    contacts = {k["crm_contact_id"] for _, _, k in prepared if "crm_contact_id" in k}
    base = queryset if queryset is not None else Prospect.objects.filter(bu_id=bu.pk)
    found: dict[int, Prospect] = {}
    lookups = [("email", emails)] if (match == "email" or unique_email) else []
    if match == "crm_id":
        lookups += [("crm_lead_id", leads), ("crm_contact_id", contacts)]
    for column, values in lookups:
        if values:
            candidates = base.filter(bu_id=bu.pk, merged_into__isnull=True, **{f"{column}__in": values})
            for p in candidates.select_for_update().order_by("-updated_at", "-id"):
                found.setdefault(p.pk, p)
    by_key: dict[tuple[str, str], Prospect] = {}
    # Live prospects win over recycled ones; among equals the most recently updated (query order) wins.
    for p in sorted(found.values(), key=lambda p: p.is_deleted):
        for column in ("email", "crm_lead_id", "crm_contact_id"):
            value = getattr(p, column)
            if value:
                by_key.setdefault((column, value), p)
    # Who holds each email in a unique-email BU, whatever the caller's scope (the constraint is BU-wide).
    email_owner: dict[str, int] = {}
    if unique_email and emails:
        email_owner = {key: pk for key, pk in Prospect.objects.filter(bu_id=bu.pk, email_key__in=emails)
                       .values_list("email_key", "pk") if key is not None}  # ``__in`` never matches NULL

    # 3. Decide each row: create, update, skip or reject.
    template = Prospect(bu=bu)
    required_specs = [s for s in specs.values() if s.required]
    creates: list[tuple[int, Prospect, frozenset[str]]] = []
    updates: dict[int, tuple[Prospect, set[str]]] = {}
    undeleted: set[int] = set()
    for i, cleaned, crm in prepared:
        email = cleaned.get("email") or ""
        keys = [(k, v) for k, v in crm.items()]
        if email and (unique_email or match == "email"):
            keys.append(("email", email))
        dup = next(((k, seen[k]) for k in keys if k in seen), None)
        if dup:
            (column, value), first = dup
            reject(i, column, f"{value} appears again: row {first} of this file has it already (the first row wins)")
            continue
        target = None
        if match == "crm_id":
            target = next((by_key[k] for k in crm.items() if k in by_key), None)
        if target is None and email and (match == "email" or unique_email):
            target = by_key.get(("email", email))
        if target is None and email and unique_email and email in email_owner:
            reject(i, "email", f"A prospect with the email {email} already exists in this business unit")
            continue
        if target is not None:
            if target.is_deleted and target.pk not in undeleted:
                if not undelete:
                    reject(i, "email" if email else next(iter(crm)),
                           f"Matches prospect #{target.pk}, which is in the recycle bin; choose 'undelete matching "
                           "prospects' to restore and update it")
                    continue
                target.is_deleted, target.deleted_at = False, None
                undeleted.add(target.pk)
            pending_fields = updates.get(target.pk, (target, set()))[1]
            if update_existing:
                if "email" in cleaned and not email and target.email:
                    reject(i, "email", "Email cannot be removed from a prospect")
                    continue
                before = {"custom": dict(target.custom or {}), "field_changed_at": dict(target.field_changed_at or {})}
                before_values = {name: getattr(target, name) for name in cleaned if not name.startswith("custom.")}
                changed = _apply(target, cleaned, now)
                if "email" in changed and unique_email and email_owner.get(email, target.pk) != target.pk:
                    # Undo: the new email belongs to another prospect.
                    for name, value in before_values.items():
                        setattr(target, name, value)
                    target.custom, target.field_changed_at = before["custom"], before["field_changed_at"]
                    reject(i, "email", f"A prospect with the email {email} already exists in this business unit")
                    continue
                if "email" in changed:
                    target.email_key = _email_key(bu, target.email)
                    if target.email_key:
                        email_owner[target.email_key] = target.pk
                    changed.add("email_key")
                pending_fields |= changed
            if target.pk in undeleted:
                pending_fields |= {"is_deleted", "deleted_at"}
            if pending_fields:
                updates[target.pk] = (target, pending_fields)
                result.outcomes[i] = "updated"
            else:
                result.outcomes[i] = "unchanged" if update_existing else "skipped"
        else:
            missing = [s for s in required_specs if _is_blank(cleaned.get(s.name))]
            if missing:
                for s in missing:
                    reject(i, s.key, f"{s.label} is required")
                continue
            prospect = _new_prospect(template)
            changed = _apply(prospect, {k: v for k, v in cleaned.items() if not _is_blank(v)}, now)
            for key, value in crm.items():
                setattr(prospect, key, value)
            for key, value in (crm_fields[i] if crm_fields is not None else {}).items():
                if key not in CRM_LINK_FIELDS:
                    raise ValueError(f"not a CRM linkage field: {key}")
                setattr(prospect, key, value)
            prospect.email_key = _email_key(bu, prospect.email)
            if prospect.email_key:
                email_owner[prospect.email_key] = -1
            creates.append((i, prospect, frozenset(changed)))
            result.outcomes[i] = "created"
        for k in keys:
            seen[k] = numbers[i]

    # 4. Write: one multi-row INSERT and a few multi-row UPDATEs.
    if creates:
        objs = [p for _, p, _ in creates]
        try:
            with transaction.atomic():
                _bulk_insert(Prospect, objs)
        except IntegrityError:
            # Someone else took one of these emails meanwhile: fall back to one row at a time.
            for i, p, _ in creates:
                p.pk, p._state.adding = None, True
                try:
                    with transaction.atomic():
                        p.save()
                except IntegrityError:
                    p.pk = None
                    reject(i, "email", f"A prospect with the email {p.email} already exists in this business unit")
        result.created_ids = [p.pk for _, p, _ in creates if p.pk]
    if updates:
        fields = {"field_changed_at", "updated_at"}
        for p, changed in updates.values():
            p.updated_at = now
            fields |= {"custom" if n.startswith("custom.") else n for n in changed}
        _bulk_update(Prospect, [p for p, _ in updates.values()], sorted(fields))
        result.updated_ids = list(updates)
        result.undeleted_ids = sorted(undeleted)
    changed_ids = [*result.created_ids, *result.updated_ids]
    if activity_title and changed_ids:
        title = activity_title[:255]
        _bulk_insert(Activity, [
            {"bu_id": bu.pk, "prospect_id": pk, "type": int(ActivityType.IMPORTED), "occurred_at": now, "title": title}
            for pk in changed_ids
        ])
    if changed_ids:
        events.publish(events.ProspectsBulkChanged(
            bu_id=bu.pk, prospect_ids=tuple(changed_ids), created_ids=tuple(result.created_ids), source=source,
        ))
    return result
