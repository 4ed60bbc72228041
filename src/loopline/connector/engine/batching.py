"""Planning the Loopline → CRM push from outbox entries ([R23], [R25]).

:func:`plan_push` turns outbox entries into a :class:`PushPlan` the adapter executes:

1. **Coalesce** per record key (ordered by sequence): a create followed by updates becomes one create; consecutive
   updates to the same CRM record merge (later field values win). A new *run* starts at every create after earlier
   writes, and whenever the object/CRM id changes (e.g. the lead was converted and updates now go to the contact).
   An update without a CRM id and no create before it in this batch is *deferred* (its create is still in flight).
2. **Steps**: run *i* of every key goes into step *i*. Steps run one after another; everything inside a step may run
   in any order or in parallel, because a step never holds two writes of one record. Usually there is one step.
3. **Requests**: inside a step, writes are grouped by (object, operation) into sObject Collections of ≤200 records,
   packed ≤5 per composite call (one API call, [R27]) — or one collection per call when composite is off.
4. **Bulk**: when the backlog exceeds ``bulk_threshold`` (default 2,000) the plan's updates become Bulk API 2.0
   ingest jobs instead (CSV built here). Bulk 2.0 results carry no request order, so a create goes into a job only as
   an upsert on the external-id field (a retried job finds the record instead of creating it again, [R25]); creates
   without such a field, or handed to the CRM's assignment rule, stay on collections (sync/bulk.py decides).

Results map back per record (:func:`collection_outcomes`, :func:`composite_outcomes`, :func:`bulk_outcomes`): one
bad record never blocks the others. If a write fails, drop the key's later steps with :meth:`PushPlan.without_keys`
so its order is kept; those entries stay in the outbox.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from .errors import CrmError, parse_errors
from .model import format_datetime, id18, same_id, sobject_name


class WriteOp(StrEnum):
    CREATE = "create"
    UPDATE = "update"


class PlanMode(StrEnum):
    COLLECTIONS = "collections"
    BULK = "bulk"


@dataclass(frozen=True)
class OutboxItem:
    """One queued change. ``key`` identifies the CRM record across entries (e.g. ``"prospect:42"``); ``sequence``
    orders the entries of one key; ``crm_id`` is required for updates unless a create of the same key precedes it."""

    key: str
    sequence: int
    operation: WriteOp
    object_type: str
    payload: Mapping[str, Any]
    enqueued_at: datetime
    crm_id: str | None = None
    entry_id: Any = None


@dataclass(frozen=True)
class CoalescedWrite:
    key: str
    operation: WriteOp
    object_type: str
    crm_id: str | None
    payload: Mapping[str, Any]
    entry_ids: tuple[Any, ...]
    first_sequence: int
    last_sequence: int
    enqueued_at: datetime

    def record(self) -> dict[str, Any]:
        """The sObject Collections record: ``attributes.type`` plus fields, plus ``Id`` for updates."""
        body: dict[str, Any] = {"attributes": {"type": sobject_name(self.object_type)}}
        body.update(self.payload)
        if self.operation is WriteOp.UPDATE:
            body["Id"] = self.crm_id
        else:
            body.pop("Id", None)
        return body


@dataclass(frozen=True)
class BatchLimits:
    max_records: int = 200  # sObject Collections
    max_collections_per_request: int = 5  # composite: ≤5 collections/queries per call
    use_composite: bool = True
    bulk_threshold: int = 2000
    bulk_max_rows: int = 10_000
    api_version: str = "59.0"
    # object type → external-id field: creates of that type go out as upserts on it ([R25]: a create re-sent after a
    # lost answer finds the record it made instead of making a second one). The payload carries the field's value.
    upsert_fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.max_records <= 200:
            raise ValueError("max_records must be 1..200")
        if not 1 <= self.max_collections_per_request <= 5:
            raise ValueError("max_collections_per_request must be 1..5")


@dataclass(frozen=True)
class Collection:
    object_type: str
    operation: WriteOp
    writes: tuple[CoalescedWrite, ...]
    upsert_field: str | None = None  # creates only: upsert on this external-id field

    @property
    def method(self) -> str:
        return "POST" if self.operation is WriteOp.CREATE and not self.upsert_field else "PATCH"

    @property
    def url_path(self) -> str:
        """Relative to ``/services/data/vXX.X/``."""
        if self.upsert_field:
            return f"composite/sobjects/{sobject_name(self.object_type)}/{self.upsert_field}"
        return "composite/sobjects"

    def body(self) -> dict[str, Any]:
        return {"allOrNone": False, "records": [w.record() for w in self.writes]}


@dataclass(frozen=True)
class ApiRequest:
    """One API call: a single sObject Collections call, or a composite call holding ≤5 collections."""

    collections: tuple[Collection, ...]
    composite: bool

    def path(self) -> str:
        """Relative to ``/services/data/vXX.X/``."""
        return "composite" if self.composite else self.collections[0].url_path

    def method(self) -> str:
        return "POST" if self.composite else self.collections[0].method

    def body(self, api_version: str = "59.0") -> dict[str, Any]:
        if not self.composite:
            return self.collections[0].body()
        return {
            "allOrNone": False,
            "compositeRequest": [
                {
                    "method": c.method,
                    "url": f"/services/data/v{api_version}/{c.url_path}",
                    "referenceId": f"c{i}",
                    "body": c.body(),
                }
                for i, c in enumerate(self.collections)
            ],
        }

    @property
    def writes(self) -> tuple[CoalescedWrite, ...]:
        return tuple(w for c in self.collections for w in c.writes)


@dataclass(frozen=True)
class BulkJob:
    """A Bulk API 2.0 ingest job (``POST jobs/ingest`` with :meth:`job_body`, upload :meth:`csv`)."""

    object_type: str
    operation: WriteOp
    writes: tuple[CoalescedWrite, ...]

    def job_body(self) -> dict[str, Any]:
        op = "insert" if self.operation is WriteOp.CREATE else "update"
        return {
            "object": sobject_name(self.object_type),
            "operation": op,
            "contentType": "CSV",
            "lineEnding": "LF",
        }

    def columns(self) -> list[str]:
        names = sorted({k for w in self.writes for k in w.payload if k != "Id"})
        return ["Id", *names] if self.operation is WriteOp.UPDATE else names

    def csv(self) -> str:
        """CSV with a header row. An empty cell leaves the field unchanged (Bulk 2.0); ``None`` is sent as ``#N/A``
        (set to null)."""
        columns = self.columns()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for w in self.writes:
            row = {**w.payload, "Id": w.crm_id} if self.operation is WriteOp.UPDATE else dict(w.payload)
            writer.writerow([_csv_cell(row[c]) if c in row else "" for c in columns])
        return out.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return "#N/A"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


@dataclass(frozen=True)
class PlanStep:
    writes: tuple[CoalescedWrite, ...]
    requests: tuple[ApiRequest, ...] = ()
    bulk_jobs: tuple[BulkJob, ...] = ()


@dataclass(frozen=True)
class PushPlan:
    mode: PlanMode
    steps: tuple[PlanStep, ...]
    deferred: tuple[OutboxItem, ...] = ()
    limits: BatchLimits = field(default_factory=BatchLimits)

    @property
    def writes(self) -> tuple[CoalescedWrite, ...]:
        return tuple(w for s in self.steps for w in s.writes)

    @property
    def api_calls(self) -> int:
        """Collections/composite calls (bulk jobs cost several calls each: create, upload, close, poll, results)."""
        return sum(len(s.requests) for s in self.steps)

    def without_keys(self, keys: Iterable[str], *, from_step: int = 0) -> PushPlan:
        """The plan from ``from_step`` on without the writes of ``keys`` (a failed record's later writes wait)."""
        drop = set(keys)
        writes = [[w for w in s.writes if w.key not in drop] for s in self.steps[from_step:]]
        return PushPlan(
            self.mode,
            tuple(_build_step(ws, self.limits, self.mode) for ws in writes if ws),
            self.deferred,
            self.limits,
        )


# --------------------------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------------------------


def coalesce(entries: Iterable[OutboxItem]) -> tuple[dict[str, list[CoalescedWrite]], list[OutboxItem]]:
    """Per key, the ordered runs of coalesced writes; and the deferred entries (update with no CRM id yet)."""
    by_key: dict[str, list[OutboxItem]] = {}
    for entry in entries:
        by_key.setdefault(entry.key, []).append(entry)
    runs: dict[str, list[CoalescedWrite]] = {}
    deferred: list[OutboxItem] = []
    for key, items in by_key.items():
        items.sort(key=lambda e: e.sequence)  # stable: equal sequences keep arrival order
        key_runs: list[CoalescedWrite] = []
        blocked = False
        for e in items:
            if blocked:
                deferred.append(e)
                continue
            current = key_runs[-1] if key_runs else None
            if (
                e.operation is WriteOp.UPDATE
                and e.crm_id is None
                and not (
                    current is not None
                    and current.operation is WriteOp.CREATE
                    and current.object_type == e.object_type
                )
            ):
                # Its create has not finished yet: wait (and keep every later entry of the key behind it).
                blocked = True
                deferred.append(e)
                continue
            if current is not None and _joins(current, e):
                crm_id = (current.crm_id or e.crm_id) if current.operation is WriteOp.UPDATE else None
                key_runs[-1] = CoalescedWrite(
                    key,
                    current.operation,
                    current.object_type,
                    crm_id,
                    {**current.payload, **e.payload},
                    (*current.entry_ids, e.entry_id),
                    current.first_sequence,
                    e.sequence,
                    min(current.enqueued_at, e.enqueued_at),
                )
            else:
                key_runs.append(
                    CoalescedWrite(
                        key,
                        e.operation,
                        e.object_type,
                        e.crm_id if e.operation is WriteOp.UPDATE else None,
                        dict(e.payload),
                        (e.entry_id,),
                        e.sequence,
                        e.sequence,
                        e.enqueued_at,
                    )
                )
        if key_runs:
            runs[key] = key_runs
    return runs, deferred


def _joins(current: CoalescedWrite, e: OutboxItem) -> bool:
    if e.operation is WriteOp.CREATE or e.object_type != current.object_type:
        return False
    if current.operation is WriteOp.CREATE:
        return e.crm_id is None
    return e.crm_id is None or same_id(e.crm_id, current.crm_id)


def plan_push(
    entries: Iterable[OutboxItem], limits: BatchLimits | None = None, *, backlog: int | None = None
) -> PushPlan:
    """Plan the push of ``entries`` (see the module docstring). ``backlog`` is the whole outbox size when the caller
    claimed only part of it (defaults to the number of entries)."""
    limits = limits or BatchLimits()
    entries = list(entries)
    backlog = len(entries) if backlog is None else backlog
    mode = PlanMode.BULK if backlog > limits.bulk_threshold else PlanMode.COLLECTIONS
    runs, deferred = coalesce(entries)
    depth = max((len(r) for r in runs.values()), default=0)
    order = sorted(runs, key=lambda k: (runs[k][0].enqueued_at, runs[k][0].first_sequence, k))
    steps = []
    for i in range(depth):
        writes = [runs[k][i] for k in order if i < len(runs[k])]
        steps.append(_build_step(writes, limits, mode))
    return PushPlan(mode, tuple(steps), tuple(deferred), limits)


def _build_step(writes: Sequence[CoalescedWrite], limits: BatchLimits, mode: PlanMode) -> PlanStep:
    groups: dict[tuple[str, WriteOp], list[CoalescedWrite]] = {}
    for w in writes:
        groups.setdefault((w.object_type, w.operation), []).append(w)
    collections: list[Collection] = []
    jobs: list[BulkJob] = []
    for (object_type, op), group in groups.items():
        if mode is PlanMode.BULK and op is WriteOp.UPDATE:
            for i in range(0, len(group), limits.bulk_max_rows):
                jobs.append(BulkJob(object_type, op, tuple(group[i : i + limits.bulk_max_rows])))
            continue
        upsert = limits.upsert_fields.get(object_type) if op is WriteOp.CREATE else None
        for i in range(0, len(group), limits.max_records):
            collections.append(Collection(object_type, op, tuple(group[i : i + limits.max_records]), upsert))
    per_request = limits.max_collections_per_request if limits.use_composite else 1
    requests = tuple(
        ApiRequest(tuple(collections[i : i + per_request]), limits.use_composite)
        for i in range(0, len(collections), per_request)
    )
    return PlanStep(tuple(writes), requests, tuple(jobs))


# --------------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteOutcome:
    write: CoalescedWrite
    success: bool
    crm_id: str | None = None
    created: bool = False
    errors: tuple[CrmError, ...] = ()

    @property
    def entry_ids(self) -> tuple[Any, ...]:
        return self.write.entry_ids


def collection_outcomes(
    collection: Collection, response: Any, *, http_status: int = 200
) -> list[WriteOutcome]:
    """Map an sObject Collections response (a per-record list in request order) to outcomes. A non-200 status or an
    error body fails every write of the collection with that error."""
    if (
        http_status >= 300
        or not isinstance(response, list)
        or (response and isinstance(response[0], Mapping) and "errorCode" in response[0])
    ):
        errors = tuple(parse_errors(response, http_status=http_status)) or (
            CrmError("UNKNOWN_ERROR", f"unexpected response (HTTP {http_status})", http_status=http_status),
        )
        return [WriteOutcome(w, False, w.crm_id, errors=errors) for w in collection.writes]
    outcomes = []
    for i, w in enumerate(collection.writes):
        item = response[i] if i < len(response) else None
        if not isinstance(item, Mapping):
            outcomes.append(
                WriteOutcome(w, False, w.crm_id, errors=(CrmError("UNKNOWN_ERROR", "no result for record"),))
            )
            continue
        if item.get("success"):
            created = bool(item.get("created", True)) if w.operation is WriteOp.CREATE else False
            outcomes.append(WriteOutcome(w, True, str(item.get("id") or w.crm_id or ""), created))
        else:
            outcomes.append(
                WriteOutcome(w, False, w.crm_id, errors=tuple(parse_errors(item.get("errors") or [])))
            )
    return outcomes


def composite_outcomes(request: ApiRequest, response: Any, *, http_status: int = 200) -> list[WriteOutcome]:
    """Map a response of :meth:`ApiRequest.body` (composite or single collections call) to per-write outcomes."""
    if not request.composite:
        return collection_outcomes(request.collections[0], response, http_status=http_status)
    subs: dict[str, Mapping[str, Any]] = {}
    if http_status < 300 and isinstance(response, Mapping):
        for sub in response.get("compositeResponse") or ():
            subs[str(sub.get("referenceId"))] = sub
    outcomes: list[WriteOutcome] = []
    for i, c in enumerate(request.collections):
        sub = subs.get(f"c{i}")
        if sub is None:
            outcomes.extend(
                collection_outcomes(c, response, http_status=http_status if http_status >= 300 else 500)
            )
        else:
            outcomes.extend(
                collection_outcomes(c, sub.get("body"), http_status=int(sub.get("httpStatusCode") or 500))
            )
    return outcomes


def bulk_outcomes(
    job: BulkJob,
    successful: Iterable[Mapping[str, str]],
    failed: Iterable[Mapping[str, str]],
) -> list[WriteOutcome]:
    """Map Bulk 2.0 ``successfulResults`` / ``failedResults`` rows (``csv.DictReader`` dicts) back by ``Id``. Writes in
    neither list were not processed and come back as a transient ``UNPROCESSED`` failure (retry them)."""
    ok = {_norm_id(r.get("sf__Id") or r.get("Id")) for r in successful}
    bad: dict[str, str] = {}
    for r in failed:
        bad[_norm_id(r.get("Id") or r.get("sf__Id"))] = r.get("sf__Error") or "unknown error"
    outcomes = []
    for w in job.writes:
        key = _norm_id(w.crm_id)
        if key in ok:
            outcomes.append(WriteOutcome(w, True, w.crm_id))
        elif key in bad:
            outcomes.append(WriteOutcome(w, False, w.crm_id, errors=(CrmError.from_bulk(bad[key]),)))
        else:
            outcomes.append(
                WriteOutcome(
                    w, False, w.crm_id, errors=(CrmError("UNPROCESSED", "not processed by the bulk job"),)
                )
            )
    return outcomes


def _norm_id(value: str | None) -> str:
    return id18(value or "").lower()


def outcomes_by_entry(outcomes: Iterable[WriteOutcome]) -> dict[Any, WriteOutcome]:
    """Outbox entry id → the outcome of the write it was coalesced into."""
    return {entry_id: o for o in outcomes for entry_id in o.write.entry_ids}
