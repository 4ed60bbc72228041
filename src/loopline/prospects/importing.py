"""CSV import of prospects: robust parsing, column mapping, batched create-or-update, a rejects report, Job progress.

The engine reads the file row by row, cleans values with the shared field rules and writes through
``services.bulk_upsert_prospects`` one batch (one transaction) at a time, so a later bad batch never undoes an
earlier one, and import is never a back door around the rules ([R12]).

Decisions (documented for users in the import page):
- Row numbers are spreadsheet rows: the header is row 1, the first data row is row 2.
- A row whose email (unique-email BUs) or CRM id appeared in an earlier accepted row of the same file is rejected
  as a duplicate; the first row wins.
- Blank cells never overwrite stored values unless "overwrite with blanks" is chosen.
- A cell that starts with ``'`` followed by ``= + - @`` is read without the quote (the escaping our export adds).
- Rows with only blank cells are skipped silently.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from django.conf import settings
from django.utils import timezone

from loopline.accounts.models import BusinessUnit
from loopline.platform import audit
from loopline.platform.models import Job

from . import services
from .fields import FieldSpec, field_specs

BATCH_SIZE = 1000
MAX_FIELD_CHARS = 100_000  # a longer cell is a broken file (usually an unterminated quote), not data
SAMPLE_ERRORS = 50
JOB_KIND = "import"

# Import-only targets: CRM ids, used to match rows (see services.CRM_MATCH_KEYS).
CRM_TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "crm_contact_id": ("CRM contact id", ("contact id", "salesforce contact id", "sfdc contact id")),
    "crm_lead_id": ("CRM lead id", ("lead id", "salesforce lead id", "sfdc lead id")),
}


class ImportSetupError(Exception):
    """The file or the mapping cannot be imported at all (empty file, no email column...). Nothing was written."""


@dataclass
class ImportOptions:
    match: str | None = None  # "email" | "crm_id"; None = the BU's matching mode
    update_existing: bool = True
    undelete: bool = False
    overwrite_with_blanks: bool = False
    timeline_entry: bool = False  # an "Imported from <file>" activity on each created/updated prospect
    batch_size: int = BATCH_SIZE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImportOptions:
        known = {k: data[k] for k in ("match", "update_existing", "undelete", "overwrite_with_blanks", "timeline_entry",
                                   "batch_size")
                 if k in data}
        return cls(**known)


@dataclass
class ImportResult:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    undeleted: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rejects_path: str = ""  # relative to MEDIA_ROOT
    ignored_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors_sample: list[dict] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.created + self.updated + self.unchanged + self.skipped

    def as_dict(self) -> dict:
        return asdict(self)


# --- Reading ---------------------------------------------------------------------------------------------------------


@dataclass
class CsvRow:
    number: int  # spreadsheet row number (header = 1)
    values: list[str]
    error: str = ""


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[_\-.]+", " ", str(text)).lower().split())


def _open_lines(path: Path, bad_lines: set[int]) -> Iterator[str]:
    """Decoded physical lines. UTF-8 (with or without BOM) or UTF-16 with BOM; bad UTF-8 lines are noted, not fatal."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            fh.seek(0)
            text = io.TextIOWrapper(fh, encoding="utf-16", errors="replace", newline="")
            for number, line in enumerate(text, start=1):
                if "\ufffd" in line:
                    bad_lines.add(number)
                yield line
            return
        fh.seek(3 if head.startswith(codecs.BOM_UTF8) else 0)
        for number, raw in enumerate(fh, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                bad_lines.add(number)
                yield raw.decode("utf-8", errors="replace")


def _sniff_delimiter(path: Path) -> str:
    bad: set[int] = set()
    for line in _open_lines(path, bad):
        if line.strip():
            counts = {d: line.count(d) for d in (",", ";", "\t", "|")}
            best = max(counts, key=lambda d: counts[d])
            return best if counts[best] else ","
    return ","


def read_csv(path: str | Path) -> tuple[list[str], Iterator[CsvRow]]:
    """Return the header and an iterator of data rows; each row carries a clear ``error`` when it could not be read.

    Raises ImportSetupError for an empty file or an unreadable header.
    """
    path = Path(path)
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))
    bad_lines: set[int] = set()
    lines = _open_lines(path, bad_lines)
    reader = csv.reader(lines, delimiter=_sniff_delimiter(path), strict=True)
    state = {"number": 0, "line": 0}

    def records() -> Iterator[CsvRow]:
        while True:
            first_line = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                state["number"] += 1
                yield CsvRow(state["number"], [], _csv_error_message(str(exc), first_line, reader.line_num))
                continue
            state["number"] += 1
            broken = [n for n in range(first_line, reader.line_num + 1) if n in bad_lines]
            if broken:
                yield CsvRow(state["number"], values,
                             f"Line {broken[0]} has bytes that are not valid UTF-8; save the file as UTF-8 (CSV UTF-8 "
                             "in Excel) and import this row again")
                continue
            too_long = next((v for v in values if len(v) > MAX_FIELD_CHARS), None)
            if too_long is not None:
                yield CsvRow(state["number"], values, f"A value has {len(too_long)} characters (at most "
                                                      f"{MAX_FIELD_CHARS} are read)")
                continue
            yield CsvRow(state["number"], values)

    rows = records()
    for row in rows:
        if row.error and row.number == 1:
            raise ImportSetupError(f"The header row cannot be read: {row.error}")
        if not any(v.strip() for v in row.values):
            continue
        header = [v.strip().lstrip("\ufeff") for v in row.values]
        return header, (r for r in rows if r.error or any(v.strip() for v in r.values))
    raise ImportSetupError("The file is empty: it needs a header row (column names) and rows of prospects")


