"""The prospect field catalogue and value cleaning, shared by the UI, the API, import and the connector."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from .models import CustomField, Prospect

TRUE_WORDS = {"1", "true", "yes", "y", "on", "t", "x"}
FALSE_WORDS = {"0", "false", "no", "n", "off", "f", ""}


@dataclass(frozen=True)
class FieldSpec:
    name: str  # attribute name, or "custom.<api_name>" for custom fields
    label: str
    type: str  # text | email | url | longtext | number | decimal | date | checkbox | dropdown | multiselect
    max_length: int | None = None
    required: bool = False
    options: tuple[str, ...] = ()
    min_value: Decimal | None = None
    max_value: Decimal | None = None
    pattern: str = ""
    custom: bool = False
    aliases: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        return self.name.removeprefix("custom.")


def _standard_specs() -> list[FieldSpec]:
    specs: list[FieldSpec] = []
    labels = {
        "email": ("Email", "email", ("email address", "e-mail")),
        "salutation": ("Salutation", "text", ()),
        "first_name": ("First name", "text", ("firstname", "first")),
        "last_name": ("Last name", "text", ("lastname", "last", "surname")),
        "company": ("Company", "text", ("company name", "organization", "organisation")),
        "website": ("Website", "text", ("url", "web site")),
        "job_title": ("Job title", "text", ("title",)),
        "department": ("Department", "text", ()),
        "address_one": ("Address one", "text", ("address", "street", "address 1", "address line 1")),
        "address_two": ("Address two", "text", ("address 2", "address line 2")),
        "city": ("City", "text", ()),
        "state": ("State", "text", ("province", "region")),
        "zip": ("Zip", "text", ("postal code", "postcode", "zip code")),
        "country": ("Country", "text", ()),
        "phone": ("Phone", "text", ("phone number", "telephone")),
        "fax": ("Fax", "text", ()),
        "industry": ("Industry", "text", ()),
        "annual_revenue": ("Annual revenue", "decimal", ("revenue",)),
        "employees": ("Employees", "number", ("number of employees", "company size")),
        "source": ("Source", "text", ("lead source",)),
        "comments": ("Comments", "longtext", ("notes", "description")),
        "opted_out": ("Opted out", "checkbox", ("opt out", "unsubscribed")),
        "do_not_email": ("Do not email", "checkbox", ()),
        "do_not_call": ("Do not call", "checkbox", ()),
        "starred": ("Starred", "checkbox", ()),
        "reviewed": ("Reviewed", "checkbox", ()),
    }
    for name, (label, kind, aliases) in labels.items():
        model_field = Prospect._meta.get_field(name)
        specs.append(
            FieldSpec(name=name, label=label, type=kind, max_length=getattr(model_field, "max_length", None),
                      aliases=aliases)
        )
    return specs


STANDARD_SPECS: tuple[FieldSpec, ...] = tuple(_standard_specs())
STANDARD_BY_NAME = {spec.name: spec for spec in STANDARD_SPECS}


def custom_spec(cf: CustomField) -> FieldSpec:
    return FieldSpec(
        name=f"custom.{cf.api_name}",
        label=cf.name,
        type=cf.type,
        max_length=cf.max_length or (255 if cf.type == CustomField.Type.TEXT else None),
        required=cf.required,
        options=tuple(str(o) for o in cf.options or ()),
        min_value=cf.min_value,
        max_value=cf.max_value,
        pattern=cf.pattern,
        custom=True,
    )


def field_specs(bu_id: int) -> list[FieldSpec]:
    return [*STANDARD_SPECS, *(custom_spec(cf) for cf in CustomField.objects.filter(bu_id=bu_id).order_by("name"))]


def clean_value(spec: FieldSpec, raw):
    """Turn user input (str, bool, number, list) into the stored value, or raise ValidationError with a clear message."""
    if raw is None:
        raw = ""
    kind = spec.type
    if kind == "checkbox":
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValidationError(f"{spec.label}: '{_short(raw)}' is not yes/no")
    if kind == "multiselect":
        items = raw if isinstance(raw, list | tuple) else list(re.split(r"[;,]", str(raw)))
        values = [str(v).strip() for v in items if str(v).strip()]
        bad = [v for v in values if spec.options and v not in spec.options]
        if bad:
            raise ValidationError(f"{spec.label}: {', '.join(map(repr, bad))} not among the choices")
        if spec.required and not values:
            raise ValidationError(f"{spec.label} is required")
        return values
    text = str(raw).strip()
    if text == "":
        if spec.required:
            raise ValidationError(f"{spec.label} is required")
        return None if kind in {"number", "decimal", "date"} else ("" if not spec.custom else None)
    if kind == "email":
        text = text.lower()
        try:
            validate_email(text)
        except ValidationError:
            raise ValidationError(f"{spec.label}: '{_short(text)}' is not a valid email address") from None
    if kind in {"number", "decimal"}:
        try:
            number = Decimal(text.replace(",", "")) if kind == "decimal" or spec.custom else Decimal(text)
        except InvalidOperation:
            raise ValidationError(f"{spec.label}: '{_short(text)}' is not a number") from None
        if not number.is_finite():
            raise ValidationError(f"{spec.label}: '{_short(text)}' is not a number")
        if spec.min_value is not None and number < spec.min_value:
            raise ValidationError(f"{spec.label}: must be at least {spec.min_value}")
        if spec.max_value is not None and number > spec.max_value:
            raise ValidationError(f"{spec.label}: must be at most {spec.max_value}")
        if kind == "number" and not spec.custom:
            if number != number.to_integral_value() or number < 0 or number > 2_147_483_647:
                raise ValidationError(f"{spec.label}: '{_short(text)}' must be a whole number ≥ 0")
            return int(number)
        if kind == "decimal" and abs(number) >= Decimal("1e16"):
            raise ValidationError(f"{spec.label}: '{_short(text)}' is too large")
        if spec.custom:
            return float(number) if number != number.to_integral_value() else int(number)
        return number.quantize(Decimal("0.01"))
    if kind == "date":
        try:
            return dt.date.fromisoformat(text).isoformat() if spec.custom else dt.date.fromisoformat(text)
        except ValueError:
            raise ValidationError(f"{spec.label}: '{_short(text)}' is not a date (use YYYY-MM-DD)") from None
    if kind == "dropdown" and spec.options and text not in spec.options:
        raise ValidationError(f"{spec.label}: '{_short(text)}' is not among the choices")
    if spec.max_length and len(text) > spec.max_length:
        raise ValidationError(f"{spec.label}: {len(text)} characters, at most {spec.max_length} allowed")
    if spec.pattern and not re.fullmatch(spec.pattern, text):
        raise ValidationError(f"{spec.label}: '{_short(text)}' does not have the required format")
    if "\x00" in text:
        raise ValidationError(f"{spec.label}: contains a NUL character")
    return text


def _short(value, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
