"""CSV export of any prospect queryset, streamed: rows are read with a server-side cursor and written as they come,
so a million prospects export in constant memory. Cells that a spreadsheet would run as a formula are escaped."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone

from .fields import FieldSpec, field_specs
from .models import Prospect, ProspectTag

CHUNK_SIZE = 2000
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """CSV-injection safe: a text cell starting with = + - @ (or tab / CR) gets a leading quote. Numbers are kept."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


@dataclass(frozen=True)
class Column:
    header: str
    key: str  # attribute, "custom.<api_name>", or a computed key below


SYSTEM_COLUMNS = (
    Column("Prospect id", "id"),
    Column("Score", "score"),
    Column("Grade", "grade"),
    Column("Assigned user", "assigned_user_email"),
    Column("CRM lead id", "crm_lead_id"),
    Column("CRM contact id", "crm_contact_id"),
    Column("Last activity at", "last_activity_at"),
    Column("Created at", "created_at"),
    Column("Updated at", "updated_at"),
)


def export_columns(bu_id: int, *, include_tags: bool = False, specs: list[FieldSpec] | None = None) -> list[Column]:
    """Prospect id first, then standard and custom fields (headers the importer recognises), system columns, tags."""
    specs = specs if specs is not None else field_specs(bu_id)
    columns = [SYSTEM_COLUMNS[0]]
    used = {SYSTEM_COLUMNS[0].header.lower()}
    for spec in specs:
        header = spec.label
        if header.lower() in used:  # a custom field labelled like a standard one: use its api name
            header = spec.key
        used.add(header.lower())
        columns.append(Column(header, spec.name))
    columns += list(SYSTEM_COLUMNS[1:])
    if include_tags:
        columns.append(Column("Tags", "tags"))
    return columns


def _format(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dt.datetime):
        return timezone.localtime(value, dt.UTC).isoformat(timespec="seconds")
    if isinstance(value, dt.date | Decimal | int | float):
        return value.isoformat() if isinstance(value, dt.date) else value
    if isinstance(value, list | tuple):
        return safe_cell("; ".join(str(v) for v in value))
    return safe_cell(str(value))


def _tags_by_prospect(ids: list[int]) -> dict[int, list[str]]:
    tags: dict[int, list[str]] = {}
    rows = ProspectTag.objects.filter(prospect_id__in=ids).values_list("prospect_id", "tag__name").order_by("tag__name")
    for pid, name in rows:
        tags.setdefault(pid, []).append(name)
    return tags


def iter_rows(queryset: QuerySet[Prospect], columns: list[Column]) -> Iterator[list[Any]]:
    """Header then one list of cells per prospect, reading ``CHUNK_SIZE`` rows at a time from a server-side cursor."""
    yield [c.header for c in columns]
    want_tags = any(c.key == "tags" for c in columns)
    qs = queryset.select_related("assigned_user")
    chunk: list[Prospect] = []

    def emit(items: list[Prospect]) -> Iterator[list[Any]]:
        tags = _tags_by_prospect([p.pk for p in items]) if want_tags else {}
        for p in items:
            row = []
            custom = p.custom or {}
            for col in columns:
                if col.key.startswith("custom."):
                    value = custom.get(col.key.removeprefix("custom."))
                elif col.key == "assigned_user_email":
                    value = p.assigned_user.email if p.assigned_user_id and p.assigned_user else ""
                elif col.key == "tags":
                    value = tags.get(p.pk, [])
                else:
                    value = getattr(p, col.key)
                row.append(_format(value))
            yield row

    for prospect in qs.iterator(chunk_size=CHUNK_SIZE):
        chunk.append(prospect)
        if len(chunk) >= CHUNK_SIZE:
            yield from emit(chunk)
            chunk = []
    if chunk:
        yield from emit(chunk)


class _Echo:
    def write(self, value: str) -> str:
        return value


def iter_csv(queryset: QuerySet[Prospect], columns: list[Column], *, bom: bool = True) -> Iterator[str]:
    """CSV text in pieces (a few hundred rows each), starting with a UTF-8 BOM so spreadsheets read UTF-8."""
    writer = csv.writer(_Echo())
    if bom:
        yield "\ufeff"
    buffer: list[str] = []
    for row in iter_rows(queryset, columns):
        buffer.append(writer.writerow(row))
        if len(buffer) >= 500:
            yield "".join(buffer)
            buffer = []
    if buffer:
        yield "".join(buffer)


def write_csv(queryset: QuerySet[Prospect], fileobj, *, bu_id: int, include_tags: bool = False) -> int:
    """Write the export to an open text file (opened with newline=""); returns the number of prospects written."""
    writer = csv.writer(fileobj)
    count = -1
    for row in iter_rows(queryset, export_columns(bu_id, include_tags=include_tags)):
        writer.writerow(row)
        count += 1
    return count


def streaming_response(
    queryset: QuerySet[Prospect], *, bu_id: int, filename: str = "", include_tags: bool = False,
    lines: Iterable[str] | None = None,
) -> StreamingHttpResponse:
    filename = filename or f"prospects-{timezone.now():%Y%m%d-%H%M%S}.csv"
    body = lines if lines is not None else iter_csv(queryset, export_columns(bu_id, include_tags=include_tags))
    response = StreamingHttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