def _csv_error_message(error: str, first_line: int, last_line: int) -> str:
    if "unexpected end of data" in error or "larger than field limit" in error:
        return (f"A quoted value that starts on line {first_line} is never closed (unterminated quote) or is too long; "
                "the rows after it may be missing — fix the quotes and import them again")
    if "expected after" in error:
        return f"Broken quoting on line {last_line}: a quote inside a value must be doubled (\"\")"
    if "NUL" in error or "new-line character" in error:
        return f"Line {last_line} contains characters that cannot be in a CSV value ({error})"
    return f"Line {last_line} cannot be read as CSV: {error}"


def count_rows(path: str | Path) -> int:
    """Fast estimate of the data rows (newlines minus the header), for progress bars."""
    count, last = 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk
    if last and not last.endswith(b"\n"):
        count += 1
    return max(0, count - 1)


# --- Mapping ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    key: str  # value for bulk_upsert_prospects: standard name, "custom.<api>", or a CRM match key
    label: str


def targets(specs: Sequence[FieldSpec]) -> list[Target]:
    """Everything a column can be mapped to, in display order."""
    out = [Target(spec.name, spec.label) for spec in specs]
    out += [Target(key, label) for key, (label, _) in CRM_TARGETS.items()]
    return out


def _lookup_table(specs: Sequence[FieldSpec]) -> dict[str, str]:
    """normalised name/label/alias -> target key. Earlier entries win (names before labels before aliases)."""
    table: dict[str, str] = {}
    names: list[tuple[str, str]] = []
    for spec in specs:
        names += [(spec.name, spec.name), (spec.key, spec.name)]
    for key, (label, _) in CRM_TARGETS.items():
        names += [(key, key), (label, key)]
    names += [(spec.label, spec.name) for spec in specs]
    names += [(alias, spec.name) for spec in specs for alias in spec.aliases]
    names += [(alias, key) for key, (_, aliases) in CRM_TARGETS.items() for alias in aliases]
    for text, key in names:
        table.setdefault(_normalise(text), key)
    return table


def resolve_target(specs: Sequence[FieldSpec], text: str) -> str | None:
    """A field key from what a person typed (``email``, ``First name``, ``custom.size``, ``size``)."""
    return _lookup_table(specs).get(_normalise(text))


def suggest_mapping(header: Sequence[str], specs: Sequence[FieldSpec]) -> list[str | None]:
    """One target key (or None) per column, by field name, label or alias; each field is used once (first column)."""
    table = _lookup_table(specs)
    used: set[str] = set()
    mapping: list[str | None] = []
    for column in header:
        key = table.get(_normalise(column))
        if key and key not in used:
            used.add(key)
            mapping.append(key)
        else:
            mapping.append(None)
    return mapping


