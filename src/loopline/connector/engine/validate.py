"""Check outgoing values against the CRM's describe metadata before sending ([R20]).

:func:`validate_payload` returns a cleaned payload (values coerced to the field type, picklist values in their
canonical spelling, numbers rounded to the field's scale as Salesforce would) or problems carrying Salesforce's own
error codes, so a record the CRM would reject goes to the sync error queue with a clear reason instead of being sent
blind.

Fill-ins (decision): on *create*, a required field Loopline has no value for gets :data:`~.model.NOT_PROVIDED`
(``"[not provided]"``) when it is in :data:`DEFAULT_FILL_INS` — ``Lead.Company`` and ``LastName`` on Lead/Contact/
person Account, as Pardot does. The engine treats that value as blank when comparing, so it never flows back into
the prospect. Any other missing required field is a ``REQUIRED_FIELD_MISSING`` problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from .model import NOT_PROVIDED, CrmObject, coerce_decimal, format_datetime, parse_datetime, sobject_name

# Salesforce field types grouped by how values are checked.
STRING_TYPES = frozenset(
    {
        "string",
        "textarea",
        "phone",
        "url",
        "picklist",
        "multipicklist",
        "combobox",
        "encryptedstring",
        "id",
        "reference",
    }
)
NUMBER_TYPES = frozenset({"double", "currency", "percent"})

_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)

#: Fields the describe marks required that a given object type does not need (a person account has no ``Name``:
#: Salesforce builds it from First/LastName).
NOT_REQUIRED: Mapping[str, frozenset[str]] = {CrmObject.PERSON_ACCOUNT.value: frozenset({"Name"})}

DEFAULT_FILL_INS: Mapping[str, Mapping[str, str]] = {
    CrmObject.LEAD.value: {"Company": NOT_PROVIDED, "LastName": NOT_PROVIDED},
    CrmObject.CONTACT.value: {"LastName": NOT_PROVIDED},
    CrmObject.PERSON_ACCOUNT.value: {"LastName": NOT_PROVIDED},
}


class Operation(StrEnum):
    CREATE = "create"
    UPDATE = "update"


@dataclass(frozen=True)
class FieldDescribe:
    """The parts of a Salesforce field describe the checks need. ``picklist_values`` holds the *active* values."""

    name: str
    type: str = "string"
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    defaulted_on_create: bool = False
    picklist_values: tuple[str, ...] = ()
    restricted_picklist: bool = False
    precision: int = 0
    scale: int = 0
    calculated: bool = False
    external_id: bool = False

    @property
    def required_on_create(self) -> bool:
        """Salesforce: ``createable and not nillable and not defaultedOnCreate`` (booleans are never required)."""
        return (
            self.createable and not self.nillable and not self.defaulted_on_create and self.type != "boolean"
        )

    @classmethod
    def from_describe(cls, data: Mapping[str, Any]) -> FieldDescribe:
        picklist = tuple(
            str(v.get("value"))
            for v in data.get("picklistValues") or ()
            if v.get("active", True) and v.get("value")
        )
        return cls(
            name=str(data["name"]),
            type=str(data.get("type") or "string"),
            length=int(data.get("length") or 0),
            nillable=bool(data.get("nillable", True)),
            createable=bool(data.get("createable", True)),
            updateable=bool(data.get("updateable", True)),
            defaulted_on_create=bool(data.get("defaultedOnCreate", False)),
            picklist_values=picklist,
            restricted_picklist=bool(data.get("restrictedPicklist", False)),
            precision=int(data.get("precision") or 0),
            scale=int(data.get("scale") or 0),
            calculated=bool(data.get("calculated", False)),
            external_id=bool(data.get("externalId", False)),
        )


@dataclass(frozen=True)
class ObjectDescribe:
    name: str
    fields: Mapping[str, FieldDescribe]

    @classmethod
    def from_describe(cls, data: Mapping[str, Any], *, object_type: str | None = None) -> ObjectDescribe:
        """From ``GET sobjects/{Type}/describe`` JSON. Field names are looked up case-insensitively."""
        fields = {str(f["name"]): FieldDescribe.from_describe(f) for f in data.get("fields") or ()}
        return cls(object_type or str(data.get("name", "")), fields)

    def get(self, name: str) -> FieldDescribe | None:
        found = self.fields.get(name)
        if found is not None:
            return found
        lower = name.lower()
        return next((f for n, f in self.fields.items() if n.lower() == lower), None)

    def required_on_create(self) -> list[str]:
        return [f.name for f in self.fields.values() if f.required_on_create]


@dataclass(frozen=True)
class ValidationProblem:
    """``code`` is the Salesforce ``statusCode`` the CRM would answer with."""

    field: str
    code: str
    message: str


@dataclass(frozen=True)
class ValidationResult:
    payload: dict[str, Any]
    problems: tuple[ValidationProblem, ...] = ()
    filled: dict[str, Any] = field(default_factory=dict)  # fill-ins that were added ([R20])

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return "; ".join(f"{p.code} {p.field}: {p.message}" for p in self.problems) or "ok"


def validate_payload(
    object_type: str,
    payload: Mapping[str, Any],
    describe: ObjectDescribe,
    operation: Operation | str = Operation.UPDATE,
    *,
    fill_ins: Mapping[str, Mapping[str, Any]] | None = None,
) -> ValidationResult:
    """Check and coerce ``payload`` (CRM field → value) for ``operation`` on ``object_type`` ([R20])."""
    operation = Operation(operation)
    fill_ins = DEFAULT_FILL_INS if fill_ins is None else fill_ins
    entity = sobject_name(object_type)
    clean: dict[str, Any] = {}
    problems: list[ValidationProblem] = []
    filled: dict[str, Any] = {}
    for name, value in payload.items():
        meta = describe.get(name)
        if meta is None:
            problems.append(
                ValidationProblem(name, "INVALID_FIELD", f"No such column '{name}' on entity '{entity}'")
            )
            continue
        allowed = meta.createable if operation is Operation.CREATE else meta.updateable
        if not allowed or meta.calculated:
            verb = "insert" if operation is Operation.CREATE else "update"
            problems.append(
                ValidationProblem(
                    meta.name,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {meta.name}. The field is not writable on {verb}.",
                )
            )
            continue
        coerced, problem = check_value(meta, value)
        if problem is not None:
            problems.append(problem)
            continue
        if coerced is None and not meta.nillable:
            if operation is Operation.CREATE:
                continue  # reported below as missing when required
            problems.append(
                ValidationProblem(
                    meta.name, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{meta.name}]"
                )
            )
            continue
        clean[meta.name] = coerced
    if operation is Operation.CREATE:
        defaults = fill_ins.get(object_type, {})
        skip = NOT_REQUIRED.get(object_type, frozenset())
        for name in describe.required_on_create():
            if name in skip or clean.get(name) not in (None, ""):
                continue
            if name in defaults:
                clean[name] = filled[name] = defaults[name]
            else:
                problems.append(
                    ValidationProblem(
                        name, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]"
                    )
                )
    return ValidationResult(clean, tuple(problems), filled)


def check_value(meta: FieldDescribe, value: Any) -> tuple[Any, ValidationProblem | None]:
    """Coerce one value to ``meta``'s type; returns ``(value, None)`` or ``(None, problem)``."""
    if value is None or (isinstance(value, str) and value.strip() == "" and meta.type != "boolean"):
        return None, None
    kind = meta.type
    name = meta.name

    def bad(code: str, message: str) -> tuple[Any, ValidationProblem]:
        return None, ValidationProblem(name, code, message)

    if kind == "boolean":
        if isinstance(value, bool):
            return value, None
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True, None
        if text in ("false", "0", "no", ""):
            return False, None
        return bad("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type: {value}")
    if kind == "int" or kind in NUMBER_TYPES:
        number = coerce_decimal(value)
        if number is None:
            return bad("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type: {value}")
        scale = 0 if kind == "int" else meta.scale
        if kind == "int" and number != number.to_integral_value():
            return bad("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type: {value}")
        if kind != "int" and meta.precision:
            number = number.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
        digits = (meta.precision - scale) if meta.precision else 0
        if digits and abs(number) >= Decimal(10) ** digits:
            return bad("NUMBER_OUTSIDE_VALID_RANGE", f"{name}: number outside the valid range: {value}")
        if number == number.to_integral_value():
            return int(number), None
        as_float = float(number)
        return (as_float if Decimal(repr(as_float)) == number else str(number)), None
    if kind == "date":
        try:
            if isinstance(value, datetime):
                return value.date().isoformat(), None
            if isinstance(value, date):
                return value.isoformat(), None
            return date.fromisoformat(str(value).strip()[:10]).isoformat(), None
        except ValueError:
            return bad("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type: {value}")
    if kind == "datetime":
        try:
            parsed = parse_datetime(value)
        except (ValueError, TypeError):
            parsed = None
        if parsed is None:
            return bad("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type: {value}")
        return format_datetime(parsed), None
    text = value if isinstance(value, str) else str(value)
    text = text.strip()
    if kind == "email":
        text = text.lower()
        if not _EMAIL.match(text):
            return bad("INVALID_EMAIL_ADDRESS", f"{name}: invalid email address: {value}")
    if kind in ("picklist", "multipicklist") and meta.picklist_values:
        canonical = {v.lower(): v for v in meta.picklist_values}
        parts = [p.strip() for p in text.split(";")] if kind == "multipicklist" else [text]
        fixed: list[str] = []
        for part in parts:
            match = canonical.get(part.lower())
            if match is None:
                if meta.restricted_picklist:
                    return bad(
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        f"{meta.name}: bad value for restricted picklist field: {part}",
                    )
                match = part
            fixed.append(match)
        text = ";".join(fixed)
    if meta.length and len(text) > meta.length:
        return bad(
            "STRING_TOO_LONG", f"{name}: data value too large: {text[:40]}… (max length={meta.length})"
        )
    return text, None
