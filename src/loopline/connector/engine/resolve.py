"""Field resolution — the heart of the connector ([R16]–[R18], [R13], [R19], [R24]).

:func:`resolve` compares one prospect with the CRM record it syncs with and says, field by field, what to write
where. Both sides are normalised first (:mod:`.values`), so equal values never produce a write, and applying a
resolution to both sides and resolving again yields no writes (no ping-pong).

Per mapped field, in order:

1. equal (normalised) → nothing;
2. the *winner*:
   * fixed ``TO_CRM`` (score, grade, campaign) → Loopline; fixed ``TO_LOOPLINE`` (owner) or a CRM field that is
     read-only on this object (Contact company = ``Account.Name``) → the CRM ([R18]);
   * with a baseline (``SyncState.baseline``) and only one side changed since it → that side (not a conflict);
   * otherwise the behaviour ([R16]): ``USE_LOOPLINE`` / ``USE_CRM``; ``MOST_RECENT_RECORD`` compares the CRM's
     ``SystemModstamp`` with the prospect's record change time (:meth:`ProspectSnapshot.last_changed_at` over the
     two-way mapped fields); ``MOST_RECENT_FIELD`` compares ``field_changed_at[field]`` with the CRM field's history
     time (``SystemModstamp`` when the org has no field history). Exact ties go to the CRM.
3. **blank never overwrites filled** ([R17]): if the winner's value is blank, the other side's value fills it —
   except CRM → Loopline blanks when ``blank_crm_values_overwrite`` is on. Fixed fields never flow backwards.

Whole-record rules: a converted lead is never written to and its values are not read ([R13]) — the prospect follows
the converted contact (see :mod:`.lifecycle`); deleted records, do-not-sync and CRM-deleted prospects resolve to no
writes with a skip reason; in *unique email* mode the email follows :func:`.matching.decide_email_change` ([R19]).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from .matching import EmailAction, decide_email_change
from .model import (
    NOT_PROVIDED,
    ConnectorSettings,
    CrmRecord,
    Direction,
    FieldMapping,
    MatchingMode,
    ProspectSnapshot,
    Side,
    SkipReason,
    SyncBehaviour,
    SyncState,
)
from .values import (
    crm_hash,
    crm_kinds,
    field_digest,
    loopline_hash,
    normalise,
    to_crm_value,
    to_loopline_value,
    values_hash,
)


class FieldOutcome(StrEnum):
    EQUAL = "equal"
    TO_LOOPLINE = "to_loopline"
    TO_CRM = "to_crm"
    KEPT = "kept"  # values differ but nothing may be written (read-only / fixed / blank rules)
    NOT_MAPPED = "not_mapped"  # no CRM field on this object


@dataclass(frozen=True)
class FieldDecision:
    loopline_field: str
    crm_field: str | None
    outcome: FieldOutcome
    winner: Side | None
    reason: str


@dataclass(frozen=True)
class Resolution:
    """What to write. ``to_loopline`` holds prospect field → Django-ready value; ``to_crm`` CRM field → JSON-native
    value (validate it with :mod:`.validate` before sending, [R20]).

    After applying the writes, store on the link (``SyncState``): ``crm_hash_after`` as ``last_written_hash`` once the
    CRM write succeeded (or as ``last_read_hash`` when nothing was written), ``baseline_after`` as ``baseline`` and the
    record's ``SystemModstamp`` as ``last_crm_modstamp``. Stamp each written prospect field's ``field_changed_at``
    with ``loopline_changed_at[field]`` (the CRM-side change time), not "now", so *most recent field* stays honest.
    """

    to_loopline: dict[str, Any] = field(default_factory=dict)
    to_crm: dict[str, Any] = field(default_factory=dict)
    decisions: tuple[FieldDecision, ...] = ()
    reasons: tuple[str, ...] = ()
    skip_reason: SkipReason | None = None
    unlink: bool = (
        False  # [R19]: stop syncing with this record (apply ``Link.cleared_for(record)``); the next
    )
    # push matches by the prospect's email or creates a new record
    crm_hash_after: str = ""
    loopline_hash_after: str = ""
    baseline_after: dict[str, str] = field(default_factory=dict)
    loopline_changed_at: dict[str, datetime] = field(default_factory=dict)

    @property
    def has_writes(self) -> bool:
        return bool(self.to_loopline or self.to_crm)

    @property
    def skipped(self) -> bool:
        return self.skip_reason is not None


def _skip(reason: SkipReason, text: str) -> Resolution:
    return Resolution(reasons=(text,), skip_reason=reason)


def _later(loopline_time: datetime | None, crm_time: datetime) -> Side:
    """The side that changed last; a tie (or no Loopline time) goes to the CRM."""
    if loopline_time is not None and loopline_time > crm_time:
        return Side.LOOPLINE
    return Side.CRM


def resolve(
    prospect: ProspectSnapshot,
    crm_record: CrmRecord,
    mappings: Sequence[FieldMapping] | Iterable[FieldMapping],
    settings: ConnectorSettings,
    state: SyncState | None = None,
) -> Resolution:
    """Resolve every mapped field between ``prospect`` and ``crm_record`` (see the module docstring)."""
    mappings = tuple(mappings)
    record = crm_record
    if prospect.do_not_sync:
        return _skip(SkipReason.DO_NOT_SYNC, "prospect is marked 'do not sync with CRM' [R15]")
    if prospect.crm_deleted:
        return _skip(SkipReason.CRM_DELETED, "deleted in the CRM; will not be re-synced [R31]")
    if record.is_deleted:
        return _skip(SkipReason.CRM_DELETED, f"{record.object_type} {record.id} is deleted in the CRM [R31]")
    if record.is_lead and record.is_converted:
        return _skip(
            SkipReason.CONVERTED_LEAD,
            f"lead {record.id} is converted (contact {record.converted_contact_id}); never written again [R13]",
        )

    object_type = record.object_type
    baseline = state.baseline if state is not None else None
    two_way = [
        m.loopline_field for m in mappings if m.direction is Direction.BOTH and m.crm_field(object_type)
    ]
    loopline_record_time = prospect.last_changed_at(two_way)
    unique_email = settings.matching_mode is MatchingMode.UNIQUE_EMAIL

    to_loopline: dict[str, Any] = {}
    to_crm: dict[str, Any] = {}
    decisions: list[FieldDecision] = []
    reasons: list[str] = []
    baseline_after: dict[str, str] = dict(baseline or {})
    changed_at: dict[str, datetime] = {}

    for m in mappings:
        lf = m.loopline_field
        cf = m.crm_field(object_type)
        if cf is None:
            decisions.append(
                FieldDecision(lf, None, FieldOutcome.NOT_MAPPED, None, f"not mapped on {object_type}")
            )
            continue
        if unique_email and lf == "email":
            change = decide_email_change(prospect, record, settings, state, crm_field=cf)
            if change.action is EmailAction.UNLINK:
                return Resolution(
                    reasons=(change.reason,), skip_reason=SkipReason.EMAIL_CHANGED_UNLINKED, unlink=True
                )
            decision = _apply_email(
                change.action, change.email, change.reason, m, cf, record, to_loopline, to_crm
            )
            decisions.append(decision)
            if decision.outcome is FieldOutcome.TO_LOOPLINE:
                changed_at[lf] = record.field_changed_at(cf)
            if decision.outcome is not FieldOutcome.KEPT:
                baseline_after[lf] = field_digest(m.kind, change.email or prospect.email)
            if decision.outcome in (FieldOutcome.TO_CRM, FieldOutcome.TO_LOOPLINE):
                reasons.append(f"{lf}: {decision.reason}")
            continue

        raw_crm = record.values.get(cf)
        lv = normalise(m.kind, prospect.values.get(lf))
        cv = normalise(m.kind, raw_crm)
        if lv == cv:
            decisions.append(FieldDecision(lf, cf, FieldOutcome.EQUAL, None, "equal"))
            baseline_after[lf] = field_digest(m.kind, lv)
            continue

        crm_writable = m.crm_writable(object_type)
        loopline_writable = m.direction is not Direction.TO_CRM
        winner, why = _winner(m, lv, cv, cf, prospect, record, loopline_record_time, crm_writable, baseline)

        outcome = FieldOutcome.KEPT
        if winner is Side.LOOPLINE:
            if lv is None:  # [R17] blank never overwrites: the CRM's value fills Loopline
                if loopline_writable:
                    outcome, why = (
                        FieldOutcome.TO_LOOPLINE,
                        f"{why}; Loopline blank, filled from the CRM [R17]",
                    )
                else:
                    why = f"{why}; Loopline blank, the CRM value is kept [R17][R18]"
            elif crm_writable:
                outcome = FieldOutcome.TO_CRM
            else:
                why = f"{why}; CRM field read-only on {object_type}"
        else:
            if cv is None:
                overwrite = (
                    settings.blank_crm_values_overwrite
                    and loopline_writable
                    and str(raw_crm or "").strip() != NOT_PROVIDED
                )
                if overwrite:
                    outcome, why = FieldOutcome.TO_LOOPLINE, f"{why}; CRM blank overwrites (BU setting) [R17]"
                elif crm_writable and m.direction is Direction.BOTH:
                    outcome, why = FieldOutcome.TO_CRM, f"{why}; CRM blank, filled from Loopline [R17]"
                else:
                    why = f"{why}; CRM blank, the Loopline value is kept [R17]"
            elif loopline_writable:
                outcome = FieldOutcome.TO_LOOPLINE

        if outcome is FieldOutcome.TO_CRM:
            to_crm[cf] = to_crm_value(m.kind, prospect.values.get(lf))
            baseline_after[lf] = field_digest(m.kind, lv)
            reasons.append(f"{lf} → {cf}: {why}")
        elif outcome is FieldOutcome.TO_LOOPLINE:
            to_loopline[lf] = to_loopline_value(m.kind, raw_crm)
            changed_at[lf] = record.field_changed_at(cf)
            baseline_after[lf] = field_digest(m.kind, cv)
            reasons.append(f"{cf} → {lf}: {why}")
        decisions.append(FieldDecision(lf, cf, outcome, winner, why))

    crm_after = {**record.values, **to_crm}
    loopline_after = {**prospect.values, **to_loopline}
    return Resolution(
        to_loopline=to_loopline,
        to_crm=to_crm,
        decisions=tuple(decisions),
        reasons=tuple(reasons) or ("no differences",),
        crm_hash_after=crm_hash(crm_after, mappings, object_type),
        loopline_hash_after=loopline_hash(loopline_after, mappings),
        baseline_after=baseline_after,
        loopline_changed_at=changed_at,
    )


def _winner(
    m: FieldMapping,
    lv: Any,
    cv: Any,
    crm_field: str,
    prospect: ProspectSnapshot,
    record: CrmRecord,
    loopline_record_time: datetime | None,
    crm_writable: bool,
    baseline: Mapping[str, str] | None,
) -> tuple[Side, str]:
    if m.direction is Direction.TO_CRM:
        return Side.LOOPLINE, "fixed field: Loopline → CRM [R18]"
    if m.direction is Direction.TO_LOOPLINE:
        return Side.CRM, "fixed field: CRM → Loopline [R18]"
    if not crm_writable:
        return Side.CRM, f"CRM field {crm_field} is read-only on {record.object_type}"
    if baseline is not None and m.loopline_field in baseline:
        base = baseline[m.loopline_field]
        loopline_same = field_digest(m.kind, lv) == base
        crm_same = field_digest(m.kind, cv) == base
        if loopline_same and not crm_same:
            return Side.CRM, "only the CRM changed since the last sync"
        if crm_same and not loopline_same:
            return Side.LOOPLINE, "only Loopline changed since the last sync"
    behaviour = m.behaviour
    if behaviour is SyncBehaviour.USE_LOOPLINE:
        return Side.LOOPLINE, "use Loopline's value [R16]"
    if behaviour is SyncBehaviour.USE_CRM:
        return Side.CRM, "use the CRM's value [R16]"
    if behaviour is SyncBehaviour.MOST_RECENT_FIELD:
        loopline_time = prospect.field_changed_at.get(m.loopline_field) or loopline_record_time
        side = _later(loopline_time, record.field_changed_at(crm_field))
        return side, f"most recently updated field: {side.value} [R16]"
    side = _later(loopline_record_time, record.system_modstamp)
    return side, f"most recently updated record: {side.value} [R16]"


def _apply_email(
    action: EmailAction,
    email: str,
    reason: str,
    m: FieldMapping,
    crm_field: str,
    record: CrmRecord,
    to_loopline: dict[str, Any],
    to_crm: dict[str, Any],
) -> FieldDecision:
    lf = m.loopline_field
    if action in (EmailAction.FILL_LOOPLINE, EmailAction.UPDATE_PROSPECT):
        to_loopline[lf] = email
        return FieldDecision(lf, crm_field, FieldOutcome.TO_LOOPLINE, Side.CRM, reason)
    if action in (EmailAction.FILL_CRM, EmailAction.PUSH_TO_CRM):
        if m.crm_writable(record.object_type):
            to_crm[crm_field] = email
            return FieldDecision(lf, crm_field, FieldOutcome.TO_CRM, Side.LOOPLINE, reason)
        return FieldDecision(
            lf, crm_field, FieldOutcome.KEPT, Side.LOOPLINE, f"{reason}; CRM field read-only"
        )
    return FieldDecision(lf, crm_field, FieldOutcome.EQUAL, None, reason)


# --------------------------------------------------------------------------------------------------------------------
# Echo suppression ([R24])
# --------------------------------------------------------------------------------------------------------------------


class EchoVerdict(StrEnum):
    NEW = "new"  # process it
    ECHO = "echo"  # our own write coming back
    ALREADY_SEEN = "already_seen"  # this SystemModstamp (or an older one) was processed already
    UNCHANGED = "unchanged"  # no mapped field changed since the last read


@dataclass(frozen=True)
class EchoCheck:
    verdict: EchoVerdict
    reason: str

    @property
    def skip(self) -> bool:
        return self.verdict is not EchoVerdict.NEW

    @property
    def skip_reason(self) -> SkipReason | None:
        return {
            EchoVerdict.ECHO: SkipReason.ECHO,
            EchoVerdict.ALREADY_SEEN: SkipReason.ALREADY_SEEN,
            EchoVerdict.UNCHANGED: SkipReason.UNCHANGED,
        }.get(self.verdict)


def is_echo(
    crm_record: CrmRecord,
    state: SyncState | None,
    connector_user_id: str,
    mappings: Sequence[FieldMapping] | Iterable[FieldMapping],
    *,
    client_id: str = "loopline",
) -> EchoCheck:
    """Whether an incoming CRM change should be skipped ([R24], [R25]).

    * ``SystemModstamp`` not newer than the last processed one → already seen (replayed poll window);
    * mapped values hash equal to the last-written hash → our own write coming back;
    * last modified by the connector user (or a CDC event with ``client=<client_id>``) and the mapped values equal
      what we last read or wrote → nothing new;
    * mapped values equal the last read → unchanged (a change to unmapped fields only).
    A change by the connector user *with* new mapped values (e.g. a CRM workflow running as that user) is processed.
    """
    if state is None:
        return EchoCheck(EchoVerdict.NEW, "no previous sync")
    mappings = tuple(mappings)
    if state.last_crm_modstamp is not None and crm_record.system_modstamp <= state.last_crm_modstamp:
        return EchoCheck(EchoVerdict.ALREADY_SEEN, "SystemModstamp not newer than the last processed one")
    current = crm_hash(crm_record.values, mappings, crm_record.object_type)
    if state.last_written_hash and current == state.last_written_hash:
        return EchoCheck(EchoVerdict.ECHO, "values equal what the connector last wrote")
    ours = (connector_user_id and crm_record.last_modified_by_id == connector_user_id) or (
        crm_record.client_id is not None and crm_record.client_id == client_id
    )
    if state.last_read_hash and current == state.last_read_hash:
        if ours:
            return EchoCheck(EchoVerdict.ECHO, "modified by the connector user; no mapped value changed")
        return EchoCheck(EchoVerdict.UNCHANGED, "no mapped field changed")
    return EchoCheck(EchoVerdict.NEW, "mapped values changed")


def adopt_pending_write(
    pending: Mapping[str, Any],
    crm_record: CrmRecord,
    mappings: Iterable[FieldMapping],
    baseline: Mapping[str, str] | None,
    last_written_hash: str,
) -> tuple[dict[str, str] | None, str]:
    """``(baseline, last_written_hash)`` once a write whose answer never came is seen applied ([R24], [R25]).

    ``pending`` is what the connector recorded just before sending a write: ``hash`` (the echo it expects) and
    ``baseline`` (the baseline after it). If the CRM's values now hash to ``hash``, the write landed: that is the echo
    to skip. Field by field, a CRM value equal to the pending baseline's is our own write, not a CRM change — without
    this, a later Loopline edit of the field would look like a conflict with the value we wrote ourselves.
    """
    target = pending.get("baseline") or {}
    if crm_hash(crm_record.values, mappings, crm_record.object_type) == pending.get("hash"):
        last_written_hash = str(pending["hash"])
    if not target:
        return (dict(baseline) if baseline is not None else None), last_written_hash
    adopted = dict(baseline or {})
    for m in mappings:
        cf = m.crm_field(crm_record.object_type)
        digest = target.get(m.loopline_field)
        if cf is not None and digest is not None and field_digest(m.kind, crm_record.values.get(cf)) == digest:
            adopted[m.loopline_field] = digest
    return adopted, last_written_hash


def written_hash(crm_record: CrmRecord, sent: Mapping[str, Any], mappings: Iterable[FieldMapping]) -> str:
    """The hash to store as ``last_written_hash`` after a successful write of ``sent`` (the *validated* payload, so
    coercions such as picklist spelling or rounding are what the echo will carry) over ``crm_record``."""
    return crm_hash({**crm_record.values, **sent}, mappings, crm_record.object_type)


def record_hash(crm_record: CrmRecord, mappings: Iterable[FieldMapping]) -> str:
    """The hash to store as ``last_read_hash`` after processing ``crm_record``."""
    return crm_hash(crm_record.values, mappings, crm_record.object_type)


__all__ = [
    "EchoCheck",
    "EchoVerdict",
    "FieldDecision",
    "FieldOutcome",
    "Resolution",
    "adopt_pending_write",
    "crm_kinds",
    "is_echo",
    "record_hash",
    "resolve",
    "values_hash",
    "written_hash",
]