def build_mapping(
    header: Sequence[str], specs: Sequence[FieldSpec], overrides: Mapping[str, str] | None = None
) -> list[str | None]:
    """Suggested mapping with a person's choices applied. ``overrides``: column name -> field (name, label, key, or
    "" to ignore the column). Raises ImportSetupError for unknown columns or fields, or a field mapped twice."""
    mapping = suggest_mapping(header, specs)
    table = _lookup_table(specs)
    by_column = {_normalise(c): i for i, c in reversed(list(enumerate(header)))}
    chosen: Mapping[str, str] = overrides or {}
    for column, wanted in chosen.items():
        index = by_column.get(_normalise(column))
        if index is None and str(column).isdigit() and 1 <= int(column) <= len(header):
            index = int(column) - 1
        if index is None:
            raise ImportSetupError(f"The file has no column named '{column}' (columns: {', '.join(header)})")
        if not str(wanted or "").strip():
            mapping[index] = None
            continue
        key = table.get(_normalise(wanted))
        if key is None:
            raise ImportSetupError(f"Column '{column}' is mapped to '{wanted}', which is not a prospect field")
        for i, existing in enumerate(mapping):
            if existing == key and i != index and _normalise(header[i]) not in {_normalise(c) for c in chosen}:
                mapping[i] = None  # the explicit choice takes the field from an auto-suggested column
        mapping[index] = key
    seen: dict[str, int] = {}
    for i, key in enumerate(mapping):
        if key is None:
            continue
        if key in seen:
            raise ImportSetupError(f"Columns '{header[seen[key]]}' and '{header[i]}' are both mapped to the same field")
        seen[key] = i
    return mapping


def check_mapping(bu: BusinessUnit, mapping: Sequence[str | None], match: str | None) -> str:
    """Raise ImportSetupError if rows could not be matched; return the effective match mode."""
    match = match or ("crm_id" if bu.allow_duplicate_emails else "email")
    if match not in ("email", "crm_id"):
        raise ImportSetupError("Match prospects by 'email' or by 'crm_id'")
    mapped = set(mapping) - {None}
    if match == "email" and "email" not in mapped:
        raise ImportSetupError("Map a column to Email: prospects are matched by email address")
    if match == "crm_id" and not mapped & {"crm_lead_id", "crm_contact_id", "email"}:
        raise ImportSetupError("Map a column to CRM contact id or CRM lead id (or Email): nothing to match prospects by")
    return match


# --- Running ---------------------------------------------------------------------------------------------------------

_FORMULA_ESCAPED = re.compile(r"'[=+\-@]")


def _unescape(value: str) -> str:
    return value[1:] if value[:1] == "'" and _FORMULA_ESCAPED.match(value) else value


