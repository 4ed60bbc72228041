"""The criteria language ([M17]): one rule tree shared by dynamic lists, segmentation rules, automation rules and
program rules.

A tree is plain JSON::

    {"match": "all", "rules": [
        {"field": "industry", "op": "equals", "value": "Software"},
        {"field": "score", "op": "gte", "value": 50},
        {"match": "any", "rules": [
            {"field": "activity", "op": "has", "value": {"type": 4, "asset_id": 12, "days": 30}},
            {"field": "tag", "op": "has", "value": "webinar"}]},
        {"field": "opportunity", "op": "has_not", "value": {"outcome": "won"}}]}

Two evaluators with the same semantics:

* :func:`matching_prospects` compiles the tree to ONE SQL query (PostgreSQL and SQLite), BU-scoped, recycle bin
  excluded — used by full refreshes and retroactive rule runs.
* :func:`evaluate` decides for one prospect in memory (related rows — tags, list memberships, activities,
  opportunities — are read with small indexed queries, or all at once with the prospect row through
  :func:`with_facts` / :class:`FactReader`) — used on every prospect change.

Semantics worth knowing (they hold in both evaluators; a hypothesis test checks they agree):

* Text comparisons ignore case. On SQLite (and PostgreSQL databases with a C locale) only ASCII letters fold.
* A missing value (empty number, missing custom field, never active) never *equals*, *contains* or *compares*; the
  negative operators (``not_equals``, ``not_contains``, ``not_in``, ``not_within_days``...) are exactly the negation
  of their positive twin, so they do match missing values.
* Custom fields are read with their declared type; a stored value of another JSON type counts as missing.
* Activity conditions ignore machine events ([M7]).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, models
from django.db.models import Exists, F, Func, OuterRef, Q, QuerySet
from django.db.models.functions import Lower
from django.utils import timezone

from loopline.prospects.models import Activity, ActivityType, CustomField, Prospect, ProspectTag, Tag

GRADES = ("A+", "A", "A-", "B+", "B", "B-", "C+", "C", "C-", "D+", "D", "D-", "F")  # best first
MAX_DEPTH = 4
MAX_RULES = 50

# --- Field catalogue -------------------------------------------------------------------------------------------------

OPS: dict[str, tuple[tuple[str, str], ...]] = {
    "text": (("equals", "is"), ("not_equals", "is not"), ("contains", "contains"),
             ("not_contains", "does not contain"), ("starts_with", "starts with"), ("in", "is one of"),
             ("not_in", "is none of"), ("is_empty", "is empty"), ("is_not_empty", "is not empty")),
    "number": (("equals", "is"), ("not_equals", "is not"), ("gt", "is greater than"), ("gte", "is at least"),
               ("lt", "is less than"), ("lte", "is at most"), ("is_empty", "is empty"),
               ("is_not_empty", "is not empty")),
    "checkbox": (("is_true", "is yes"), ("is_false", "is no")),
    "date": (("equals", "is on"), ("before", "is before"), ("after", "is after"), ("is_empty", "is empty"),
             ("is_not_empty", "is not empty")),
    "datetime": (("within_days", "in the last … days"), ("not_within_days", "not in the last … days"),
                 ("is_empty", "never"), ("is_not_empty", "ever")),
    "multiselect": (("includes", "includes any of"), ("excludes", "includes none of"), ("is_empty", "is empty"),
                    ("is_not_empty", "is not empty")),
    "grade": (("equals", "is"), ("not_equals", "is not"), ("at_least", "is at least"), ("below", "is below")),
    "tag": (("has", "has tag"), ("has_not", "does not have tag")),
    "list": (("member", "is on list"), ("not_member", "is not on list")),
    "user": (("is", "is"), ("is_not", "is not"), ("is_empty", "is nobody"), ("is_not_empty", "is somebody")),
    "campaign": (("is", "is"), ("is_not", "is not"), ("is_empty", "is none"), ("is_not_empty", "is set")),
    "presence": (("is_not_empty", "exists"), ("is_empty", "does not exist")),
    "activity": (("has", "has"), ("has_not", "has not")),
    "opportunity": (("has", "has an opportunity"), ("has_not", "has no opportunity")),
}
NO_VALUE_OPS = {"is_empty", "is_not_empty", "is_true", "is_false"}

# Standard prospect columns the builder offers, by kind (labels come from the prospects field catalogue).
_STANDARD_KIND = {"employees": "number", "annual_revenue": "number", "opted_out": "checkbox",
                  "do_not_email": "checkbox", "do_not_call": "checkbox", "starred": "checkbox",
                  "reviewed": "checkbox"}
_EXTRA_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    # key, label, kind, group
    ("score", "Score", "number", "Score and grade"),
    ("grade", "Grade", "grade", "Score and grade"),
    ("tag", "Tag", "tag", "Tags and lists"),
    ("list", "List", "list", "Tags and lists"),
    ("activity", "Activity", "activity", "Activities"),
    ("opportunity", "Opportunity", "opportunity", "Assignment and CRM"),
    ("last_activity_at", "Last activity", "datetime", "Activities"),
    ("created_at", "Created", "datetime", "Prospect"),
    ("assigned_user", "Assigned user", "user", "Assignment and CRM"),
    ("source_campaign", "Source campaign", "campaign", "Assignment and CRM"),
    ("crm_id", "CRM record", "presence", "Assignment and CRM"),
    ("crm_owner_id", "CRM owner id", "text", "Assignment and CRM"),
    ("email_undeliverable", "Email undeliverable", "checkbox", "Prospect"),
)


@dataclass(frozen=True)
class FieldDef:
    key: str
    label: str
    kind: str
    group: str
    custom: bool = False
    options: tuple[str, ...] = ()

    @property
    def ops(self) -> tuple[tuple[str, str], ...]:
        return OPS[self.kind]


def _custom_kind(cf_type: str) -> str:
    return {"number": "number", "checkbox": "checkbox", "date": "date", "multiselect": "multiselect"}.get(cf_type, "text")


def field_catalogue(bu) -> dict[str, FieldDef]:
    """Every field a condition can use in this BU, keyed by the tree's ``field`` value."""
    from loopline.prospects.fields import STANDARD_SPECS

    out: dict[str, FieldDef] = {}
    for spec in STANDARD_SPECS:
        out[spec.name] = FieldDef(spec.name, spec.label, _STANDARD_KIND.get(spec.name, "text"), "Prospect")
    for key, label, kind, group in _EXTRA_FIELDS:
        out[key] = FieldDef(key, label, kind, group)
    for cf in CustomField.objects.filter(bu_id=bu.pk).order_by("name"):
        key = f"custom.{cf.api_name}"
        out[key] = FieldDef(key, cf.name, _custom_kind(cf.type), "Custom fields", custom=True,
                            options=tuple(str(o) for o in cf.options or ()))
    return out


