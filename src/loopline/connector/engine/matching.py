"""Matching prospects and CRM records ([R9]) and email-change decisions ([R19]).

Two directions:

* :func:`match_prospect` — a CRM record arrived (poll, "Send to Loopline"): which prospect is it?
* :func:`choose_crm_record` — a prospect is being pushed: which of the candidate CRM records does it sync with?

The caller fetches the candidates (prospects with the same email or carrying the record's id; CRM records with the
prospect's email or id) and the engine decides. Candidates that are deleted, converted leads or in the recycle bin
never win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from .model import (
    ConnectorSettings,
    CrmObject,
    CrmRecord,
    FieldKind,
    MatchingMode,
    ProspectSnapshot,
    SkipReason,
    SyncState,
    same_id,
)
from .values import field_digest, normalise

_NEVER = datetime.min.replace(tzinfo=UTC)

# --------------------------------------------------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """The prospect's CRM linkage fields after a match (``Prospect.crm_lead_id`` / ``crm_contact_id`` /
    ``crm_account_id``). ``None`` means "leave as is"; ``""`` means "clear"."""

    crm_lead_id: str | None = None
    crm_contact_id: str | None = None
    crm_account_id: str | None = None

    @classmethod
    def for_record(cls, record: CrmRecord) -> Link:
        """Lead → lead id; Contact → contact + account id; person account → account id and the person contact id as
        the contact id ([R14])."""
        if record.object_type == CrmObject.LEAD:
            return cls(crm_lead_id=record.id)
        if record.object_type == CrmObject.PERSON_ACCOUNT:
            return cls(crm_contact_id=record.person_contact_id or "", crm_account_id=record.id)
        return cls(crm_contact_id=record.id, crm_account_id=record.account_id)

    @classmethod
    def cleared_for(cls, record: CrmRecord) -> Link:
        """Clear the linkage fields that point at ``record`` (used for [R19] unlink)."""
        if record.object_type == CrmObject.LEAD:
            return cls(crm_lead_id="")
        if record.object_type == CrmObject.PERSON_ACCOUNT:
            return cls(crm_contact_id="", crm_account_id="")
        return cls(crm_contact_id="", crm_account_id="")

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


def _rank(record: CrmRecord) -> tuple[int, datetime, str]:
    """Contacts (and person accounts) beat leads; then the most recently modified; then the id (deterministic)."""
    kind = 0 if record.object_type == CrmObject.LEAD else 1
    return (kind, record.system_modstamp, record.id)


def _eligible(record: CrmRecord) -> bool:
    return not record.is_deleted and not (record.is_lead and record.is_converted)


# --------------------------------------------------------------------------------------------------------------------
# Prospect → CRM
# --------------------------------------------------------------------------------------------------------------------


class CrmMatchOutcome(StrEnum):
    LINKED = "linked"  # the prospect's own CRM id
    BY_EMAIL = "by_email"  # matched by email
    NONE = "none"  # nothing matches


@dataclass(frozen=True)
class CrmMatch:
    outcome: CrmMatchOutcome
    record: CrmRecord | None
    reason: str
    link: Link | None = None

    @property
    def matched(self) -> bool:
        return self.record is not None


def choose_crm_record(
    prospect: ProspectSnapshot, candidates: Sequence[CrmRecord], settings: ConnectorSettings
) -> CrmMatch:
    """Which CRM record ``prospect`` syncs with ([R9]).

    * A record carrying the prospect's own id wins (the contact over the lead when both are linked, [R13]).
    * *Unique email*: otherwise the records with the prospect's email (case-insensitive); a contact beats a lead;
      among several of one kind the most recently modified (``SystemModstamp``) wins.
    * *CRM id*: the id is the key. Only when the prospect has no CRM id yet and ``match_by_email_when_no_crm_id`` is
      on, the email decides (most recently modified wins, contact before lead).
    """
    usable = [r for r in candidates if _eligible(r)]
    linked = [r for r in usable if prospect.links_to(r)]
    if linked:
        best = max(linked, key=_rank)
        return CrmMatch(
            CrmMatchOutcome.LINKED, best, f"linked {best.object_type} {best.id}", Link.for_record(best)
        )
    email_allowed = settings.matching_mode is MatchingMode.UNIQUE_EMAIL or (
        settings.match_by_email_when_no_crm_id and not prospect.is_linked
    )
    if not email_allowed:
        return CrmMatch(CrmMatchOutcome.NONE, None, "CRM id mode: no record carries the prospect's id")
    if not prospect.email:
        return CrmMatch(CrmMatchOutcome.NONE, None, "prospect has no email to match on")
    by_email = [r for r in usable if r.email and r.email == prospect.email]
    if not by_email:
        return CrmMatch(CrmMatchOutcome.NONE, None, f"no CRM record with email {prospect.email}")
    best = max(by_email, key=_rank)
    why = "contact beats lead; most recently modified" if len(by_email) > 1 else "same email"
    return CrmMatch(
        CrmMatchOutcome.BY_EMAIL, best, f"{best.object_type} {best.id}: {why}", Link.for_record(best)
    )


# --------------------------------------------------------------------------------------------------------------------
# CRM → Loopline
# --------------------------------------------------------------------------------------------------------------------


class ProspectMatchOutcome(StrEnum):
    MATCHED = "matched"  # sync with ``prospect_id`` (``link`` says which linkage fields to set)
    NO_MATCH = "no_match"  # no prospect: see creation.decide_prospect_creation ([R10])
    IGNORED = "ignored"  # a prospect exists but syncs with a better record (``skip_reason``)


@dataclass(frozen=True)
class ProspectMatch:
    outcome: ProspectMatchOutcome
    prospect_id: int | str | None
    reason: str
    link: Link | None = None
    skip_reason: SkipReason | None = None
    relinked: bool = False  # the prospect moves from another record to this one (e.g. lead → contact)


def match_prospect(
    record: CrmRecord,
    candidates: Sequence[ProspectSnapshot],
    settings: ConnectorSettings,
    *,
    rivals: Sequence[CrmRecord] = (),
) -> ProspectMatch:
    """Which prospect an incoming CRM record belongs to ([R9]).

    ``candidates``: prospects carrying the record's id or (unique-email mode, or CRM-id mode with email fallback)
    its email; recycled prospects are only matched by id (lifecycle decides about them). ``rivals``: the CRM records
    the matched prospect currently syncs with, when the caller has them — used to apply "contact beats lead, most
    recent wins" between the incoming record and the current one. Without rivals, a prospect linked to a contact
    ignores an incoming lead, and a prospect linked to a lead moves to an incoming contact.
    """
    by_id = [p for p in candidates if p.links_to(record)]
    if by_id:
        chosen = _most_recent_prospect(by_id)
        return ProspectMatch(
            ProspectMatchOutcome.MATCHED, chosen.id, "carries the record's id", Link.for_record(record)
        )
    if record.is_deleted:
        return ProspectMatch(
            ProspectMatchOutcome.NO_MATCH, None, "deleted record", skip_reason=SkipReason.CRM_DELETED
        )
    if record.is_lead and record.is_converted:
        return ProspectMatch(
            ProspectMatchOutcome.NO_MATCH,
            None,
            "converted lead: the contact brings the prospect [R13]",
            skip_reason=SkipReason.CONVERTED_LEAD,
        )
    if settings.matching_mode is MatchingMode.CRM_ID and not settings.match_by_email_when_no_crm_id:
        return ProspectMatch(ProspectMatchOutcome.NO_MATCH, None, "CRM id mode: no prospect carries this id")
    email = record.email
    if not email:
        return ProspectMatch(ProspectMatchOutcome.NO_MATCH, None, "record has no email")
    same_email = [p for p in candidates if p.email == email and not p.is_deleted]
    if settings.matching_mode is MatchingMode.CRM_ID:
        # Email fallback only for prospects without a CRM id yet; otherwise a new prospect carries this id.
        same_email = [p for p in same_email if not p.is_linked]
        if not same_email:
            return ProspectMatch(
                ProspectMatchOutcome.NO_MATCH, None, "CRM id mode: no unlinked prospect has this email"
            )
        chosen = _most_recent_prospect(same_email)
        return ProspectMatch(
            ProspectMatchOutcome.MATCHED,
            chosen.id,
            "unlinked prospect with the same email",
            Link.for_record(record),
        )
    if not same_email:
        return ProspectMatch(ProspectMatchOutcome.NO_MATCH, None, f"no prospect with email {email}")
    prospect = _most_recent_prospect(same_email)
    if not prospect.is_linked:
        return ProspectMatch(ProspectMatchOutcome.MATCHED, prospect.id, "same email", Link.for_record(record))
    current = [r for r in rivals if prospect.links_to(r) and _eligible(r)]
    if current:
        best = max([*current, record], key=_rank)
        if best is record:
            return ProspectMatch(
                ProspectMatchOutcome.MATCHED,
                prospect.id,
                f"same email; beats {current[0].object_type} {current[0].id} (contact before lead, most recent)",
                Link.for_record(record),
                relinked=True,
            )
        return ProspectMatch(
            ProspectMatchOutcome.IGNORED,
            prospect.id,
            f"prospect syncs with {best.object_type} {best.id} (contact before lead, most recent)",
            skip_reason=SkipReason.LOSES_TO_OTHER_RECORD,
        )
    if record.object_type != CrmObject.LEAD and not prospect.crm_contact_id:
        return ProspectMatch(
            ProspectMatchOutcome.MATCHED,
            prospect.id,
            "same email; a contact beats the prospect's lead",
            Link.for_record(record),
            relinked=True,
        )
    return ProspectMatch(
        ProspectMatchOutcome.IGNORED,
        prospect.id,
        f"prospect already syncs with {prospect.crm_id}",
        skip_reason=SkipReason.LOSES_TO_OTHER_RECORD,
    )


def _most_recent_prospect(prospects: Sequence[ProspectSnapshot]) -> ProspectSnapshot:
    def key(p: ProspectSnapshot) -> tuple[int, datetime, str]:
        when = p.last_changed_at() or _NEVER
        return (0 if p.is_deleted else 1, when, str(p.id))

    return max(prospects, key=key)


# --------------------------------------------------------------------------------------------------------------------
# Email changes ([R19])
# --------------------------------------------------------------------------------------------------------------------


class EmailAction(StrEnum):
    NONE = "none"  # equal (or CRM-id mode: email is an ordinary field)
    FILL_LOOPLINE = "fill_loopline"  # prospect has no email: take the CRM's ([R17])
    FILL_CRM = "fill_crm"  # CRM record has no email: send the prospect's ([R17])
    UPDATE_PROSPECT = "update_prospect"  # the CRM changed the email; setting on
    PUSH_TO_CRM = "push_to_crm"  # Loopline changed the email
    UNLINK = "unlink"  # the CRM changed the email; setting off → stop syncing with that record


@dataclass(frozen=True)
class EmailChange:
    action: EmailAction
    reason: str
    email: str = ""  # the email to write (lower-cased), when there is one


def email_crm_field(record: CrmRecord) -> str:
    return "PersonEmail" if record.object_type == CrmObject.PERSON_ACCOUNT else "Email"


def decide_email_change(
    prospect: ProspectSnapshot,
    record: CrmRecord,
    settings: ConnectorSettings,
    state: SyncState | None = None,
    *,
    crm_field: str | None = None,
) -> EmailChange:
    """[R19] in *unique email* mode. Which side changed the email is decided by the baseline digest when the state
    has one, else by per-field times (Loopline ``field_changed_at['email']`` vs the CRM field's history time or
    ``SystemModstamp``; a tie counts as a CRM change). In *CRM id* mode the answer is always ``NONE``: email is an
    ordinary field resolved by its behaviour."""
    if settings.matching_mode is MatchingMode.CRM_ID:
        return EmailChange(EmailAction.NONE, "CRM id mode: email is an ordinary field")
    crm_field = crm_field or email_crm_field(record)
    lv = normalise(FieldKind.EMAIL, prospect.values.get("email", prospect.email))
    cv = normalise(FieldKind.EMAIL, record.values.get(crm_field))
    if lv == cv:
        return EmailChange(EmailAction.NONE, "same email")
    if cv is None:
        return EmailChange(EmailAction.FILL_CRM, "CRM record has no email [R17]", str(lv))
    if lv is None:
        return EmailChange(EmailAction.FILL_LOOPLINE, "prospect has no email [R17]", str(cv))
    crm_changed: bool
    baseline = state.baseline if state is not None else None
    if baseline is not None and "email" in baseline:
        base = baseline["email"]
        loopline_same = field_digest(FieldKind.EMAIL, lv) == base
        crm_same = field_digest(FieldKind.EMAIL, cv) == base
        if loopline_same and not crm_same:
            crm_changed = True
        elif crm_same and not loopline_same:
            crm_changed = False
        else:
            crm_changed = _crm_later(prospect, record, crm_field)
    else:
        crm_changed = _crm_later(prospect, record, crm_field)
    if not crm_changed:
        return EmailChange(EmailAction.PUSH_TO_CRM, "email changed in Loopline", str(lv))
    if settings.update_email_from_crm:
        return EmailChange(EmailAction.UPDATE_PROSPECT, "email changed in the CRM [R19]", str(cv))
    return EmailChange(
        EmailAction.UNLINK,
        "email changed in the CRM and 'update email from CRM' is off: the prospect stops syncing with this record [R19]",
    )


def _crm_later(prospect: ProspectSnapshot, record: CrmRecord, crm_field: str) -> bool:
    loopline_time = prospect.field_changed_at.get("email") or prospect.last_changed_at()
    if loopline_time is None:
        return True
    return record.field_changed_at(crm_field) >= loopline_time


__all__ = [
    "CrmMatch",
    "CrmMatchOutcome",
    "EmailAction",
    "EmailChange",
    "Link",
    "ProspectMatch",
    "ProspectMatchOutcome",
    "choose_crm_record",
    "decide_email_change",
    "email_crm_field",
    "match_prospect",
    "same_id",
]