class _Rejects:
    """The downloadable report of rejected rows, written as rows are rejected (no list kept in memory)."""

    def __init__(self, header: Sequence[str], name: str):
        self.header = list(header)
        self.relative = f"imports/{name}"
        self.path = Path(settings.MEDIA_ROOT) / self.relative
        self.count = 0
        self.sample: list[dict] = []
        self._fh: TextIO | None = None
        self._writer: Any = None

    def add(self, number: int, column: str, reason: str, values: Sequence[str]) -> None:
        from .exporting import safe_cell

        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed in close()
            self._writer = csv.writer(self._fh)
            self._writer.writerow(["Row", "Column", "Reason", *self.header])
        self.count += 1
        if len(self.sample) < SAMPLE_ERRORS:
            self.sample.append({"row": number, "column": column, "reason": reason})
        self._writer.writerow([number, safe_cell(column), safe_cell(reason), *(safe_cell(v) for v in values)])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def run_import(
    bu: BusinessUnit,
    path: str | Path,
    *,
    mapping: Sequence[str | None] | None = None,
    overrides: Mapping[str, str] | None = None,
    options: ImportOptions | None = None,
    access=None,
    actor=None,
    filename: str = "",
    report_name: str = "",
    progress: Callable[[ImportResult, int], None] | None = None,
) -> ImportResult:
    """Import a CSV file into ``bu``. Each batch is its own transaction; returns the counts.

    ``mapping`` (one target key or None per column) wins over ``overrides`` (column -> field), which are applied
    to the suggested mapping. ``access`` limits matching to the prospects that person may see.
    ``progress(result_so_far, total_estimate)`` is called after each committed batch.
    """
    from .selectors import scoped_prospects

    started = time.perf_counter()
    options = options or ImportOptions()
    path = Path(path)
    filename = filename or path.name
    specs_list = field_specs(bu.pk)
    specs = {spec.key: spec for spec in specs_list}
    header, rows = read_csv(path)
    if mapping is None:
        mapping = build_mapping(header, specs_list, overrides)
    elif len(mapping) != len(header):
        raise ImportSetupError("The mapping does not match the file's columns; upload the file again")
    match = check_mapping(bu, mapping, options.match)
    total = count_rows(path)
    result = ImportResult()
    result.ignored_columns = [c or f"(column {i + 1})" for i, (c, k) in enumerate(zip(header, mapping, strict=True))
                              if k is None]
    if result.ignored_columns:
        result.notes.append("Columns not imported (not mapped to a field): " + ", ".join(result.ignored_columns))
    columns = [(i, key) for i, key in enumerate(mapping) if key]
    column_of = {key: header[i] or f"column {i + 1}" for i, key in columns}
    column_of.update({key.removeprefix("custom."): column for key, column in list(column_of.items())})
    rejects = _Rejects(header, report_name or f"rejects-{uuid.uuid4().hex[:12]}.csv")
    queryset = scoped_prospects(access, include_deleted=True) if access is not None else None
    seen: dict[tuple[str, str], int] = {}
    width = len(header)

    def flush(rows_in_order: list[CsvRow]) -> None:
        batch = [row for row in rows_in_order if not row.error]
        data = [{key: _unescape(row.values[i]) if i < len(row.values) else "" for i, key in columns} for row in batch]
        # One transaction per batch: bulk_upsert_prospects is @transaction.atomic.
        outcome = services.bulk_upsert_prospects(
            bu, data, match=match, update_existing=options.update_existing, undelete=options.undelete,
            overwrite_with_blanks=options.overwrite_with_blanks, specs=specs, queryset=queryset, seen=seen,
            row_numbers=[r.number for r in batch],
            activity_title=f"Imported from {filename}"[:255] if options.timeline_entry else "",
            actor=actor, source="import",
        )
        states = iter(enumerate(outcome.outcomes))
        for row in rows_in_order:
            if row.error:
                rejects.add(row.number, "", row.error, row.values)
                result.rejected += 1
                continue
            index, state = next(states)
            if state == "rejected":
                for key, messages in outcome.errors.get(index, {"row": ["Rejected"]}).items():
                    rejects.add(row.number, column_of.get(key, key), "; ".join(messages), row.values)
                result.rejected += 1
            else:
                setattr(result, state, getattr(result, state) + 1)
        result.undeleted += len(outcome.undeleted_ids)

    batch: list[CsvRow] = []
    try:
        for row in rows:
            result.rows += 1
            if not row.error and len(row.values) > width and any(v.strip() for v in row.values[width:]):
                row.error = (f"The row has {len(row.values)} values but the header has {width} columns "
                             "(a missing quote or an extra separator?)")
            batch.append(row)
            if len(batch) >= options.batch_size:
                flush(batch)
                batch = []
                if progress:
                    progress(result, total)
        if batch:
            flush(batch)
    except Exception as exc:
        exc.import_result = result  # type: ignore[attr-defined]  # what was committed before the failure
        raise
    finally:
        rejects.close()
        result.errors_sample = rejects.sample
        result.rejects_path = rejects.relative if rejects.count else ""
        result.seconds = round(time.perf_counter() - started, 3)
    if progress:
        progress(result, result.rows)
    if result.rows == 0:
        result.notes.append("The file has a header row but no prospect rows")
    if actor is not None:
        audit.record("prospects.import", actor=actor, bu=bu, object_type="platform.job", summary=(
            f"Imported {filename}: {result.created} created, {result.updated} updated, {result.rejected} rejected"))
    return result


# --- Jobs ------------------------------------------------------------------------------------------------------------