# --- Validation ------------------------------------------------------------------------------------------------------


def _number(value: Any, label: str) -> Decimal:
    if isinstance(value, bool):
        raise ValidationError(f"{label}: '{value}' is not a number")
    try:
        number = Decimal(str(value).strip().replace(",", ""))
    except (InvalidOperation, ValueError):
        raise ValidationError(f"{label}: '{str(value)[:40]}' is not a number") from None
    if not number.is_finite() or abs(number) >= Decimal("1e15"):
        raise ValidationError(f"{label}: '{str(value)[:40]}' is not a usable number")
    return number


def _int(value: Any, label: str, low: int, high: int) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise ValidationError(f"{label}: '{str(value)[:40]}' is not a whole number") from None
    if not low <= number <= high:
        raise ValidationError(f"{label}: must be between {low} and {high}")
    return number


def _strings(value: Any, label: str) -> list[str]:
    items = value if isinstance(value, list | tuple) else str(value or "").split(",")
    out = [str(v).strip() for v in items if str(v).strip()]
    if not out:
        raise ValidationError(f"{label}: give at least one value")
    if len(out) > 200 or any(len(v) > 255 for v in out):
        raise ValidationError(f"{label}: too many or too long values")
    return out


def _clean_activity(value: Any, label: str) -> dict:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{label}: describe the activity (type, optionally asset, days, count)")
    out: dict[str, Any] = {}
    kind = _int(value.get("type"), f"{label} type", 1, 10_000)
    if kind not in ActivityType.values:
        raise ValidationError(f"{label}: unknown activity type {kind}")
    out["type"] = kind
    if value.get("asset_type") not in (None, ""):
        asset_type = str(value["asset_type"]).strip()
        if not re.fullmatch(r"[a-z_]{1,40}", asset_type):
            raise ValidationError(f"{label}: unknown asset type")
        out["asset_type"] = asset_type
    if value.get("asset_id") not in (None, ""):
        out["asset_id"] = _int(value["asset_id"], f"{label} asset", 1, 2**62)
    if value.get("url_contains") not in (None, ""):
        text = str(value["url_contains"]).strip()
        if len(text) > 200:
            raise ValidationError(f"{label}: the page address part is too long")
        out["url_contains"] = text
    if value.get("days") not in (None, ""):
        out["days"] = _int(value["days"], f"{label} days", 1, 3650)
    if value.get("min_count") not in (None, "", 1, "1"):
        out["min_count"] = _int(value["min_count"], f"{label} count", 1, 10_000)
    return out


OUTCOMES = {"": "any outcome", "open": "open", "won": "won", "lost": "lost"}


def _clean_opportunity(value: Any, label: str) -> dict:
    """{"stage", "outcome", "min_amount", "days"}, all optional: an empty spec means any opportunity at all."""
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(f"{label}: describe the opportunity (stage, outcome, amount, days)")
    out: dict[str, Any] = {}
    stage = str(value.get("stage") or "").strip()
    if len(stage) > 80:
        raise ValidationError(f"{label}: the stage name is too long")
    if stage:
        out["stage"] = stage
    outcome = str(value.get("outcome") or "").strip().lower()
    if outcome not in OUTCOMES:
        raise ValidationError(f"{label}: the outcome is open, won or lost")
    if outcome:
        out["outcome"] = outcome
    if value.get("min_amount") not in (None, ""):
        number = _number(value["min_amount"], f"{label} amount")
        out["min_amount"] = int(number) if number == number.to_integral_value() else str(number)
    if value.get("days") not in (None, ""):
        out["days"] = _int(value["days"], f"{label} days", 1, 3650)
    return out


