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
    #: The keys (a subset of ``recent_keys``) read as last modified by the connector user — our own writes' echoes
    #: and other business units' writes through the same integration user (:class:`OverlapCount`).
    own: frozenset[Key] = field(default_factory=frozenset)

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
        return Watermark(self.object_type, self.modstamp, keys, settled, self.own & keys)

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
        own_user: str = "",
    ) -> Watermark:
        """The watermark after ``processed`` records were applied (``own_user``: the connector user's id, to tell
        its writes apart). It moves to the latest processed modstamp but never
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
        own = set(self.own)
        if own_user:
            mine = id18(own_user).lower()
            for p in processed:
                if isinstance(p, CrmRecord) and p.last_modified_by_id and id18(p.last_modified_by_id).lower() == mine:
                    own.add(record_key(p.id, p.system_modstamp))
        if new is not None:
            cutoff = new - overlap
            if self.settled is not None:
                cutoff = max(cutoff, self.settled)
            keys = {k for k in keys if datetime.fromisoformat(k[1]) >= cutoff}
        kept = frozenset(keys)
        return Watermark(self.object_type, new, kept, self.settled, frozenset(own) & kept)

    def to_json(self) -> dict[str, Any]:
        """``recent_keys`` carries ``settled`` as one extra ``["*settled", ISO]`` pair (no id looks like that), so the
        ``Watermark`` row's two columns hold the whole position."""
        keys: list[list[Any]] = sorted([list(k) + ([1] if k in self.own else []) for k in self.recent_keys])
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
        own: set[Key] = set()
        settled = None
        for a, b, *flag in data.get("recent_keys") or ():
            if a == SETTLED_KEY:
                settled = as_utc(datetime.fromisoformat(str(b)))
            else:
                keys.add((str(a), str(b)))
                if flag:
                    own.add((str(a), str(b)))
        return cls(
            str(data["object_type"]),
            as_utc(datetime.fromisoformat(stamp)) if stamp else None,
            frozenset(keys),
            settled,
            frozenset(own),
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
    conditions: Sequence[str] = (),
    ordered: bool = True,
) -> str:
    """``SELECT … FROM <object> WHERE SystemModstamp >= <since> ORDER BY SystemModstamp, Id``; person accounts are
    ``Account`` rows with ``IsPersonAccount = true``. ``conditions``: more SOQL conditions (ANDed). ``ordered=False``
    for bulk query jobs, where the order does not matter and costs the CRM a sort."""
    where: list[str] = list(conditions)
    if object_type == CrmObject.PERSON_ACCOUNT:
        where.append("IsPersonAccount = true")
    if since is not None:
        where.append(f"SystemModstamp >= {format_datetime(since)}")
    if until is not None:
        where.append(f"SystemModstamp < {format_datetime(until)}")
    soql = f"SELECT {', '.join(fields)} FROM {sobject_name(object_type)}"
    if where:
        soql += " WHERE " + " AND ".join(where)
    if ordered:
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
    since: datetime | None = None,
    until: datetime | None = None,
    conditions: Sequence[str] = (),
    recount: OverlapCount | None = None,
) -> PollQuery:
    """The poll of one object from ``since`` (default: the watermark less the overlap) up to ``until`` (excluded).
    With ``recount`` the connector user's records in the overlap window are left out (they are counted instead)."""
    since = watermark.since(overlap) if since is None else since
    fields = select_fields(watermark.object_type, mappings, extra_fields)
    if recount is not None:
        since = recount.since
        conditions = [*conditions, f"(SystemModstamp >= {format_datetime(recount.until)} OR "
                                   f"LastModifiedById != {_soql_id(recount.own_user)})"]
    soql = build_soql(watermark.object_type, fields, since, until=until, limit=limit, conditions=conditions)
    return PollQuery(watermark.object_type, soql, since)


#: Above this many of the connector user's records inside the overlap window, a poll stops reading them again: it reads
#: the window's other records and everything from the watermark on, and asks the CRM, in the same composite call, how
#: many of the connector user's records the window holds (``SELECT COUNT()``). After a burst of our own writes (a bulk
#: push's echoes) a poll stays at one call instead of one page call per 2,000 records for as long as the burst stays
#: in the window.
RECOUNT_ABOVE = 500


def _to_ms(value: datetime) -> datetime:
    """The instant a SOQL literal of ``value`` names (:func:`format_datetime` keeps milliseconds)."""
    value = as_utc(value)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _soql_id(value: str) -> str:
    return "'" + "".join(c for c in value if c.isalnum()) + "'"


@dataclass(frozen=True)
class OverlapCount:
    """The connector user's records in the overlap window ``[since, until)``, checked by a count ([R22]).

    ``expected`` holds the ids whose latest read state lies in the window and was written by the connector user. No
    such record committed late into the window when the CRM's count equals ``expected`` less those the poll read
    again (written since: they left the count). A late commit, or a record that moved out between the count and
    the read, makes the numbers differ: then those records are read in full, as before. Records other users wrote
    are always read again. Left undetected: a record already read in the window, written again by the connector user
    in a transaction that commits late with a stamp still inside the window (its echo is not read; a later change
    or the reconciliation brings any trigger-made change)."""

    object_type: str
    since: datetime
    until: datetime
    own_user: str
    expected: frozenset[str]
    conditions: tuple[str, ...] = ()

    def window(self) -> list[str]:
        """SOQL conditions selecting the connector user's records in the window (person-account filter aside)."""
        return [*self.conditions, f"SystemModstamp >= {format_datetime(self.since)}",
                f"SystemModstamp < {format_datetime(self.until)}", f"LastModifiedById = {_soql_id(self.own_user)}"]

    def count_soql(self) -> str:
        person = ["IsPersonAccount = true"] if self.object_type == CrmObject.PERSON_ACCOUNT else []
        return f"SELECT COUNT() FROM {sobject_name(self.object_type)} WHERE {' AND '.join(person + self.window())}"

    def url(self, api_version: str = "59.0") -> str:
        return f"/services/data/v{api_version}/queryAll?q={quote(self.count_soql(), safe='')}"

    def complete(self, crm_count: int, read_ids: Iterable[str]) -> bool:
        """``read_ids``: every record the poll read. An expected record among them was written again since — from
        ``until`` on, or by another user inside the window — so the count no longer includes it."""
        moved = {id18(i).lower() for i in read_ids}
        return crm_count == len(self.expected - moved)


def overlap_count(watermark: Watermark, own_user: str, overlap: timedelta = DEFAULT_OVERLAP, *,
                  conditions: Sequence[str] = (), threshold: int | None = None) -> OverlapCount | None:
    """An :class:`OverlapCount` when the window holds more than ``threshold`` (default :data:`RECOUNT_ABOVE`) of the
    connector user's records already read, else ``None`` (read the whole window again: it is cheap)."""
    since = watermark.since(overlap)
    if since is None or watermark.modstamp is None or not own_user or not watermark.own:
        return None
    since, until = _to_ms(since), _to_ms(watermark.modstamp)
    latest: dict[str, Key] = {}
    for key in watermark.recent_keys:
        if key[0] not in latest or datetime.fromisoformat(key[1]) > datetime.fromisoformat(latest[key[0]][1]):
            latest[key[0]] = key
    expected = frozenset(rid for rid, key in latest.items()
                         if key in watermark.own and since <= datetime.fromisoformat(key[1]) < until)
    if len(expected) <= (RECOUNT_ABOVE if threshold is None else threshold):
        return None
    return OverlapCount(watermark.object_type, since, until, own_user, expected, tuple(conditions))


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