def imports_dir() -> Path:
    path = Path(settings.MEDIA_ROOT) / "imports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_upload(chunks, filename: str) -> str:
    """Store an uploaded file under MEDIA_ROOT/imports/; returns its path relative to MEDIA_ROOT."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename or "import.csv").name)[-80:] or "import.csv"
    name = f"{uuid.uuid4().hex[:12]}-{safe}"
    with open(imports_dir() / name, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
    return f"imports/{name}"


def media_path(relative: str) -> Path:
    """Absolute path of a file under MEDIA_ROOT; refuses paths that would leave it."""
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / relative).resolve()
    if root not in path.parents:
        raise ValueError("Path outside MEDIA_ROOT")
    return path


def create_job(bu: BusinessUnit, relative_path: str, filename: str, *, actor=None) -> Job:
    """An import Job for an uploaded file, waiting for its column mapping (``params.stage == "mapping"``)."""
    return Job.objects.create(
        bu=bu, kind=JOB_KIND, title=f"Import of {filename}"[:200], created_by=actor if getattr(actor, "pk", None) else None,
        params={"path": relative_path, "filename": filename, "stage": "mapping"},
    )


def configure_job(job: Job, mapping: Sequence[str | None], options: ImportOptions) -> Job:
    """Store the confirmed mapping and options; the job is then ready to run (``params.stage == "queued"``)."""
    check_mapping(job.bu, mapping, options.match)
    job.params = {**job.params, "stage": "queued", "mapping": list(mapping), "options": asdict(options),
                  "queued_at": timezone.now().isoformat()}
    job.status = Job.Status.QUEUED
    job.total = count_rows(media_path(job.params["path"]))
    job.save(update_fields=["params", "status", "total"])
    return job


def _set_progress(job: Job, result: ImportResult, total: int) -> None:
    job.done, job.failed, job.total = result.accepted, result.rejected, max(total, result.rows)
    job.heartbeat_at = timezone.now()
    Job.objects.filter(pk=job.pk).update(done=job.done, failed=job.failed, total=job.total,
                                         heartbeat_at=job.heartbeat_at)


def run_job(job_id: int, *, progress: Callable[[ImportResult, int], None] | None = None) -> Job | None:
    """Run a configured import Job (idempotent: a job already started or finished is left alone)."""
    from loopline.accounts.access import Access

    claimed = Job.objects.filter(pk=job_id, kind=JOB_KIND, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
    job = Job.objects.select_related("bu", "created_by").filter(pk=job_id).first()
    if not claimed or job is None:
        return job
    params = job.params
    access = None
    if job.created_by is not None:
        try:
            access = Access.for_user(job.created_by, job.bu)
        except Exception:  # no longer a member: import as the BU (the job was authorised when it was created)
            access = None

    def on_progress(result: ImportResult, total: int) -> None:
        _set_progress(job, result, total)
        if progress:
            progress(result, total)

    try:
        result = run_import(
            job.bu, media_path(params["path"]), mapping=params.get("mapping"), overrides=params.get("overrides"),
            options=ImportOptions.from_dict(params.get("options") or {}), access=access, actor=job.created_by,
            filename=params.get("filename", ""), report_name=f"rejects-job{job.pk}-{uuid.uuid4().hex[:8]}.csv",
            progress=on_progress,
        )
    except ImportSetupError as exc:
        job.status, job.error = Job.Status.FAILED, str(exc)
    except Exception as exc:
        # Earlier batches are committed and stay; say how far we got.
        job.refresh_from_db(fields=["done", "failed", "total"])
        partial = getattr(exc, "import_result", None)
        if partial is not None:
            job.result = {**partial.as_dict(), "incomplete": True}
        job.status = Job.Status.FAILED
        job.error = (f"The import stopped after {job.done + job.failed} rows ({job.done} accepted, which are kept): "
                     f"{type(exc).__name__}: {str(exc)[:300]}")
    else:
        job.status = Job.Status.SUCCEEDED
        job.result = result.as_dict()
        job.done, job.failed, job.total = result.accepted, result.rejected, result.rows
    job.finished_at = timezone.now()
    job.params = {**params, "stage": "finished"}
    job.save()
    return job