def _clean_rule(bu, rule: Mapping, catalogue: dict[str, FieldDef], where: str) -> dict:
    key = str(rule.get("field", ""))
    fdef = catalogue.get(key)
    if fdef is None:
        if key.startswith("custom."):
            raise ValidationError(f"{where}: the custom field '{key[7:][:60]}' no longer exists")
        raise ValidationError(f"{where}: choose a field")
    op = str(rule.get("op", ""))
    if op not in dict(fdef.ops):
        raise ValidationError(f"{where} ({fdef.label}): choose a comparison")
    label = f"{where} ({fdef.label})"
    value = rule.get("value")
    out: dict[str, Any] = {"field": key, "op": op}
    if op in NO_VALUE_OPS:
        return out
    kind = fdef.kind
    if kind == "text":
        if op in ("in", "not_in"):
            out["value"] = _strings(value, label)
        else:
            text = str(value if value is not None else "").strip()
            if not text:
                raise ValidationError(f"{label}: enter a value")
            if len(text) > 255:
                raise ValidationError(f"{label}: the value is too long")
            out["value"] = text
    elif kind == "number":
        number = _number(value, label)
        out["value"] = int(number) if number == number.to_integral_value() else str(number)
    elif kind == "date":
        try:
            out["value"] = dt.date.fromisoformat(str(value).strip()).isoformat()
        except ValueError:
            raise ValidationError(f"{label}: use a date like 2026-01-31") from None
    elif kind == "datetime":
        out["value"] = _int(value, label, 1, 3650)
    elif kind == "multiselect":
        out["value"] = _strings(value, label)
    elif kind == "grade":
        grade = str(value or "").strip().upper()
        if grade not in GRADES:
            raise ValidationError(f"{label}: choose a grade")
        out["value"] = grade
    elif kind == "tag":
        text = str(value or "").strip()
        if not text or len(text) > 80:
            raise ValidationError(f"{label}: enter a tag")
        out["value"] = text
    elif kind == "list":
        from .models import ProspectList

        list_id = _int(value, label, 1, 2**62)
        if not ProspectList.objects.filter(bu_id=bu.pk, pk=list_id).exists():
            raise ValidationError(f"{label}: the list no longer exists")
        out["value"] = list_id
    elif kind == "user":
        from loopline.accounts.models import Membership

        user_id = _int(value, label, 1, 2**62)
        if not Membership.objects.filter(bu_id=bu.pk, user_id=user_id).exists():
            raise ValidationError(f"{label}: not a user of this business unit")
        out["value"] = user_id
    elif kind == "campaign":
        from loopline.campaigns.models import Campaign

        campaign_id = _int(value, label, 1, 2**62)
        if not Campaign.objects.filter(bu_id=bu.pk, pk=campaign_id).exists():
            raise ValidationError(f"{label}: the campaign no longer exists")
        out["value"] = campaign_id
    elif kind == "activity":
        out["value"] = _clean_activity(value, label)
    elif kind == "opportunity":
        out["value"] = _clean_opportunity(value, label)
    return out


def validate(bu, tree: Any, *, catalogue: dict[str, FieldDef] | None = None) -> dict:
    """A cleaned copy of ``tree`` or ``ValidationError`` with a message a person can act on."""
    if not isinstance(tree, Mapping):
        raise ValidationError("Criteria must be a group of conditions")
    catalogue = catalogue if catalogue is not None else field_catalogue(bu)
    counter = [0]

    def clean_group(group: Mapping, depth: int, where: str) -> dict:
        if depth > MAX_DEPTH:
            raise ValidationError(f"Groups can be nested at most {MAX_DEPTH} deep")
        match = group.get("match", "all")
        if match not in ("all", "any"):
            raise ValidationError(f"{where}: match must be 'all' or 'any'")
        rules = group.get("rules", [])
        if not isinstance(rules, list):
            raise ValidationError(f"{where}: rules must be a list")
        cleaned = []
        for item in rules:
            if not isinstance(item, Mapping):
                raise ValidationError(f"{where}: every condition must be an object")
            if "rules" in item:
                cleaned.append(clean_group(item, depth + 1, "a nested group"))
            else:
                counter[0] += 1
                if counter[0] > MAX_RULES:
                    raise ValidationError(f"At most {MAX_RULES} conditions")
                cleaned.append(_clean_rule(bu, item, catalogue, f"Condition {counter[0]}"))
        return {"match": match, "rules": cleaned}

    cleaned = clean_group(tree, 1, "The criteria")
    if counter[0] == 0:
        raise ValidationError("Add at least one condition")
    return cleaned


def referenced_lists(tree: Mapping) -> set[int]:
    """Ids of the lists a tree's conditions refer to (to order incremental updates and refuse cycles)."""
    found: set[int] = set()
    for rule in iter_rules(tree):
        if rule.get("field") == "list" and isinstance(rule.get("value"), int):
            found.add(rule["value"])
    return found


def iter_rules(tree: Mapping) -> Iterable[Mapping]:
    for item in tree.get("rules", []) if isinstance(tree, Mapping) else []:
        if isinstance(item, Mapping) and "rules" in item:
            yield from iter_rules(item)
        elif isinstance(item, Mapping):
            yield item


# --- Shared helpers --------------------------------------------------------------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@cache
def _db_folds_unicode(alias: str) -> bool:
    """Whether the database's LOWER() folds non-ASCII letters (PostgreSQL with a UTF-8 locale) or not (SQLite, C)."""
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT LOWER(%s)", ["ÉÀ"])
        row = cursor.fetchone()
    return bool(row) and row[0] == "éà"


def fold(text: str) -> str:
    """Lower-case exactly like the database's LOWER()."""
    return text.lower() if _db_folds_unicode(connection.alias) else text.translate(_ASCII_LOWER)


def _is_pg() -> bool:
    return connection.vendor == "postgresql"


def _num(value: Any) -> Any:
    """A number the way the database compares it: exact decimals on PostgreSQL, doubles on SQLite."""
    return Decimal(str(value)) if _is_pg() else float(value)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _grade_set(op: str, grade: str) -> set[str]:
    rank = GRADES.index(grade)
    if op == "at_least":
        return set(GRADES[: rank + 1])
    if op == "below":
        return set(GRADES[rank + 1:])
    return {grade}


