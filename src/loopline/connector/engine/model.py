"""Plain data the connector engine works on: mappings, CRM records, prospect snapshots, sync state, settings.

Everything here is stdlib-only and immutable (frozen dataclasses). The Django layer builds these from rows, the
Salesforce adapter builds :class:`CrmRecord` from API JSON (:meth:`CrmRecord.from_api`), and the engine's functions
turn them into decisions.

Conventions used throughout the engine:

* Datetimes are timezone-aware. A naive datetime is taken to be UTC (:func:`as_utc`).
* CRM field names are the API names as they appear in SOQL; one-level parent fields are flattened with a dot
  (``"Account.Name"``), exactly as written in the mapping.
* ``object_type`` is one of :class:`CrmObject` — ``"PersonAccount"`` is an ``Account`` with ``IsPersonAccount = true``
  ([R14]); :func:`sobject_name` gives the API name to use in URLs and ``attributes.type``.
* Loopline field names are the :class:`~loopline.prospects.models.Prospect` attribute names (``first_name``,
  ``job_title``, ``zip``…), plus ``crm_owner_id`` (owner, [R18]), ``campaign`` (the prospect's campaign as the CRM
  should see it, [R18]) and ``custom.<api_name>`` for custom fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from types import MappingProxyType
from typing import Any

# --------------------------------------------------------------------------------------------------------------------
# Enums
# --------------------------------------------------------------------------------------------------------------------


class SyncBehaviour(StrEnum):
    """How a mapped field resolves a conflict ([R16]). Values equal the Django ``FieldMapping.Behaviour`` choices."""

    USE_LOOPLINE = "use_loopline"
    USE_CRM = "use_crm"
    MOST_RECENT_RECORD = "most_recent_record"
    MOST_RECENT_FIELD = "most_recent_field"  # opt-out field only ([R16])


class Direction(StrEnum):
    """Which way a field may flow. Only fixed fields ([R18]) are one-way."""

    BOTH = "both"
    TO_CRM = "to_crm"  # Loopline → CRM (score, grade, campaign)
    TO_LOOPLINE = "to_loopline"  # CRM → Loopline (owner)


class Side(StrEnum):
    LOOPLINE = "loopline"
    CRM = "crm"


class CrmObject(StrEnum):
    """The CRM objects a prospect can sync with ([R8], [R14])."""

    LEAD = "Lead"
    CONTACT = "Contact"
    PERSON_ACCOUNT = "PersonAccount"


class MatchingMode(StrEnum):
    """[R9]."""

    UNIQUE_EMAIL = "unique_email"
    CRM_ID = "crm_id"


class FieldKind(StrEnum):
    """How a value is normalised for comparison and hashing (see :func:`loopline.connector.engine.values.normalise`)."""

    TEXT = "text"
    EMAIL = "email"
    BOOLEAN = "boolean"
    INTEGER = "integer"
    DECIMAL = "decimal"
    DATE = "date"
    DATETIME = "datetime"
    ID = "id"  # a CRM record id (15 or 18 chars; compared in the 18-char form)


class SkipReason(StrEnum):
    """Why a record was not written. Counted per run ([R29]) and shown to admins; values are stable identifiers."""

    ECHO = "echo"  # our own write coming back ([R24])
    UNCHANGED = "unchanged"  # no mapped value differs
    ALREADY_SEEN = "already_seen"  # (id, SystemModstamp) inside the overlap window ([R22])
    NO_EMAIL = "no_email"  # CRM record without an email cannot create a prospect ([R10])
    AUTO_CREATE_OFF = "auto_create_off"  # [R10]
    UNASSIGNED = "unassigned"  # unassigned prospect, no matching CRM record ([R11])
    DO_NOT_SYNC = "do_not_sync"  # [R15]
    CRM_DELETED = "crm_deleted"  # [R31]
    IN_RECYCLE_BIN = "in_recycle_bin"
    CONVERTED_LEAD = "converted_lead"  # [R13]
    LOSES_TO_OTHER_RECORD = "loses_to_other_record"  # contact beats lead / most recent wins ([R9])
    ALREADY_LINKED = "already_linked"
    EMAIL_CHANGED_UNLINKED = "email_changed_unlinked"  # [R19]
    NOT_VISIBLE = "not_visible"  # marketing data sharing ([R35])
    PAUSED = "paused"  # [R2]
    BUDGET = "budget"  # [R27]
    INVALID = "invalid"  # failed value checks ([R20])


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------

#: The value sent for a required CRM field Loopline has no value for (what Pardot does for ``Lead.Company``).
#: The engine treats it as *blank* when comparing, so it never flows back into the prospect ([R17], [R20]).
NOT_PROVIDED = "[not provided]"

_SF_DT = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")
_ID_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def as_utc(value: datetime) -> datetime:
    """A timezone-aware UTC datetime; naive values are taken to be UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_datetime(value: str | datetime | date | None) -> datetime | None:
    """Parse Salesforce (``2013-05-20T20:49:32.000+0000``) and ISO-8601 datetimes; ``None``/``""`` → ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    text = value.strip()
    match = _SF_DT.match(text)
    if match is None:
        raise ValueError(f"not a datetime: {value!r}")
    day, clock, fraction, zone = match.groups()
    iso = f"{day}T{clock}{(fraction or '')[:7]}"
    if zone and zone != "Z":
        zone = zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
        iso += zone
    return as_utc(datetime.fromisoformat(iso))


def format_datetime(value: datetime) -> str:
    """SOQL datetime literal / JSON datetime: ``2024-01-01T00:00:00Z`` (milliseconds kept when present)."""
    value = as_utc(value)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def id18(record_id: str) -> str:
    """The 18-character form of a Salesforce id (15-char ids get their case-checksum suffix); other lengths as is."""
    if len(record_id) != 15:
        return record_id
    suffix = ""
    for chunk in range(3):
        bits = 0
        for i, char in enumerate(record_id[chunk * 5 : chunk * 5 + 5]):
            if "A" <= char <= "Z":
                bits |= 1 << i
        suffix += _ID_SUFFIX[bits]
    return record_id + suffix


def same_id(a: str | None, b: str | None) -> bool:
    """Whether two Salesforce ids name the same record (15/18-char forms, case of the 18-char form ignored)."""
    if not a or not b:
        return False
    return id18(a).lower() == id18(b).lower()


def sobject_name(object_type: str) -> str:
    """API object name for URLs and ``attributes.type``: a person account is an ``Account``."""
    return "Account" if object_type == CrmObject.PERSON_ACCOUNT else object_type


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


# --------------------------------------------------------------------------------------------------------------------
# Field mapping
# --------------------------------------------------------------------------------------------------------------------


class MappingError(ValueError):
    """An invalid field mapping (e.g. *most recent field* on a field other than the opt-out, [R16])."""


#: Loopline fields that may use :attr:`SyncBehaviour.MOST_RECENT_FIELD` ([R16]).
MOST_RECENT_FIELD_ALLOWED = frozenset({"opted_out"})


@dataclass(frozen=True)
class FieldMapping:
    """One mapped field.

    ``crm_field_by_object`` maps a :class:`CrmObject` value to the CRM field name on that object; an object missing
    from it means "not mapped on that object" (e.g. ``industry`` on a Contact). ``read_only_on`` lists the objects
    where the CRM field cannot be written (``Contact`` company is the account's ``Account.Name``): there the field
    flows CRM → Loopline only. ``fixed`` fields ([R18]) have a one-way ``direction`` and cannot be remapped.
    """

    loopline_field: str
    crm_field_by_object: Mapping[str, str]
    behaviour: SyncBehaviour = SyncBehaviour.MOST_RECENT_RECORD
    fixed: bool = False
    direction: Direction = Direction.BOTH
    kind: FieldKind = FieldKind.TEXT
    read_only_on: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "crm_field_by_object", _freeze(self.crm_field_by_object))
        object.__setattr__(self, "behaviour", SyncBehaviour(self.behaviour))
        object.__setattr__(self, "direction", Direction(self.direction))
        object.__setattr__(self, "kind", FieldKind(self.kind))
        object.__setattr__(self, "read_only_on", frozenset(self.read_only_on))
        if (
            self.behaviour is SyncBehaviour.MOST_RECENT_FIELD
            and self.loopline_field not in MOST_RECENT_FIELD_ALLOWED
        ):
            raise MappingError(
                f"'most recently updated field' is allowed for the opt-out field only, not {self.loopline_field!r}"
            )
        if self.fixed and self.direction is Direction.BOTH:
            raise MappingError(f"fixed field {self.loopline_field!r} needs a one-way direction")
        if not self.fixed and self.direction is not Direction.BOTH:
            raise MappingError(f"only fixed fields are one-way ({self.loopline_field!r})")

    def crm_field(self, object_type: str) -> str | None:
        """The CRM field on ``object_type``, or ``None`` when the field is not mapped there."""
        return self.crm_field_by_object.get(object_type) or None

    def crm_writable(self, object_type: str) -> bool:
        return (
            self.crm_field(object_type) is not None
            and object_type not in self.read_only_on
            and "." not in (self.crm_field(object_type) or "")
            and self.direction is not Direction.TO_LOOPLINE
        )

    def with_behaviour(self, behaviour: SyncBehaviour) -> FieldMapping:
        """A copy with another behaviour; fixed fields cannot be changed ([R18])."""
        if self.fixed:
            raise MappingError(f"{self.loopline_field!r} is a fixed field and cannot be remapped")
        return replace(self, behaviour=behaviour)

    @classmethod
    def from_columns(
        cls,
        loopline_field: str,
        *,
        lead_field: str = "",
        contact_field: str = "",
        person_account_field: str = "",
        behaviour: str = SyncBehaviour.MOST_RECENT_RECORD,
        fixed: bool = False,
        kind: str | None = None,
    ) -> FieldMapping:
        """Build from the Django ``FieldMapping`` row's columns. Kind, direction and read-only objects of standard
        fields come from :func:`default_mapping`; custom fields default to text (pass ``kind`` from the describe)."""
        template = {m.loopline_field: m for m in default_mapping()}.get(loopline_field)
        by_object = {
            k: v
            for k, v in (
                (CrmObject.LEAD.value, lead_field),
                (CrmObject.CONTACT.value, contact_field),
                (CrmObject.PERSON_ACCOUNT.value, person_account_field),
            )
            if v
        }
        if template is not None and template.fixed:
            # Fixed fields keep their direction ([R18]); only the CRM field names are configurable.
            return replace(template, crm_field_by_object=_freeze(by_object or template.crm_field_by_object))
        return cls(
            loopline_field=loopline_field,
            crm_field_by_object=by_object,
            behaviour=SyncBehaviour(behaviour),
            fixed=fixed and template is not None and template.fixed,
            kind=FieldKind(kind) if kind else (template.kind if template else FieldKind.TEXT),
            read_only_on=template.read_only_on if template else frozenset(),
        )


def _m(
    loopline_field: str,
    lead: str | None,
    contact: str | None,
    person: str | None,
    kind: FieldKind = FieldKind.TEXT,
    behaviour: SyncBehaviour = SyncBehaviour.MOST_RECENT_RECORD,
    read_only_on: Iterable[str] = (),
) -> FieldMapping:
    by_object = {
        k: v
        for k, v in ((CrmObject.LEAD, lead), (CrmObject.CONTACT, contact), (CrmObject.PERSON_ACCOUNT, person))
        if v
    }
    return FieldMapping(
        loopline_field,
        {str(k): v for k, v in by_object.items()},
        behaviour,
        kind=kind,
        read_only_on=frozenset(read_only_on),
    )


def default_mapping(
    *,
    score_field: str = "Loopline_Score__c",
    grade_field: str = "Loopline_Grade__c",
    campaign_field: str = "Loopline_Campaign__c",
    behaviour: SyncBehaviour = SyncBehaviour.USE_CRM,
) -> tuple[FieldMapping, ...]:
    """The standard mapping ([R21]) plus the fixed fields ([R18]).

    * Contact ``company`` is the account name (``Account.Name``), read-only: it flows CRM → Loopline only.
    * Address: ``address_one`` ↔ ``Street`` / ``MailingStreet`` / ``PersonMailingStreet``; ``address_two`` is not
      mapped (the CRM keeps one multi-line street).
    * Industry, website, revenue and employees exist on Lead and (person) Account, not on Contact.
    * Fixed custom fields on a person account use Salesforce's ``__pc`` suffix for contact fields.
    * Two-way fields default to ``behaviour`` (*use the CRM's value*, as the Django ``FieldMapping`` default and
      Pardot do); ``opted_out`` defaults to *most recently updated field* — the one field where that is allowed.
    """
    lead, contact, person = CrmObject.LEAD.value, CrmObject.CONTACT.value, CrmObject.PERSON_ACCOUNT.value

    def pc(name: str) -> str:
        return name[:-3] + "__pc" if name.endswith("__c") else name

    return (
        _m("first_name", "FirstName", "FirstName", "FirstName", behaviour=behaviour),
        _m("last_name", "LastName", "LastName", "LastName", behaviour=behaviour),
        _m("email", "Email", "Email", "PersonEmail", FieldKind.EMAIL, behaviour=behaviour),
        _m("company", "Company", "Account.Name", None, behaviour=behaviour, read_only_on=[contact]),
        _m("job_title", "Title", "Title", "PersonTitle", behaviour=behaviour),
        _m("phone", "Phone", "Phone", "Phone", behaviour=behaviour),
        _m("fax", "Fax", "Fax", "Fax", behaviour=behaviour),
        _m("address_one", "Street", "MailingStreet", "PersonMailingStreet", behaviour=behaviour),
        _m("city", "City", "MailingCity", "PersonMailingCity", behaviour=behaviour),
        _m("state", "State", "MailingState", "PersonMailingState", behaviour=behaviour),
        _m("zip", "PostalCode", "MailingPostalCode", "PersonMailingPostalCode", behaviour=behaviour),
        _m("country", "Country", "MailingCountry", "PersonMailingCountry", behaviour=behaviour),
        _m("industry", "Industry", None, "Industry", behaviour=behaviour),
        _m("website", "Website", None, "Website", behaviour=behaviour),
        _m("annual_revenue", "AnnualRevenue", None, "AnnualRevenue", FieldKind.DECIMAL, behaviour=behaviour),
        _m(
            "employees",
            "NumberOfEmployees",
            None,
            "NumberOfEmployees",
            FieldKind.INTEGER,
            behaviour=behaviour,
        ),
        _m("source", "LeadSource", "LeadSource", "PersonLeadSource", behaviour=behaviour),
        _m(
            "opted_out",
            "HasOptedOutOfEmail",
            "HasOptedOutOfEmail",
            "PersonHasOptedOutOfEmail",
            FieldKind.BOOLEAN,
            SyncBehaviour.MOST_RECENT_FIELD,
        ),
        _m(
            "do_not_call", "DoNotCall", "DoNotCall", "PersonDoNotCall", FieldKind.BOOLEAN, behaviour=behaviour
        ),
        # Fixed fields ([R18]).
        FieldMapping(
            "score",
            {lead: score_field, contact: score_field, person: pc(score_field)},
            SyncBehaviour.USE_LOOPLINE,
            fixed=True,
            direction=Direction.TO_CRM,
            kind=FieldKind.INTEGER,
        ),
        FieldMapping(
            "grade",
            {lead: grade_field, contact: grade_field, person: pc(grade_field)},
            SyncBehaviour.USE_LOOPLINE,
            fixed=True,
            direction=Direction.TO_CRM,
        ),
        FieldMapping(
            "campaign",
            {lead: campaign_field, contact: campaign_field, person: pc(campaign_field)},
            SyncBehaviour.USE_LOOPLINE,
            fixed=True,
            direction=Direction.TO_CRM,
        ),
        FieldMapping(
            "crm_owner_id",
            {lead: "OwnerId", contact: "OwnerId", person: "OwnerId"},
            SyncBehaviour.USE_CRM,
            fixed=True,
            direction=Direction.TO_LOOPLINE,
            kind=FieldKind.ID,
        ),
    )


def mapped_crm_fields(mappings: Iterable[FieldMapping], object_type: str) -> list[str]:
    """The CRM fields the mapping reads on ``object_type``, in mapping order, without duplicates."""
    seen: dict[str, None] = {}
    for m in mappings:
        name = m.crm_field(object_type)
        if name:
            seen.setdefault(name, None)
    return list(seen)


# --------------------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------------------

_SYSTEM_KEYS = {
    "Id",
    "SystemModstamp",
    "LastModifiedById",
    "LastModifiedDate",
    "CreatedDate",
    "CreatedById",
    "IsDeleted",
    "IsConverted",
    "ConvertedContactId",
    "ConvertedAccountId",
    "MasterRecordId",
    "OwnerId",
    "PersonContactId",
    "IsPersonAccount",
    "AccountId",
    "attributes",
}


@dataclass(frozen=True)
class CrmRecord:
    """One Lead / Contact / person Account as read from the CRM.

    ``values`` holds field values by CRM field name (parent paths flattened, ``"Account.Name"``). ``field_history``
    maps a CRM field to the time it last changed when the org tracks field history (``None`` = not available).
    ``client_id`` is the ``client=`` part of a CDC event's ``changeOrigin`` (polling leaves it ``None``).
    """

    object_type: str
    id: str
    values: Mapping[str, Any]
    system_modstamp: datetime
    last_modified_by_id: str | None = None
    created_date: datetime | None = None
    is_deleted: bool = False
    is_converted: bool = False
    converted_contact_id: str | None = None
    converted_account_id: str | None = None
    master_record_id: str | None = None
    owner_id: str | None = None
    field_history: Mapping[str, datetime] | None = None
    client_id: str | None = None
    account_id: str | None = None  # Contact.AccountId
    person_contact_id: str | None = None  # PersonAccount.PersonContactId ([R14])
    created_by_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _freeze(self.values))
        object.__setattr__(self, "system_modstamp", as_utc(self.system_modstamp))
        if self.created_date is not None:
            object.__setattr__(self, "created_date", as_utc(self.created_date))
        if self.field_history is not None:
            object.__setattr__(
                self, "field_history", _freeze({k: as_utc(v) for k, v in self.field_history.items()})
            )

    @property
    def email(self) -> str:
        key = "PersonEmail" if self.object_type == CrmObject.PERSON_ACCOUNT else "Email"
        return str(self.values.get(key) or "").strip().lower()

    @property
    def is_lead(self) -> bool:
        return self.object_type == CrmObject.LEAD

    @property
    def writable(self) -> bool:
        """A converted lead is read-only ([R13]); a deleted record is gone ([R30], [R31])."""
        return not (self.is_deleted or (self.is_lead and self.is_converted))

    def field_changed_at(self, crm_field: str) -> datetime:
        """When ``crm_field`` last changed: field history if tracked, else the record's ``SystemModstamp`` ([R16])."""
        if self.field_history is not None:
            when = self.field_history.get(crm_field)
            if when is not None:
                return when
            if self.created_date is not None:  # tracked but never changed since creation
                return self.created_date
        return self.system_modstamp

    @classmethod
    def from_api(
        cls,
        object_type: str,
        raw: Mapping[str, Any],
        *,
        field_history: Mapping[str, datetime] | None = None,
        client_id: str | None = None,
    ) -> CrmRecord:
        """Build from a REST/SOQL record (JSON dict). Nested parents (``{"Account": {"Name": ...}}``) are flattened."""
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "attributes":
                continue
            if isinstance(value, Mapping):
                for sub_key, sub_value in value.items():
                    if sub_key != "attributes" and not isinstance(sub_value, Mapping):
                        values[f"{key}.{sub_key}"] = sub_value
            else:
                values[key] = value
        modstamp = parse_datetime(raw.get("SystemModstamp")) or parse_datetime(raw.get("LastModifiedDate"))
        if modstamp is None:
            raise ValueError("a CRM record needs SystemModstamp")
        if object_type == "Account" and raw.get("IsPersonAccount"):
            object_type = CrmObject.PERSON_ACCOUNT.value
        return cls(
            object_type=object_type,
            id=str(raw["Id"]),
            values={k: v for k, v in values.items() if k not in _SYSTEM_KEYS or k == "OwnerId"},
            system_modstamp=modstamp,
            last_modified_by_id=raw.get("LastModifiedById"),
            created_date=parse_datetime(raw.get("CreatedDate")),
            is_deleted=bool(raw.get("IsDeleted")),
            is_converted=bool(raw.get("IsConverted")),
            converted_contact_id=raw.get("ConvertedContactId"),
            converted_account_id=raw.get("ConvertedAccountId"),
            master_record_id=raw.get("MasterRecordId"),
            owner_id=raw.get("OwnerId"),
            field_history=field_history,
            client_id=client_id,
            account_id=raw.get("AccountId"),
            person_contact_id=raw.get("PersonContactId"),
            created_by_id=raw.get("CreatedById"),
        )


@dataclass(frozen=True)
class ProspectSnapshot:
    """The Loopline side of one prospect, as the engine needs it.

    ``values`` maps Loopline field names to values (see the module docstring for the special names).
    ``field_changed_at`` holds the per-field change times (``Prospect.field_changed_at``, parsed to datetimes).
    ``assigned`` is true when the prospect is assigned to a user, group, queue or the CRM's assignment rule ([R11]);
    ``assigned_crm_owner_id`` is the CRM user/queue id the assignment maps to (``None`` → connector user), and
    ``use_assignment_rule`` asks the CRM's active assignment rule to pick the owner.
    """

    id: int | str
    values: Mapping[str, Any]
    field_changed_at: Mapping[str, datetime] = field(default_factory=dict)
    updated_at: datetime | None = None
    crm_lead_id: str = ""
    crm_contact_id: str = ""
    crm_account_id: str = ""
    assigned: bool = False
    do_not_sync: bool = False
    crm_deleted: bool = False
    is_deleted: bool = False
    email: str | None = None
    assigned_crm_owner_id: str | None = None
    use_assignment_rule: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _freeze(self.values))
        object.__setattr__(
            self,
            "field_changed_at",
            _freeze({k: as_utc(v) for k, v in self.field_changed_at.items() if v is not None}),
        )
        if self.updated_at is not None:
            object.__setattr__(self, "updated_at", as_utc(self.updated_at))
        if self.email is None:
            object.__setattr__(self, "email", str(self.values.get("email") or ""))
        object.__setattr__(self, "email", (self.email or "").strip().lower())
        for name in ("crm_lead_id", "crm_contact_id", "crm_account_id"):
            object.__setattr__(self, name, getattr(self, name) or "")

    @property
    def crm_id(self) -> str:
        """The record the prospect syncs with: the contact when there is one, else the lead ([R13], [R14])."""
        return self.crm_contact_id or self.crm_lead_id

    @property
    def is_linked(self) -> bool:
        return bool(self.crm_lead_id or self.crm_contact_id)

    def links_to(self, record: CrmRecord) -> bool:
        """Whether the prospect already carries ``record``'s id (person accounts: account or person contact id)."""
        ids = [self.crm_lead_id, self.crm_contact_id]
        if record.object_type == CrmObject.PERSON_ACCOUNT:
            ids.append(self.crm_account_id)
        return any(same_id(i, record.id) for i in ids) or (
            record.person_contact_id is not None and same_id(self.crm_contact_id, record.person_contact_id)
        )

    def last_changed_at(self, fields: Iterable[str] | None = None) -> datetime | None:
        """Record-level change time for *most recently updated record* ([R16]).

        Decision: the latest ``field_changed_at`` among ``fields`` (the mapped two-way fields), falling back to
        ``updated_at`` when none of them has a change time. ``updated_at`` alone would make every score change or
        activity count as a change to the mapped fields.
        """
        wanted = None if fields is None else set(fields)
        times = [t for k, t in self.field_changed_at.items() if wanted is None or k in wanted]
        if times:
            return max(times)
        return self.updated_at


