"""Grade arithmetic ([M14]), pure: letters in thirds, a D start, criteria that match (+weight), do not match
(-weight) or are unknown (no change)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

# Lowest to highest; one step is a third of a letter.
LETTERS = ("F", "D-", "D", "D+", "C-", "C", "C+", "B-", "B", "B+", "A-", "A", "A+")
START = LETTERS.index("D")
TOP = len(LETTERS) - 1

MATCH, NO_MATCH, UNKNOWN = "match", "no_match", "unknown"

# Fields a criterion may look at (standard ones; "custom.<api_name>" works too).
GRADE_FIELDS = {
    "employees": "Company size (employees)",
    "annual_revenue": "Annual revenue",
    "industry": "Industry",
    "country": "Country",
    "state": "State / region",
    "city": "City",
    "job_title": "Job title",
    "department": "Department",
    "company": "Company",
    "website": "Website",
    "source": "Source",
}
OPS = {
    "in": "is one of",
    "not_in": "is none of",
    "contains": "contains any of",
    "starts_with": "starts with any of",
    "gte": "is at least",
    "lte": "is at most",
    "between": "is between",
}
WEIGHTS = {1: "1/3 letter", 2: "2/3 letter", 3: "1 letter"}

DEFAULT_CRITERIA: list[dict[str, Any]] = [
    {"label": "Company size", "field": "employees", "op": "gte", "value": [], "weight": 2},
    {"label": "Industry", "field": "industry", "op": "in", "value": [], "weight": 2},
    {"label": "Location", "field": "country", "op": "in", "value": [], "weight": 2},
    {"label": "Job title", "field": "job_title", "op": "contains", "value": [], "weight": 2},
    {"label": "Department", "field": "department", "op": "in", "value": [], "weight": 2},
]


def letter(thirds: int) -> str:
    return LETTERS[max(0, min(TOP, thirds))]


def _number(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value).replace(",", "").strip())
    except (InvalidOperation, ValueError):
        return None


def evaluate_criterion(criterion: Mapping[str, Any], value: Any) -> str:
    """match / no_match / unknown for one criterion and the prospect's value of its field."""
    targets = [str(v).strip() for v in (criterion.get("value") or []) if str(v).strip()]
    if not targets:
        return UNKNOWN  # not set up yet: no effect
    if value is None or (isinstance(value, str) and not value.strip()):
        return UNKNOWN
    op = criterion.get("op")
    if op in ("gte", "lte", "between"):
        number = _number(value)
        bounds = [_number(t) for t in targets]
        if number is None or any(b is None for b in bounds):
            return UNKNOWN
        if op == "gte":
            ok = number >= bounds[0]  # type: ignore[operator]
        elif op == "lte":
            ok = number <= bounds[0]  # type: ignore[operator]
        else:
            low, high = (bounds + bounds)[:2]
            ok = low <= number <= high  # type: ignore[operator]
        return MATCH if ok else NO_MATCH
    text = str(value).strip().lower()
    lowered = [t.lower() for t in targets]
    if op == "in":
        ok = text in lowered
    elif op == "not_in":
        ok = text not in lowered
    elif op == "contains":
        ok = any(t in text for t in lowered)
    elif op == "starts_with":
        ok = any(text.startswith(t) for t in lowered)
    else:
        return UNKNOWN
    return MATCH if ok else NO_MATCH


def field_value(values: Mapping[str, Any], field: str) -> Any:
    if field.startswith("custom."):
        return (values.get("custom") or {}).get(field.removeprefix("custom."))
    return values.get(field)


def grade_thirds(criteria: Iterable[Mapping[str, Any]], values: Mapping[str, Any], manual_thirds: int = 0) -> int:
    total = START + int(manual_thirds or 0)
    for criterion in criteria:
        outcome = evaluate_criterion(criterion, field_value(values, str(criterion.get("field", ""))))
        weight = int(criterion.get("weight") or 0)
        if outcome == MATCH:
            total += weight
        elif outcome == NO_MATCH:
            total -= weight
    return max(0, min(TOP, total))


def compute_grade(criteria: Iterable[Mapping[str, Any]], values: Mapping[str, Any], manual_thirds: int = 0) -> str:
    return letter(grade_thirds(criteria, values, manual_thirds))


def needed_fields(criteria: Iterable[Mapping[str, Any]]) -> set[str]:
    fields = set()
    for c in criteria:
        f = str(c.get("field", ""))
        fields.add("custom" if f.startswith("custom.") else f)
    return fields & (set(GRADE_FIELDS) | {"custom"})