def _cutoff(days: int, now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(days=int(days))


# --- SQL compilation -------------------------------------------------------------------------------------------------


class _CustomCondition(Func):
    """A complete, never-NULL boolean condition on one key of ``Prospect.custom`` (vendor-specific SQL).

    The column goes through the compiler so table aliases stay right inside subqueries (full refresh)."""

    output_field = models.BooleanField()
    conditional = True

    def __init__(self, key: str, kind: str, op: str, value: Any):
        super().__init__(F("custom"))
        self.key, self.kind, self.op, self.value = key, kind, op, value

    def as_sql(self, compiler, connection, **extra):  # type: ignore[override]
        column, column_params = compiler.compile(self.source_expressions[0])
        if column_params:  # a plain column never has parameters; refuse rather than misplace them
            raise ValueError("unexpected parameters for the custom column")
        pg = connection.vendor == "postgresql"
        key = self.key
        if pg:
            typeof, kp = f"jsonb_typeof({column} -> %s)", [key]
            text_value, tp = f"({column} ->> %s)", [key]
            as_text = (f"(CASE WHEN {typeof} = 'string' THEN {text_value} END)", kp + tp)
            as_number = (f"(CASE WHEN {typeof} = 'number' THEN {text_value}::numeric END)", kp + tp)
            is_true = (f"(CASE WHEN {typeof} = 'boolean' THEN {text_value}::boolean ELSE FALSE END)", kp + tp)
        else:
            path = '$."' + key + '"'
            typeof, kp = f"json_type({column}, %s)", [path]
            extract, ep = f"json_extract({column}, %s)", [path]
            as_text = (f"(CASE WHEN {typeof} = 'text' THEN {extract} END)", kp + ep)
            as_number = (f"(CASE WHEN {typeof} IN ('integer', 'real') THEN {extract} END)", kp + ep)
            is_true = (f"COALESCE({typeof} = 'true', FALSE)", kp)
        op, value, kind = self.op, self.value, self.kind
        if kind == "checkbox":
            sql, params = is_true
            return (sql, params) if op == "is_true" else (f"NOT {sql}", params)
        if kind == "multiselect":
            if op in ("includes", "excludes"):
                values = list(value)
                if pg:
                    sql = f"(CASE WHEN {typeof} = 'array' THEN ({column} -> %s) ?| %s::text[] ELSE FALSE END)"
                    params = [*kp, key, values]
                else:
                    marks = ", ".join(["%s"] * len(values))
                    sql = (f"(CASE WHEN {typeof} = 'array' THEN EXISTS(SELECT 1 FROM json_each({column}, %s) AS j "
                           f"WHERE j.type = 'text' AND j.value IN ({marks})) ELSE FALSE END)")
                    params = [*kp, path, *values]
                return (sql, params) if op == "includes" else (f"NOT {sql}", params)
            if pg:
                sql = f"(CASE WHEN {typeof} = 'array' THEN jsonb_array_length({column} -> %s) > 0 ELSE FALSE END)"
                params = [*kp, key]
            else:
                sql = f"(CASE WHEN {typeof} = 'array' THEN json_array_length({column}, %s) > 0 ELSE FALSE END)"
                params = [*kp, path]
            return (sql, params) if op == "is_not_empty" else (f"NOT {sql}", params)
        if kind == "number":
            expr, params = as_number
            if op == "is_empty":
                return f"({expr} IS NULL)", params
            if op == "is_not_empty":
                return f"({expr} IS NOT NULL)", params
            sym = {"equals": "=", "not_equals": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
            sql = f"COALESCE({expr} {sym} %s, FALSE)"
            params = [*params, _num(value)]
            return (f"NOT {sql}", params) if op == "not_equals" else (sql, params)
        # text, dropdown and ISO dates
        expr, params = as_text
        if op == "is_empty":
            return f"(COALESCE({expr}, '') = '')", params
        if op == "is_not_empty":
            return f"(COALESCE({expr}, '') <> '')", params
        lowered = f"LOWER({expr})"
        negate = op in ("not_equals", "not_contains", "not_in")
        base = {"not_equals": "equals", "not_contains": "contains", "not_in": "in"}.get(op, op)
        if base == "in":
            items = [fold(v) for v in value]
            sql = f"COALESCE({lowered} IN ({', '.join(['%s'] * len(items))}), FALSE)"
            params = params + items
        elif base in ("contains", "starts_with"):
            pattern = _like_escape(fold(value)) + "%"
            if base == "contains":
                pattern = "%" + pattern
            sql = f"COALESCE({lowered} LIKE %s ESCAPE '\\', FALSE)"
            params = [*params, pattern]
        elif base in ("before", "after"):
            sql = f"COALESCE({expr} {'<' if base == 'before' else '>'} %s, FALSE)"
            params = [*params, value]
        else:  # equals
            sql = f"COALESCE({lowered} = %s, FALSE)"
            params = [*params, fold(value)]
        return (f"NOT {sql}", params) if negate else (sql, params)


@dataclass
class _Compiler:
    bu: Any
    catalogue: dict[str, FieldDef]
    now: dt.datetime
    aliases: dict[str, Any] = field(default_factory=dict)

    def alias(self, expr) -> str:
        name = f"_crit{len(self.aliases)}"
        self.aliases[name] = expr
        return name

    def group(self, group: Mapping) -> Q:
        parts = [self.node(item) for item in group.get("rules", [])]
        if group.get("match") == "any":
            if not parts:
                return Q(pk__in=[])
            out = parts[0]
            for part in parts[1:]:
                out |= part
            return out
        out = Q()
        for part in parts:
            out &= part
        return out

    def node(self, item: Mapping) -> Q:
        return self.group(item) if "rules" in item else self.rule(item)

    def rule(self, rule: Mapping) -> Q:
        key, op = rule["field"], rule["op"]
        value: Any = rule.get("value")
        cond: Any
        fdef = self.catalogue.get(key) or FieldDef(key, key, "text", "", custom=key.startswith("custom."))
        kind = fdef.kind
        if fdef.custom:
            return Q(_CustomCondition(key.removeprefix("custom."), kind, op, value))
        if kind == "activity":
            cond = Exists(_activity_query(self.bu, value, self.now).filter(prospect_id=OuterRef("pk")))
            if int(value.get("min_count", 1)) > 1:
                counted = (_activity_query(self.bu, value, self.now).filter(prospect_id=OuterRef("pk"))
                           .order_by().values("prospect_id").annotate(n=models.Count("id"))
                           .filter(n__gte=int(value["min_count"])))
                cond = Exists(counted)
            return Q(cond) if op == "has" else ~Q(cond)
        if kind == "opportunity":
            cond = Exists(_opportunity_query(self.bu, value, self.now).filter(prospect_id=OuterRef("pk")))
            return Q(cond) if op == "has" else ~Q(cond)
        if kind == "tag":
            tag_ids = list(Tag.objects.filter(bu_id=self.bu.pk, name__iexact=value).values_list("pk", flat=True))
            cond = Exists(ProspectTag.objects.filter(prospect_id=OuterRef("pk"), tag_id__in=tag_ids))
            return Q(cond) if op == "has" else ~Q(cond)
        if kind == "list":
            from .models import ListMembership

            cond = Exists(ListMembership.objects.filter(prospect_id=OuterRef("pk"), prospect_list_id=value,
                                                        prospect_list__bu_id=self.bu.pk, opted_out=False))
            return Q(cond) if op == "member" else ~Q(cond)
        if kind == "grade":
            grades = _grade_set("equals" if op == "not_equals" else op, value)
            return ~Q(grade__in=grades) if op == "not_equals" else Q(grade__in=grades)
        if kind in ("user", "campaign"):
            column = "assigned_user_id" if kind == "user" else "source_campaign_id"
            if op == "is":
                return Q(**{column: value})
            if op == "is_not":
                return Q(**{f"{column}__isnull": True}) | ~Q(**{column: value})
            return Q(**{f"{column}__isnull": op == "is_empty"})
        if kind == "presence":  # crm_id: a lead or a contact id
            has = ~Q(crm_lead_id="") | ~Q(crm_contact_id="")
            return has if op == "is_not_empty" else ~has
        if kind == "datetime":
            if op in ("is_empty", "is_not_empty"):
                return Q(**{f"{key}__isnull": op == "is_empty"})
            recent = Q(**{f"{key}__gte": _cutoff(value, self.now)})
            return recent if op == "within_days" else (Q(**{f"{key}__isnull": True}) | ~recent)
        if kind == "checkbox":
            return Q(**{key: op == "is_true"})
        if kind == "number":
            if op in ("is_empty", "is_not_empty"):
                return Q(**{f"{key}__isnull": op == "is_empty"})
            lookup = {"equals": "exact", "not_equals": "exact", "gt": "gt", "gte": "gte", "lt": "lt", "lte": "lte"}[op]
            # A Value keeps 12.5 from being cut to 12 by an integer column's lookup.
            cond = Q(**{f"{key}__{lookup}": models.Value(_num(value))})
            return (Q(**{f"{key}__isnull": True}) | ~cond) if op == "not_equals" else cond
        # standard text columns (NOT NULL, blank = empty)
        if op == "is_empty":
            return Q(**{key: ""})
        if op == "is_not_empty":
            return ~Q(**{key: ""})
        name = self.alias(Lower(key))
        negate = op in ("not_equals", "not_contains", "not_in")
        base = {"not_equals": "equals", "not_contains": "contains", "not_in": "in"}.get(op, op)
        if base == "in":
            cond = Q(**{f"{name}__in": [fold(v) for v in value]})
        elif base == "contains":
            cond = Q(**{f"{name}__contains": fold(value)})
        elif base == "starts_with":
            cond = Q(**{f"{name}__startswith": fold(value)})
        else:
            cond = Q(**{name: fold(value)})
        return ~cond if negate else cond


def _activity_query(bu, spec: Mapping, now: dt.datetime, *, set_based: bool = True) -> QuerySet[Activity]:
    # Set-based: bu_id lets PostgreSQL scan the (bu, type, occurred_at) index once. For one prospect, leave it out so
    # the planner reads that prospect's timeline through the (prospect, occurred_at) index instead.
    qs = Activity.objects.filter(type=spec["type"], is_machine=False)
    if set_based:
        qs = qs.filter(bu_id=bu.pk)
    if spec.get("asset_type"):
        qs = qs.filter(asset_type=spec["asset_type"])
    if spec.get("asset_id"):
        qs = qs.filter(asset_id=spec["asset_id"])
    if spec.get("url_contains"):
        qs = qs.alias(_url_lower=Lower("url")).filter(_url_lower__contains=fold(spec["url_contains"]))
    if spec.get("days"):
        qs = qs.filter(occurred_at__gte=_cutoff(spec["days"], now))
    return qs


def _opportunity_query(bu, spec: Mapping | None, now: dt.datetime):
    """Contact roles of the CRM opportunities that match ``spec`` (read through the campaigns app)."""
    from loopline.campaigns.selectors import opportunity_roles

    spec = spec or {}
    return opportunity_roles(
        bu.pk, stage=spec.get("stage", ""), outcome=spec.get("outcome", ""),
        min_amount=Decimal(str(spec["min_amount"])) if spec.get("min_amount") not in (None, "") else None,
        created_since=_cutoff(spec["days"], now) if spec.get("days") else None)


def compile_q(bu, tree: Mapping, *, now: dt.datetime | None = None,
              catalogue: dict[str, FieldDef] | None = None) -> tuple[dict[str, Any], Q]:
    """(aliases, Q) for ``Prospect.objects.alias(**aliases).filter(q)`` — for callers that add their own filters."""
    compiler = _Compiler(bu, catalogue if catalogue is not None else field_catalogue(bu), now or timezone.now())
    q = compiler.group(tree)
    return compiler.aliases, q


def matching_prospects(bu, tree: Mapping, *, now: dt.datetime | None = None,
                       catalogue: dict[str, FieldDef] | None = None) -> QuerySet[Prospect]:
    """Live prospects of ``bu`` that match ``tree``, as one SQL query."""
    aliases, q = compile_q(bu, tree, now=now, catalogue=catalogue)
    return Prospect.objects.filter(bu_id=bu.pk, is_deleted=False).alias(**aliases).filter(q)


FACT_FIELDS = frozenset({"activity", "tag", "opportunity"})


def fact_key(rule: Mapping) -> str:
    """The identity of a related-rows condition, whatever its operator (has / has not share one fact)."""
    return json.dumps([rule.get("field"), rule.get("value")], sort_keys=True, default=str)


def _fact_condition(bu, rule: Mapping, now: dt.datetime) -> Exists:
    """The positive ("has") condition as a correlated EXISTS — the same SQL the compiled query uses, but reading one
    prospect's rows through the prospect indexes."""
    key, value = rule["field"], rule.get("value")
    if key == "activity":
        spec: Mapping = value or {}
        qs = _activity_query(bu, spec, now, set_based=False).filter(prospect_id=OuterRef("pk"))
        need = int(spec.get("min_count", 1))
        if need > 1:
            return Exists(qs.order_by().values("prospect_id").annotate(n=models.Count("id")).filter(n__gte=need))
        return Exists(qs)
    if key == "tag":
        return Exists(ProspectTag.objects.filter(prospect_id=OuterRef("pk"), tag__bu_id=bu.pk,
                                                 tag__name__iexact=value))
    return Exists(_opportunity_query(bu, value, now).filter(prospect_id=OuterRef("pk")))


def with_facts(bu, queryset: QuerySet[Prospect], trees: Iterable[Mapping], *,
               now: dt.datetime) -> tuple[QuerySet[Prospect], dict[str, str]]:
    """``queryset`` annotated with every related-rows condition the trees use, so that evaluating all of a BU's
    lists and rules for a prospect costs ONE query (the row and its facts), not one per list, rule or condition.
    Returns (queryset, {fact key: annotation name}); pass ``facts_of(prospect, names)`` to :class:`EvalContext`."""
    names: dict[str, str] = {}
    annotations: dict[str, Any] = {}
    for tree in trees:
        for rule in iter_rules(tree):
            if rule.get("field") in FACT_FIELDS and "value" in rule:
                key = fact_key(rule)
                if key not in names:
                    names[key] = f"_fact{len(names)}"
                    annotations[names[key]] = _fact_condition(bu, rule, now)
    return (queryset.annotate(**annotations) if annotations else queryset), names


def facts_of(prospect: Prospect, names: Mapping[str, str]) -> dict[str, bool]:
    return {key: bool(getattr(prospect, name)) for key, name in names.items()}


_MARK_NOW = dt.datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=dt.UTC)  # a "now" no real call uses
_MARK_ID = -7_654_321_987  # a prospect id no row has


class FactReader:
    """Reads live prospects of a BU with the facts of a fixed set of trees (:func:`with_facts`).

    A prospect change reads ONE prospect, again and again with the same lists and rules: for that case the SQL is
    compiled once (with a marker id and a marker time) and re-run with the prospect's id and the cut-off times of
    the current ``now`` — the ORM would otherwise rebuild a query of many subqueries on every change. Several
    prospects at once go through the ORM."""

    def __init__(self, bu, trees: Iterable[Mapping]):
        self.bu = bu
        self.trees = [t for t in trees if isinstance(t, Mapping)]
        self._single: tuple[str, list[Any], dict[str, str], dict[Any, int]] | None = None
        self._single_ok = True

    def _base(self) -> QuerySet[Prospect]:
        return Prospect.objects.filter(bu_id=self.bu.pk, is_deleted=False)

    def _compile_single(self) -> None:
        qs, names = with_facts(self.bu, self._base().filter(pk=_MARK_ID), self.trees, now=_MARK_NOW)
        sql, params = qs.query.sql_with_params()
        adapt = connection.ops.adapt_datetimefield_value
        days = {int(r["value"]["days"]) for r in (r for t in self.trees for r in iter_rules(t))
                if r.get("field") in ("activity", "opportunity") and isinstance(r.get("value"), Mapping)
                and r["value"].get("days")}
        cutoffs = {adapt(_cutoff(d, _MARK_NOW)): d for d in days}
        ids = [p for p in params if isinstance(p, int) and not isinstance(p, bool) and p == _MARK_ID]
        stray = [p for p in params if isinstance(p, dt.datetime | str) and _looks_like_mark(p) and p not in cutoffs]
        if len(ids) != 1 or stray:
            self._single_ok = False  # an SQL shape this template cannot fill safely: use the ORM every time
            return
        self._single = (sql, list(params), names, cutoffs)

    def read(self, ids: Iterable[int], now: dt.datetime) -> tuple[list[Prospect], dict[str, str]]:
        ids = list(ids)
        if len(ids) == 1 and self._single_ok:
            if self._single is None:
                self._compile_single()
            if self._single is not None:
                sql, params, names, cutoffs = self._single
                adapt = connection.ops.adapt_datetimefield_value
                values = [ids[0] if isinstance(p, int) and not isinstance(p, bool) and p == _MARK_ID
                          else adapt(_cutoff(cutoffs[p], now)) if _hashable(p) and p in cutoffs else p
                          for p in params]
                return list(Prospect.objects.raw(sql, values)), names
        qs, names = with_facts(self.bu, self._base().filter(pk__in=ids), self.trees, now=now)
        return list(qs), names


def _hashable(value: Any) -> bool:
    return isinstance(value, dt.datetime | str | int | float | Decimal)


def _looks_like_mark(value: Any) -> bool:
    """A time computed from the marker "now" (any number of days before it keeps its time of day)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).time() == _MARK_NOW.time()
    return "04:05:06.789012" in value


# --- In-memory evaluation --------------------------------------------------------------------------------------------


@dataclass
class EvalContext:
    """Per-prospect facts read once and shared by every tree evaluated for that prospect (lists, rules...)."""

    prospect: Prospect
    now: dt.datetime = field(default_factory=timezone.now)
    # Answers to the conditions on related rows (activities, tags, opportunities), read with the prospect row by
    # :func:`with_facts` — keyed by :func:`fact_key`. A condition missing here is looked up on its own.
    facts: dict[str, bool] = field(default_factory=dict)
    _tag_ids: set[int] | None = None
    _lists: dict[int, bool] | None = None  # list id -> opted out
    _tags_by_name: dict[str, list[int]] = field(default_factory=dict)

    @property
    def tag_ids(self) -> set[int]:
        if self._tag_ids is None:
            self._tag_ids = set(ProspectTag.objects.filter(prospect_id=self.prospect.pk)
                                .values_list("tag_id", flat=True))
        return self._tag_ids

    @property
    def lists(self) -> dict[int, bool]:
        if self._lists is None:
            from .models import ListMembership

            self._lists = dict(ListMembership.objects.filter(prospect_id=self.prospect.pk)
                               .values_list("prospect_list_id", "opted_out"))
        return self._lists

    def set_membership(self, list_id: int, opted_out: bool | None) -> None:
        """Keep the cache right while lists are updated one after the other (a list may refer to another)."""
        if opted_out is None:
            self.lists.pop(list_id, None)
        else:
            self.lists[list_id] = opted_out

    def tags_named(self, bu_id: int, name: str) -> list[int]:
        key = name
        if key not in self._tags_by_name:
            self._tags_by_name[key] = list(Tag.objects.filter(bu_id=bu_id, name__iexact=name)
                                           .values_list("pk", flat=True))
        return self._tags_by_name[key]


def evaluate(bu, tree: Mapping, prospect: Prospect, *, now: dt.datetime | None = None,
             context: EvalContext | None = None, catalogue: dict[str, FieldDef] | None = None) -> bool:
    """Whether ``prospect`` matches ``tree`` — the same answer :func:`matching_prospects` gives."""
    if prospect.bu_id != bu.pk or prospect.is_deleted:
        return False
    ctx = context or EvalContext(prospect, now=now or timezone.now())
    if now is not None:
        ctx.now = now
    cat = catalogue if catalogue is not None else field_catalogue(bu)
    return _eval_group(bu, tree, ctx, cat)


def _eval_group(bu, group: Mapping, ctx: EvalContext, cat: dict[str, FieldDef]) -> bool:
    results = (_eval_group(bu, item, ctx, cat) if "rules" in item else _eval_rule(bu, item, ctx, cat)
               for item in group.get("rules", []))
    return any(results) if group.get("match") == "any" else all(results)


def _compare(op: str, left: Any, right: Any) -> bool:
    if left is None:
        return op == "not_equals"
    return {"equals": left == right, "not_equals": left != right, "gt": left > right, "gte": left >= right,
            "lt": left < right, "lte": left <= right}[op]


def _eval_text(op: str, text: str | None, value: Any) -> bool:
    if op == "is_empty":
        return not text
    if op == "is_not_empty":
        return bool(text)
    negate = op in ("not_equals", "not_contains", "not_in")
    base = {"not_equals": "equals", "not_contains": "contains", "not_in": "in"}.get(op, op)
    if text is None:
        result = False
    elif base in ("before", "after"):
        result = text < value if base == "before" else text > value
    else:
        low = fold(text)
        if base == "in":
            result = low in {fold(v) for v in value}
        elif base == "contains":
            result = fold(value) in low
        elif base == "starts_with":
            result = low.startswith(fold(value))
        else:
            result = low == fold(value)
    return not result if negate else result


def _eval_rule(bu, rule: Mapping, ctx: EvalContext, cat: dict[str, FieldDef]) -> bool:
    key, op = rule["field"], rule["op"]
    value: Any = rule.get("value")
    p = ctx.prospect
    fdef = cat.get(key) or FieldDef(key, key, "text", "", custom=key.startswith("custom."))
    kind = fdef.kind
    if fdef.custom:
        raw = (p.custom or {}).get(key.removeprefix("custom."))
        if kind == "checkbox":
            return (raw is True) == (op == "is_true")
        if kind == "multiselect":
            items = [x for x in raw if isinstance(x, str)] if isinstance(raw, list) else None
            if op in ("includes", "excludes"):
                hit = bool(items) and any(x in value for x in items or ())
                return hit if op == "includes" else not hit
            filled = isinstance(raw, list) and len(raw) > 0
            return filled if op == "is_not_empty" else not filled
        if kind == "number":
            number = raw if isinstance(raw, int | float) and not isinstance(raw, bool) else None
            if op in ("is_empty", "is_not_empty"):
                return (number is None) == (op == "is_empty")
            return _compare(op, None if number is None else _num(number), _num(value))
        return _eval_text(op, raw if isinstance(raw, str) else None, value)
    if kind in FACT_FIELDS and ctx.facts:
        known = ctx.facts.get(fact_key(rule))
        if known is not None:
            return known if op == "has" else not known
    if kind == "activity":
        qs = _activity_query(bu, value, ctx.now, set_based=False).filter(prospect_id=p.pk)
        need = int(value.get("min_count", 1))
        hit = qs.exists() if need <= 1 else qs.order_by()[:need].count() >= need
        return hit if op == "has" else not hit
    if kind == "opportunity":
        hit = _opportunity_query(bu, value, ctx.now).filter(prospect_id=p.pk).exists()
        return hit if op == "has" else not hit
    if kind == "tag":
        hit = bool(ctx.tag_ids.intersection(ctx.tags_named(bu.pk, value)))
        return hit if op == "has" else not hit
    if kind == "list":
        hit = ctx.lists.get(value) is False
        return hit if op == "member" else not hit
    if kind == "grade":
        if op == "not_equals":
            return p.grade != value
        return p.grade in _grade_set(op, value)
    if kind in ("user", "campaign"):
        current = p.assigned_user_id if kind == "user" else p.source_campaign_id
        if op == "is":
            return current == value
        if op == "is_not":
            return current != value
        return (current is None) == (op == "is_empty")
    if kind == "presence":
        has = bool(p.crm_lead_id or p.crm_contact_id)
        return has if op == "is_not_empty" else not has
    if kind == "datetime":
        when = getattr(p, key)
        if op in ("is_empty", "is_not_empty"):
            return (when is None) == (op == "is_empty")
        recent = when is not None and when >= _cutoff(value, ctx.now)
        return recent if op == "within_days" else not recent
    if kind == "checkbox":
        return bool(getattr(p, key)) == (op == "is_true")
    if kind == "number":
        current = getattr(p, key)
        if op in ("is_empty", "is_not_empty"):
            return (current is None) == (op == "is_empty")
        return _compare(op, None if current is None else _num(current), _num(value))
    return _eval_text(op, getattr(p, key) or "", value)


# --- Plain-language description --------------------------------------------------------------------------------------


def describe(bu, tree: Mapping, *, catalogue: dict[str, FieldDef] | None = None, names: dict | None = None) -> str:
    """"All of: Industry is "Software"; Score is at least 50; (any of: …)" — for list and rule pages."""
    cat = catalogue if catalogue is not None else field_catalogue(bu)
    names = names if names is not None else _names(bu, tree)

    def group(g: Mapping, top: bool) -> str:
        parts = [group(item, False) if "rules" in item else rule(item) for item in g.get("rules", [])]
        head = "All of" if g.get("match", "all") == "all" else "Any of"
        text = f"{head}: " + "; ".join(parts) if parts else f"{head}: (nothing)"
        return text if top else f"({text[0].lower()}{text[1:]})"

    def rule(r: Mapping) -> str:
        fdef = cat.get(r.get("field", ""))
        label = fdef.label if fdef else str(r.get("field", "")).removeprefix("custom.") + " (deleted field)"
        op_label = dict(fdef.ops).get(r.get("op", ""), r.get("op", "")) if fdef else r.get("op", "")
        value = r.get("value")
        kind = fdef.kind if fdef else "text"
        if kind == "activity" and isinstance(value, Mapping):
            return f"{op_label} {describe_activity(value, names)}"
        if kind == "opportunity":
            return op_label + describe_opportunity(value if isinstance(value, Mapping) else {})
        if kind == "list":
            return f"{op_label} {names.get(('list', value), f'#{value} (deleted)')}"
        if kind == "tag":
            return f'{op_label} "{value}"'
        if kind in ("user", "campaign") and value is not None:
            value = names.get((kind, value), f"#{value}")
            return f"{label} {op_label} {value}"
        if r.get("op") in NO_VALUE_OPS:
            return f"{label} {op_label}"
        if kind == "datetime":
            return f"{label} {op_label.replace('…', str(value))}"
        if isinstance(value, list):
            return f"{label} {op_label} " + ", ".join(f'"{v}"' for v in value)
        return f'{label} {op_label} "{value}"' if kind in ("text", "date") else f"{label} {op_label} {value}"

    return group(tree, True)


def describe_activity(spec: Mapping, names: dict | None = None) -> str:
    names = names or {}
    try:
        text = ActivityType(int(spec.get("type") or 0)).label.lower()
    except ValueError:
        text = f"activity {spec.get('type')}"
    if spec.get("asset_type"):
        text += f" on {spec['asset_type'].replace('_', ' ')}"
        if spec.get("asset_id"):
            text += f" #{spec['asset_id']}"
    elif spec.get("asset_id"):
        text += f" on asset #{spec['asset_id']}"
    if spec.get("url_contains"):
        text += f' on a page containing "{spec["url_contains"]}"'
    if int(spec.get("min_count", 1)) > 1:
        text += f" at least {spec['min_count']} times"
    if spec.get("days"):
        text += f" in the last {spec['days']} days"
    return text


def describe_opportunity(spec: Mapping) -> str:
    """' won, stage "Negotiation", amount at least 5000, created in the last 30 days' (empty: any opportunity)."""
    parts = []
    if spec.get("outcome"):
        parts.append(str(spec["outcome"]))
    if spec.get("stage"):
        parts.append(f'stage "{spec["stage"]}"')
    if spec.get("min_amount") not in (None, ""):
        parts.append(f"amount at least {spec['min_amount']}")
    if spec.get("days"):
        parts.append(f"created in the last {spec['days']} days")
    return (" " + ", ".join(parts)) if parts else ""


def _names(bu, tree: Mapping) -> dict:
    from loopline.accounts.models import User
    from loopline.campaigns.models import Campaign

    from .models import ProspectList

    ids: dict[str, set] = {"list": set(), "user": set(), "campaign": set()}
    for r in iter_rules(tree):
        kind = {"list": "list", "assigned_user": "user", "source_campaign": "campaign"}.get(r.get("field", ""))
        if kind and isinstance(r.get("value"), int):
            ids[kind].add(r["value"])
    out: dict = {}
    for pk, name in ProspectList.objects.filter(bu_id=bu.pk, pk__in=ids["list"]).values_list("pk", "name"):
        out[("list", pk)] = f'"{name}"'
    for user in User.objects.filter(pk__in=ids["user"]):
        out[("user", user.pk)] = user.get_full_name() or user.email
    for pk, name in Campaign.objects.filter(bu_id=bu.pk, pk__in=ids["campaign"]).values_list("pk", "name"):
        out[("campaign", pk)] = f'"{name}"'
    return out