@dataclass(frozen=True)
class SyncState:
    """What the connector last agreed with the CRM for one prospect ↔ record link (Django: ``CrmLink``).

    ``baseline`` (optional) maps a Loopline field to :func:`~.values.field_digest` of the value both sides had after
    the last sync (JSON-friendly; :attr:`Resolution.baseline_after` gives the next one). With
    it the engine tells a one-sided change from a real conflict: a field only one side changed since the baseline
    takes that side's value whatever the behaviour; the behaviour decides real conflicts ([R16]).
    """

    last_written_hash: str = ""
    last_read_hash: str = ""
    last_crm_modstamp: datetime | None = None
    last_synced_at: datetime | None = None
    baseline: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.last_crm_modstamp is not None:
            object.__setattr__(self, "last_crm_modstamp", as_utc(self.last_crm_modstamp))
        if self.baseline is not None:
            object.__setattr__(self, "baseline", _freeze(self.baseline))


@dataclass(frozen=True)
class ConnectorSettings:
    """BU-level connector settings the engine needs ([R9]–[R11], [R17], [R19], [R24])."""

    matching_mode: MatchingMode = MatchingMode.UNIQUE_EMAIL
    match_by_email_when_no_crm_id: bool = False
    auto_create_prospects: bool = True
    update_email_from_crm: bool = True
    blank_crm_values_overwrite: bool = False
    new_record_object: CrmObject = CrmObject.LEAD
    connector_user_id: str = ""
    client_id: str = "loopline"  # Sforce-Call-Options: client=<client_id> ([R24])

    def __post_init__(self) -> None:
        object.__setattr__(self, "matching_mode", MatchingMode(self.matching_mode))
        object.__setattr__(self, "new_record_object", CrmObject(self.new_record_object))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, connector_user_id: str = "") -> ConnectorSettings:
        """From the Django ``Connector.settings`` JSON; unknown keys are ignored, missing ones take defaults."""
        known = {f for f in cls.__dataclass_fields__ if f != "connector_user_id"}
        kwargs = {k: v for k, v in data.items() if k in known}
        return cls(**kwargs, connector_user_id=connector_user_id or str(data.get("connector_user_id", "")))


def coerce_decimal(value: Any) -> Decimal | None:
    """A Decimal for a number-ish value (``"1,200.50"`` is not accepted), or ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            return None
        return result if result.is_finite() else None
    return None
