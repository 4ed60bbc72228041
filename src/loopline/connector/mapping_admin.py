"""Admin use cases of the field mapping screen ([R16]–[R21]): change a behaviour, map a custom field, remove a custom
mapping, keep the fixed rows in step with the settings. All admin-only and audited. Changing a mapping never queues a
resync by itself ([R21]): the new rule applies the next time a record changes on either side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from loopline.accounts.access import Access
from loopline.platform import audit

from .engine.model import Direction, MappingError
from .engine.model import FieldMapping as EngineMapping
from .metadata import describe_fields
from .models import Connector, FieldMapping

OBJECTS = (("Lead", "lead_field"), ("Contact", "contact_field"), ("PersonAccount", "person_account_field"))
OBJECT_LABELS = {"Lead": "Lead", "Contact": "Contact", "PersonAccount": "Person account"}
UNMAPPABLE_TYPES = frozenset({"id", "reference", "address", "location", "base64", "anyType"})
FIXED_LABELS = {
    "score": "Score",
    "grade": "Grade",
    "campaign": "Campaign",
    "crm_owner_id": "Owner (CRM user)",
}


def _require_admin(access: Access, connector: Connector) -> None:
    if not access.can("connector.edit"):  # [R5]
        raise PermissionDenied("Only administrators can manage the CRM connector")
    if connector.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")


def validate_row(row: FieldMapping) -> EngineMapping:
    """The engine's own rules (most-recent-field only for the opt-out field, fixed fields one-way)."""
    try:
        return EngineMapping.from_columns(
            row.loopline_field, lead_field=row.lead_field, contact_field=row.contact_field,
            person_account_field=row.person_account_field, behaviour=row.behaviour, fixed=row.fixed,
        )
    except (MappingError, ValueError) as exc:
        raise ValidationError(str(exc)) from None


def _snapshot(row: FieldMapping) -> dict:
    return {"lead_field": row.lead_field, "contact_field": row.contact_field,
            "person_account_field": row.person_account_field, "behaviour": row.behaviour}


@transaction.atomic
def set_behaviour(access: Access, connector: Connector, row: FieldMapping, behaviour: str) -> FieldMapping:
    _require_admin(access, connector)
    if row.connector_id != connector.pk:
        raise PermissionDenied("Not this connector's mapping")
    if row.fixed:
        raise ValidationError("This is a fixed field: its direction cannot be changed.")
    if behaviour not in FieldMapping.Behaviour.values:
        raise ValidationError("Choose one of the sync behaviours in the list")
    before = _snapshot(row)
    row.behaviour = behaviour
    validate_row(row)
    row.save(update_fields=["behaviour"])
    after = _snapshot(row)
    b, a = audit.diff(before, after)
    audit.record("connector.mapping.update", actor=access.user, bu=access.bu, obj=row, before=b, after=a,
                 summary=row.loopline_field)
    return row


def crm_field_problem(connector: Connector, object_type: str, name: str) -> str:
    """Why ``name`` cannot be written on ``object_type`` according to the cached describe ("" when fine)."""
    fields = describe_fields(connector, object_type)
    if fields is None:
        return f"No field list for {object_type} yet: refresh the metadata first."
    by_lower = {k.lower(): v for k, v in fields.items()}
    info = by_lower.get(name.lower())
    if info is None:
        return f"{object_type} has no field named {name}."
    if not info.get("updateable") or info.get("calculated"):
        return f"{object_type}.{info['name']} is read-only in the CRM."
    if info.get("type") in UNMAPPABLE_TYPES:
        return f"{object_type}.{info['name']} is a {info.get('type')} field and cannot hold a prospect value."
    return ""


