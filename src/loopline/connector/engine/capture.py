"""CRM → Loopline change capture maths ([R22], [R25]).

Per object a :class:`Watermark` on ``SystemModstamp``. Each poll asks for ``SystemModstamp >= watermark - overlap``
ordered by ``SystemModstamp, Id`` through ``queryAll`` (deleted records come back with ``IsDeleted = true``, [R31]).
Records seen inside the overlap are de-duplicated by ``(Id, SystemModstamp)`` (:meth:`Watermark.filter_new`).
After processing, :meth:`Watermark.advance` moves the watermark to the latest processed modstamp — never past a record
still pending — and keeps the keys still inside the overlap. Many records with one modstamp spread over pages are
safe: the next query starts at or before that modstamp and the keys skip the ones already processed.

A quiet object's window would otherwise stay anchored at its last change: every idle poll would re-read everything
changed in the overlap before it (after a bulk push, thousands of records and a page call each). So a poll that
completed settles the window (:meth:`Watermark.settle`): whatever changed more than the overlap (plus a margin for
clock skew) before that poll started was visible to it and has been read, so later windows start no earlier than that.

Several objects are polled in one composite call (≤5 queries, one API call): :func:`composite_poll_body`. Follow
each result's ``nextRecordsUrl`` with plain GETs.

:func:`next_poll_interval` is the adaptive poll interval: tight when busy, backing off when idle, stretched by the
budget ([R27]) and floored so a small org's daily allowance is not eaten by polling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from .model import (
    CrmObject,
    CrmRecord,
    FieldMapping,
    as_utc,
    format_datetime,
    id18,
    mapped_crm_fields,
    sobject_name,
)

DEFAULT_OVERLAP = timedelta(seconds=60)

#: System fields read on every poll, per object (besides the mapped fields).
SYSTEM_FIELDS: dict[str, tuple[str, ...]] = {
    CrmObject.LEAD.value: (
        "Id",
        "SystemModstamp",
        "LastModifiedById",
        "CreatedDate",
        "CreatedById",
        "IsDeleted",
        "OwnerId",
        "IsConverted",
        "ConvertedContactId",
        "ConvertedAccountId",
        "MasterRecordId",
    ),
    CrmObject.CONTACT.value: (
        "Id",
        "SystemModstamp",
        "LastModifiedById",
        "CreatedDate",
        "CreatedById",
        "IsDeleted",
        "OwnerId",
        "AccountId",
        "MasterRecordId",
    ),
    CrmObject.PERSON_ACCOUNT.value: (
        "Id",
        "SystemModstamp",
        "LastModifiedById",
        "CreatedDate",
        "CreatedById",
        "IsDeleted",
        "OwnerId",
        "IsPersonAccount",
        "PersonContactId",
        "MasterRecordId",
    ),
}

Key = tuple[str, str]  # (18-char id lower-cased, SystemModstamp ISO)


def record_key(record_id: str, modstamp: datetime) -> Key:
    return (id18(record_id).lower(), as_utc(modstamp).isoformat())


@dataclass(frozen=True)
class Watermark:
    """Capture position of one object. JSON-friendly via :meth:`to_json`/:meth:`from_json` (Django ``Watermark``:
    ``modstamp`` column + ``recent_keys`` list)."""

    object_type: str
    modstamp: datetime | None = None
    recent_keys: frozenset[Key] = field(default_factory=frozenset)
    #: Every record changed before this has been read by a completed poll (:meth:`settle`).
    settled: datetime | None = None

    def since(self, overlap: timedelta = DEFAULT_OVERLAP) -> datetime | None:
        """Lower bound of the next poll window (``None`` = from the beginning: use the initial import instead)."""
        if self.modstamp is None:
            return None
        bound = as_utc(self.modstamp) - overlap
        return max(bound, self.settled) if self.settled is not None else bound

    def settle(self, poll_started_at: datetime, overlap: timedelta = DEFAULT_OVERLAP,
               clock_margin: timedelta | None = None) -> Watermark:
        """After a poll that read every page and applied every record: records changed before ``poll_started_at``
        minus the overlap (a late commit shows within it) minus ``clock_margin`` (our clock against the CRM's;
        default: the overlap again) were all visible to that poll. Never moves backwards; keys below the new window
        are dropped. Call it only when the whole poll completed — a poll stopped half-way leaves the window as is."""
        margin = overlap if clock_margin is None else clock_margin
        settled = as_utc(poll_started_at) - overlap - margin
        if self.settled is not None and self.settled >= settled:
            return self
        floor = self.since(overlap)
        floor = settled if floor is None else max(floor, settled)
        keys = frozenset(k for k in self.recent_keys if datetime.fromisoformat(k[1]) >= floor)
        return Watermark(self.object_type, self.modstamp, keys, settled)

    def filter_new(self, records: Iterable[CrmRecord]) -> tuple[list[CrmRecord], int]:
        """Records not seen yet (by ``(Id, SystemModstamp)``, also de-duplicated within the batch), and how many were
        dropped as already seen."""
        seen = set(self.recent_keys)
        fresh: list[CrmRecord] = []
        dropped = 0
        for r in records:
            key = record_key(r.id, r.system_modstamp)
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            fresh.append(r)
        return fresh, dropped

    def advance(
        self,
        processed: Iterable[CrmRecord | tuple[str, datetime]],
        *,
        pending: Iterable[CrmRecord | tuple[str, datetime]] = (),
        overlap: timedelta = DEFAULT_OVERLAP,
    ) -> Watermark:
        """The watermark after ``processed`` records were applied. It moves to the latest processed modstamp but never
        past the earliest ``pending`` one (fetched, not yet applied), and never backwards. Keys older than the
        overlap window are dropped (they cannot come back in a later poll)."""
        items = [_pair(p) for p in processed]
        waiting = [_pair(p)[1] for p in pending]
        candidate = max((m for _, m in items), default=None)
        if candidate is not None and waiting:
            candidate = min(candidate, min(waiting))
        current = as_utc(self.modstamp) if self.modstamp is not None else None
        new = current if candidate is None or (current is not None and candidate < current) else candidate
        keys = set(self.recent_keys) | {record_key(i, m) for i, m in items}
        if new is not None:
            cutoff = new - overlap
            if self.settled is not None:
                cutoff = max(cutoff, self.settled)
            keys = {k for k in keys if datetime.fromisoformat(k[1]) >= cutoff}
        return Watermark(self.object_type, new, frozenset(keys), self.settled)

    def to_json(self) -> dict[str, Any]:
        """``recent_keys`` carries ``settled`` as one extra ``["*settled", ISO]`` pair (no id looks like that), so the
        ``Watermark`` row's two columns hold the whole position."""
        keys = sorted([list(k) for k in self.recent_keys])
        if self.settled is not None:
            keys.append([SETTLED_KEY, self.settled.isoformat()])
        return {
            "object_type": self.object_type,
            "modstamp": self.modstamp.isoformat() if self.modstamp else None,
            "recent_keys": keys,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Watermark:
        stamp = data.get("modstamp")
        keys: set[Key] = set()
        settled = None
        for a, b in data.get("recent_keys") or ():
            if a == SETTLED_KEY:
                settled = as_utc(datetime.fromisoformat(str(b)))
            else:
                keys.add((str(a), str(b)))
        return cls(
            str(data["object_type"]),
            as_utc(datetime.fromisoformat(stamp)) if stamp else None,
            frozenset(keys),
            settled,
        )


SETTLED_KEY = "*settled"


def _pair(item: CrmRecord | tuple[str, datetime]) -> tuple[str, datetime]:
    if isinstance(item, CrmRecord):
        return item.id, item.system_modstamp
    return item[0], as_utc(item[1])


# --------------------------------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PollQuery:
    object_type: str
    soql: str
    since: datetime | None
    query_all: bool = True  # include deleted records ([R31])

    def url(self, api_version: str = "59.0") -> str:
        resource = "queryAll" if self.query_all else "query"
        return f"/services/data/v{api_version}/{resource}?q={quote(self.soql, safe='')}"


def select_fields(object_type: str, mappings: Iterable[FieldMapping], extra: Iterable[str] = ()) -> list[str]:
    """System fields + mapped CRM fields + ``extra`` (e.g. a sharing-rule field, [R35]), without duplicates."""
    names: dict[str, None] = {}
    for name in (
        *SYSTEM_FIELDS.get(object_type, ("Id", "SystemModstamp")),
        *mapped_crm_fields(mappings, object_type),
        *extra,
    ):
        if name.lower() not in {n.lower() for n in names}:
            names[name] = None
    return list(names)


def build_soql(
    object_type: str,
    fields: Sequence[str],
    since: datetime | None,
    *,
    until: datetime | None = None,
    limit: int | None = None,
) -> str:
    """``SELECT … FROM <object> WHERE SystemModstamp >= <since> ORDER BY SystemModstamp, Id``; person accounts are
    ``Account`` rows with ``IsPersonAccount = true``."""
    where: list[str] = []
    if object_type == CrmObject.PERSON_ACCOUNT:
        where.append("IsPersonAccount = true")
    if since is not None:
        where.append(f"SystemModstamp >= {format_datetime(since)}")
    if until is not None:
        where.append(f"SystemModstamp < {format_datetime(until)}")
    soql = f"SELECT {', '.join(fields)} FROM {sobject_name(object_type)}"
    if where:
        soql += " WHERE " + " AND ".join(where)
    soql += " ORDER BY SystemModstamp, Id"
    if limit is not None:
        soql += f" LIMIT {int(limit)}"
    return soql


def poll_query(
    watermark: Watermark,
    mappings: Iterable[FieldMapping],
    *,
    overlap: timedelta = DEFAULT_OVERLAP,
    extra_fields: Iterable[str] = (),
    limit: int | None = None,
) -> PollQuery:
    since = watermark.since(overlap)
    fields = select_fields(watermark.object_type, mappings, extra_fields)
    return PollQuery(
        watermark.object_type, build_soql(watermark.object_type, fields, since, limit=limit), since
    )


def composite_poll_body(queries: Sequence[PollQuery], api_version: str = "59.0") -> list[dict[str, Any]]:
    """Composite request bodies polling the objects, ≤5 queries each (each body = one API call). Reference ids are
    the object types."""
    bodies = []
    for i in range(0, len(queries), 5):
        chunk = queries[i : i + 5]
        bodies.append(
            {
                "allOrNone": False,
                "compositeRequest": [
                    {"method": "GET", "url": q.url(api_version), "referenceId": q.object_type} for q in chunk
                ],
            }
        )
    return bodies


# --------------------------------------------------------------------------------------------------------------------
# Adaptive poll interval
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PollSettings:
    base: timedelta = timedelta(seconds=5)
    minimum: timedelta = timedelta(seconds=2)
    maximum: timedelta = timedelta(minutes=5)
    idle_factor: float = 2.0
    busy_records: int = 200  # a poll returning at least this many records counts as busy

    def __post_init__(self) -> None:
        if not self.minimum <= self.base <= self.maximum:
            raise ValueError("need minimum <= base <= maximum")


def budget_floor(
    org_daily_max: int, *, share: float = 0.2, poll_fraction: float = 0.5, calls_per_poll: int = 1
) -> timedelta:
    """The shortest interval that keeps polling within ``poll_fraction`` of the connector's daily share. For a small
    org (15,000 requests/day, 20% share, half for polling) this is ~58 s; for a large one it is below the base."""
    allowance = org_daily_max * share * poll_fraction
    if allowance <= 0:
        return timedelta(hours=1)
    return timedelta(seconds=86400 * calls_per_poll / allowance)


def next_poll_interval(
    recent_counts: Sequence[int],
    settings: PollSettings | None = None,
    *,
    budget_stretch: float = 1.0,
    floor: timedelta = timedelta(0),
) -> timedelta:
    """The wait before the next poll, from the records fetched by recent polls (oldest first).

    Busy (last poll ≥ ``busy_records``) → ``minimum``; some records → ``base``; idle → ``base`` × ``idle_factor`` per
    consecutive idle poll, up to ``maximum``. Then multiplied by ``budget_stretch`` (:class:`~.budget.BudgetDecision`)
    and never below ``floor`` (:func:`budget_floor`).
    """
    settings = settings or PollSettings()
    if not recent_counts:
        interval = settings.base
    elif recent_counts[-1] >= settings.busy_records:
        interval = settings.minimum
    elif recent_counts[-1] > 0:
        interval = settings.base
    else:
        idle = 0
        for count in reversed(recent_counts):
            if count:
                break
            idle += 1
        seconds = settings.base.total_seconds() * settings.idle_factor ** min(idle, 64)
        interval = min(settings.maximum, timedelta(seconds=seconds))
    interval = interval * max(1.0, budget_stretch)
    return max(interval, floor)