@transaction.atomic
def save_custom_mapping(access: Access, connector: Connector, custom_field, *, lead_field: str = "",
                        contact_field: str = "", person_account_field: str = "",
                        behaviour: str = FieldMapping.Behaviour.USE_CRM) -> FieldMapping:
    """Map a custom prospect field to CRM fields that exist and are updateable in the cached describe data."""
    _require_admin(access, connector)
    if custom_field.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")
    names = {"lead_field": lead_field.strip(), "contact_field": contact_field.strip(),
             "person_account_field": person_account_field.strip()}
    if not any(names.values()):
        raise ValidationError("Choose a CRM field on at least one object")
    errors = {}
    for object_type, column in OBJECTS:
        if names[column]:
            problem = crm_field_problem(connector, object_type, names[column])
            if problem:
                errors[column] = problem
    if errors:
        raise ValidationError(errors)
    key = f"custom.{custom_field.api_name}"
    row = FieldMapping.objects.filter(connector=connector, loopline_field=key).first()
    before = _snapshot(row) if row else None
    row = row or FieldMapping(connector=connector, loopline_field=key)
    for column, value in names.items():
        setattr(row, column, value)
    row.behaviour = behaviour
    row.fixed = False
    validate_row(row)
    row.save()
    audit.record("connector.mapping.save", actor=access.user, bu=access.bu, obj=row, before=before,
                 after=_snapshot(row), summary=key)
    return row


@transaction.atomic
def remove_mapping(access: Access, connector: Connector, row: FieldMapping) -> None:
    _require_admin(access, connector)
    if row.connector_id != connector.pk:
        raise PermissionDenied("Not this connector's mapping")
    if not row.loopline_field.startswith("custom."):
        raise ValidationError("Standard and fixed fields stay mapped; change their behaviour instead.")
    audit.record("connector.mapping.remove", actor=access.user, bu=access.bu, obj=row, before=_snapshot(row),
                 summary=row.loopline_field)
    row.delete()


@transaction.atomic
# --- Reading the mapping for the screen -----------------------------------------------------------------------------


@dataclass
class MappingRowView:
    row: FieldMapping
    label: str
    cells: list[dict] = field(default_factory=list)  # per object: {"object", "name", "missing", "problem"}
    direction: str = ""
    warnings: list[str] = field(default_factory=list)
    custom: bool = False
    behaviour_choices: list[tuple[str, str]] = field(default_factory=list)


def _labels(bu) -> dict[str, str]:
    from loopline.prospects.fields import field_specs

    return {spec.name: spec.label for spec in field_specs(bu.pk)}


def mapping_table(connector: Connector) -> list[MappingRowView]:
    labels = {**_labels(connector.bu), **FIXED_LABELS, "opted_out": "Opted out", "do_not_call": "Do not call"}
    described = {obj: describe_fields(connector, obj) for obj, _ in OBJECTS}
    rows = []
    for row in FieldMapping.objects.filter(connector=connector).order_by("fixed", "id"):
        view = MappingRowView(row=row, label=labels.get(row.loopline_field, row.loopline_field),
                              custom=row.loopline_field.startswith("custom."))
        try:
            engine = validate_row(row)
        except ValidationError as exc:
            engine = None
            view.warnings.append(exc.messages[0])
        if engine is not None and engine.fixed:
            view.direction = ("Loopline → CRM" if engine.direction is Direction.TO_CRM else "CRM → Loopline")
        missing = []
        for object_type, column in OBJECTS:
            name = getattr(row, column)
            cell = {"object": object_type, "name": name, "missing": False}
            fields = described[object_type]
            # Parent paths (Account.Name) are read through the relationship; only plain names are checked.
            if name and "." not in name and fields is not None and name.lower() not in {k.lower() for k in fields}:
                cell["missing"] = True
                missing.append(f"{OBJECT_LABELS[object_type]} {name}")
            view.cells.append(cell)
        if missing:
            view.warnings.append(f"Not in the CRM's field list: {', '.join(missing)}. Create the field in the CRM "
                                 "or map another one; until then this value does not sync there.")
        allowed = [(v, label) for v, label in FieldMapping.Behaviour.choices
                   if v != FieldMapping.Behaviour.MOST_RECENT_FIELD or row.loopline_field == "opted_out"]
        view.behaviour_choices = allowed
        rows.append(view)
    return rows


def crm_field_choices(connector: Connector, object_type: str) -> list[dict]:
    """Fields a custom prospect field can be mapped to on ``object_type``: existing, updateable, a value type."""
    fields = describe_fields(connector, object_type) or {}
    result = []
    for name, info in sorted(fields.items(), key=lambda kv: (not kv[0].endswith("__c"), kv[0].lower())):
        if not info.get("updateable") or info.get("calculated") or info.get("type") in UNMAPPABLE_TYPES:
            continue
        result.append({"name": name, "label": info.get("label") or name, "type": info.get("type") or "string",
                       "length": info.get("length") or 0})
    return result
