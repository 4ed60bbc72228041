"""Object and field metadata: the sandbox's data dictionary.

``FieldDef``/``ObjectDef`` carry everything describe needs (labels, lengths, picklists, flags); the SOQL engine
gets a slimmer view through :class:`SoqlSchema` (``crmsandbox.soql.schema`` protocol).  Custom fields and
validation rules come from the org's ``config.json`` (see :func:`build_registry`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

# describe type -> (soapType, SQLite column type)
TYPE_INFO: dict[str, tuple[str, str]] = {
    "id": ("tns:ID", "TEXT"),
    "reference": ("tns:ID", "TEXT"),
    "string": ("xsd:string", "TEXT"),
    "email": ("xsd:string", "TEXT"),
    "phone": ("xsd:string", "TEXT"),
    "url": ("xsd:string", "TEXT"),
    "textarea": ("xsd:string", "TEXT"),
    "picklist": ("xsd:string", "TEXT"),
    "multipicklist": ("xsd:string", "TEXT"),
    "combobox": ("xsd:string", "TEXT"),
    "boolean": ("xsd:boolean", "INTEGER"),
    "int": ("xsd:int", "INTEGER"),
    "double": ("xsd:double", "REAL"),
    "currency": ("xsd:double", "REAL"),
    "percent": ("xsd:double", "REAL"),
    "date": ("xsd:date", "TEXT"),
    "datetime": ("xsd:dateTime", "TEXT"),
}

DEFAULT_LENGTHS = {"string": 255, "email": 80, "phone": 40, "url": 255, "textarea": 32000, "picklist": 255,
                   "multipicklist": 4099, "combobox": 255, "id": 18, "reference": 18}


def label_of(name: str) -> str:
    base = name[:-3] if name.endswith(("__c", "__pc")) else name
    base = base.removesuffix("_")
    if base.endswith("Id") and len(base) > 2:
        base = base[:-2] + " ID"
    base = base.replace("_", " ")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", base)


@dataclass(frozen=True)
class FieldDef:
    """One field of an object, with the describe properties the sandbox emulates."""

    name: str
    type: str
    label: str = ""
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    defaulted_on_create: bool = False
    default: Any = None
    unique: bool = False
    external_id: bool = False
    id_lookup: bool = False
    picklist: tuple[str, ...] = ()
    picklist_default: str | None = None
    restricted: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    calculated: bool = False
    custom: bool = False
    precision: int = 0
    scale: int = 0

    @property
    def required_on_create(self) -> bool:
        return self.createable and not self.nillable and not self.defaulted_on_create

    @property
    def sql_type(self) -> str:
        return TYPE_INFO[self.type][1]

    def describe(self) -> dict[str, Any]:
        soap = TYPE_INFO[self.type][0]
        length = self.length if self.type in DEFAULT_LENGTHS else 0
        return {
            "aggregatable": self.type not in ("textarea", "multipicklist"),
            "autoNumber": False,
            "byteLength": length * 3,
            "calculated": self.calculated,
            "caseSensitive": False,
            "createable": self.createable,
            "custom": self.custom,
            "defaultValue": None,
            "defaultedOnCreate": self.defaulted_on_create,
            "digits": 0,
            "externalId": self.external_id,
            "filterable": self.type != "textarea",
            "groupable": self.type not in ("textarea", "multipicklist", "double", "currency", "percent",
                                           "datetime"),
            "htmlFormatted": False,
            "idLookup": self.id_lookup or self.type == "id",
            "label": self.label or label_of(self.name),
            "length": length,
            "name": self.name,
            "nameField": self.name == "Name",
            "nillable": self.nillable,
            "picklistValues": [
                {"active": True, "defaultValue": v == self.picklist_default, "label": v, "validFor": None,
                 "value": v}
                for v in self.picklist
            ],
            "polymorphicForeignKey": len(self.reference_to) > 1,
            "precision": self.precision,
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name,
            "restrictedPicklist": self.restricted,
            "scale": self.scale,
            "soapType": soap,
            "sortable": self.type not in ("textarea", "multipicklist"),
            "type": self.type,
            "unique": self.unique,
            "updateable": self.updateable,
        }


@dataclass(frozen=True)
class ValidationRule:
    """A tiny declarative validation rule (see docs/crmsandbox.md).

    ``condition``: ``not_blank`` | ``regex`` (field, when not blank, must match ``pattern``) |
    ``required_if`` (field must not be blank when ``when_field`` equals ``when_value``) |
    ``required_if_status`` (shorthand for ``required_if`` with ``when_field="Status"``).
    """

    name: str
    field: str
    condition: str
    message: str
    pattern: str | None = None
    when_field: str | None = None
    when_value: Any = None

    def violated(self, rec: dict[str, Any]) -> bool:
        value = rec.get(self.field)
        blank = value is None or value == ""
        if self.condition == "not_blank":
            return blank
        if self.condition == "regex":
            return (not blank) and not re.fullmatch(self.pattern or "", str(value))
        if self.condition in ("required_if", "required_if_status"):
            wf = self.when_field or "Status"
            other = rec.get(wf)
            hit = other in self.when_value if isinstance(self.when_value, list) else other == self.when_value
            return hit and blank
        return False


@dataclass
class ObjectDef:
    name: str
    key_prefix: str
    label: str
    label_plural: str
    fields: dict[str, FieldDef] = field(default_factory=dict)  # canonical name -> FieldDef (ordered)
    has_owner: bool = True
    createable: bool = True
    updateable: bool = True
    deletable: bool = True
    custom_setting: bool = False
    validation_rules: list[ValidationRule] = field(default_factory=list)
    child_relationships: list[dict[str, Any]] = field(default_factory=list)
    history: str | None = None  # name of the history object, when HasOptedOutOfEmail is tracked

    def __post_init__(self) -> None:
        self.by_lower: dict[str, FieldDef] = {}
        self._reindex()

    def _reindex(self) -> None:
        self.by_lower = {k.lower(): v for k, v in self.fields.items()}

    def add(self, f: FieldDef) -> None:
        self.fields[f.name] = f
        self.by_lower[f.name.lower()] = f

    def lookup(self, name: str) -> FieldDef | None:
        """The field called ``name`` (case-insensitive), or None."""
        return self.by_lower.get(name.lower())

    @property
    def table(self) -> str:
        return "sobj_" + self.name

    def reference_fields(self) -> list[FieldDef]:
        return [f for f in self.fields.values() if f.type == "reference"]


# ----------------------------------------------------------------------------------------- definitions
def _s(name: str, length: int = 255, **kw: Any) -> FieldDef:
    return FieldDef(name, "string", length=length, **kw)


def _ref(name: str, to: tuple[str, ...] | str, rel: str | None = None, **kw: Any) -> FieldDef:
    if isinstance(to, str):
        to = (to,)
    return FieldDef(name, "reference", length=18, reference_to=to,
                    relationship_name=rel if rel is not None else name[:-2], **kw)


def _pick(name: str, values: tuple[str, ...], default: str | None = None, restricted: bool = False,
          **kw: Any) -> FieldDef:
    return FieldDef(name, "picklist", length=255, picklist=values, picklist_default=default,
                    restricted=restricted, defaulted_on_create=default is not None, default=default, **kw)


def _bool(name: str, default: bool = False, **kw: Any) -> FieldDef:
    return FieldDef(name, "boolean", nillable=False, defaulted_on_create=True, default=default, **kw)


def _ro(f: FieldDef) -> FieldDef:
    """Read-only (system-maintained) variant of a field."""
    return replace(f, createable=False, updateable=False)


def _system_fields(has_owner: bool, owner_to: tuple[str, ...] = ("User",), modstamp: bool = True,
                   master: bool = False) -> list[FieldDef]:
    out = [
        FieldDef("Id", "id", label="Record ID", length=18, nillable=False, createable=False, updateable=False,
                 defaulted_on_create=True),
        FieldDef("IsDeleted", "boolean", label="Deleted", nillable=False, createable=False, updateable=False,
                 defaulted_on_create=True),
    ]
    if master:
        out.append(_ro(_ref("MasterRecordId", "X", rel="MasterRecord")))
    out += [
        FieldDef("CreatedDate", "datetime", nillable=False, createable=False, updateable=False,
                 defaulted_on_create=True),
        _ro(_ref("CreatedById", "User", rel="CreatedBy", nillable=False, defaulted_on_create=True)),
    ]
    if modstamp:
        out += [
            FieldDef("LastModifiedDate", "datetime", nillable=False, createable=False, updateable=False,
                     defaulted_on_create=True),
            _ro(_ref("LastModifiedById", "User", rel="LastModifiedBy", nillable=False,
                     defaulted_on_create=True)),
            FieldDef("SystemModstamp", "datetime", label="System Modstamp", nillable=False, createable=False,
                     updateable=False, defaulted_on_create=True),
        ]
    if has_owner:
        out.append(_ref("OwnerId", owner_to, rel="Owner", nillable=False, defaulted_on_create=True))
    return out


LEAD_STATUS = ("Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted")
LEAD_SOURCE = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")
INDUSTRY = ("Agriculture", "Apparel", "Banking", "Biotechnology", "Chemicals", "Communications", "Construction",
            "Consulting", "Education", "Electronics", "Energy", "Engineering", "Entertainment", "Environmental",
            "Finance", "Food & Beverage", "Government", "Healthcare", "Hospitality", "Insurance", "Machinery",
            "Manufacturing", "Media", "Not For Profit", "Recreation", "Retail", "Shipping", "Technology",
            "Telecommunications", "Transportation", "Utilities", "Other")
RATING = ("Hot", "Warm", "Cold")
SALUTATION = ("Mr.", "Ms.", "Mrs.", "Dr.", "Prof.")
STAGES = ("Prospecting", "Qualification", "Needs Analysis", "Value Proposition", "Id. Decision Makers",
          "Perception Analysis", "Proposal/Price Quote", "Negotiation/Review", "Closed Won", "Closed Lost")
ACCOUNT_TYPE = ("Prospect", "Customer - Direct", "Customer - Channel", "Channel Partner / Reseller",
                "Installation Partner", "Technology Partner", "Other")


def _person_fields() -> list[FieldDef]:
    return [
        _s("FirstName", 40),
        _s("LastName", 80),
        _pick("Salutation", SALUTATION),
        FieldDef("PersonEmail", "email", length=80, label="Email"),
        _ro(_ref("PersonContactId", "Contact", rel="PersonContact")),
        _ro(FieldDef("IsPersonAccount", "boolean", nillable=False, defaulted_on_create=True, default=False)),
        _bool("PersonHasOptedOutOfEmail", label="Email Opt Out"),
        _bool("PersonDoNotCall", label="Do Not Call"),
        _s("PersonTitle", 128, label="Title"),
        FieldDef("PersonMobilePhone", "phone", length=40, label="Mobile"),
    ]


def _address(prefix: str) -> list[FieldDef]:
    return [
        FieldDef(prefix + "Street", "textarea", length=255),
        _s(prefix + "City", 40),
        _s(prefix + "State", 80),
        _s(prefix + "PostalCode", 20),
        _s(prefix + "Country", 80),
    ]


def standard_objects() -> list[ObjectDef]:
    """Fresh definitions of the standard objects (no custom fields)."""
    objs: list[ObjectDef] = []

    def obj(name: str, prefix: str, fields: list[FieldDef], plural: str | None = None, **kw: Any) -> ObjectDef:
        o = ObjectDef(name, prefix, label_of(name), plural or (label_of(name) + "s"),
                      fields={f.name: f for f in fields}, **kw)
        objs.append(o)
        return o

    obj("Lead", "00Q", [*_system_fields(True, ("User", "Group"), master=True), _pick("Salutation", SALUTATION), _s("FirstName", 40), _s("LastName", 80, nillable=False), _ro(_s("Name", 121, label="Full Name")), _s("Company", 255, nillable=False), _s("Title", 128), FieldDef("Email", "email", length=80, id_lookup=True), FieldDef("Phone", "phone", length=40), FieldDef("MobilePhone", "phone", length=40), FieldDef("Website", "url", length=255), *_address(""), _pick("Industry", INDUSTRY), _pick("LeadSource", LEAD_SOURCE), _pick("Status", LEAD_STATUS, default="Open - Not Contacted", restricted=True, nillable=False), _pick("Rating", RATING), FieldDef("NumberOfEmployees", "int", label="Employees", precision=8), FieldDef("AnnualRevenue", "currency", precision=18), FieldDef("Description", "textarea", length=32000), _bool("HasOptedOutOfEmail", label="Email Opt Out"), _bool("DoNotCall"), _ro(_bool("IsConverted", label="Converted")), _ro(FieldDef("ConvertedDate", "date")), _ro(_ref("ConvertedAccountId", "Account", rel="ConvertedAccount")), _ro(_ref("ConvertedContactId", "Contact", rel="ConvertedContact")), _ro(_ref("ConvertedOpportunityId", "Opportunity", rel="ConvertedOpportunity")), _bool("IsUnreadByOwner", default=True)], history="LeadHistory")

    obj("Contact", "003", [*_system_fields(True, master=True), _ref("AccountId", "Account"), _pick("Salutation", SALUTATION), _s("FirstName", 40), _s("LastName", 80, nillable=False), _ro(_s("Name", 121, label="Full Name")), _s("Title", 128), _s("Department", 80), FieldDef("Email", "email", length=80, id_lookup=True), FieldDef("Phone", "phone", length=40), FieldDef("MobilePhone", "phone", length=40), *_address("Mailing"), _pick("LeadSource", LEAD_SOURCE), FieldDef("Birthdate", "date"), FieldDef("Description", "textarea", length=32000), _bool("HasOptedOutOfEmail", label="Email Opt Out"), _bool("DoNotCall"), _ro(FieldDef("IsPersonAccount", "boolean", nillable=False, defaulted_on_create=True, default=False)), _ref("ReportsToId", "Contact", rel="ReportsTo")], history="ContactHistory")

    obj("Account", "001", [*_system_fields(True, master=True), _s("Name", 255, nillable=False, label="Account Name"), _pick("Type", ACCOUNT_TYPE, label="Account Type"), _ref("ParentId", "Account", rel="Parent"), _s("AccountNumber", 40), FieldDef("Website", "url", length=255), FieldDef("Phone", "phone", length=40), _pick("Industry", INDUSTRY), FieldDef("AnnualRevenue", "currency", precision=18), FieldDef("NumberOfEmployees", "int", label="Employees", precision=8), *_address("Billing"), *_address("Shipping"), _pick("Rating", RATING), FieldDef("Description", "textarea", length=32000), _pick("AccountSource", LEAD_SOURCE), *_person_fields()])

    obj("User", "005", [*_system_fields(False), FieldDef("Username", "string", length=80, nillable=False, unique=True, id_lookup=True), FieldDef("Email", "email", length=128, nillable=False), _s("FirstName", 40), _s("LastName", 80, nillable=False), _ro(_s("Name", 121, label="Full Name")), _s("Alias", 8, nillable=False, defaulted_on_create=True), _s("Title", 80), _s("Department", 80), FieldDef("IsActive", "boolean", nillable=False, defaulted_on_create=True, default=True, label="Active"), _ref("ProfileId", "Profile", nillable=False), _ref("UserRoleId", "UserRole", rel="UserRole"), _pick("UserType", ("Standard",), default="Standard"), _s("TimeZoneSidKey", 40, defaulted_on_create=True, default="America/Los_Angeles")], has_owner=False)

    obj("Profile", "00e", [*_system_fields(False), _s("Name", 255, nillable=False), _bool("PermissionsViewAllData", label="View All Data"), _bool("PermissionsModifyAllData", label="Modify All Data")], has_owner=False, createable=False, updateable=False, deletable=False)

    obj("Group", "00G", [*_system_fields(False), _s("Name", 40, nillable=False), _s("DeveloperName", 80, defaulted_on_create=True), _pick("Type", ("Queue", "Regular"), default="Regular"), FieldDef("Email", "email", length=255)], has_owner=False)

    obj("Organization", "00D", [*_system_fields(False), _s("Name", 80), _ro(_bool("IsSandbox")), _ro(_s("OrganizationType", 40)), _ro(_s("InstanceName", 5))], has_owner=False, createable=False, updateable=False, deletable=False)

    obj("Campaign", "701", [*_system_fields(True, master=False), _s("Name", 80, nillable=False), _pick("Type", ("Conference", "Webinar", "Trade Show", "Public Relations", "Partners", "Referral Program", "Advertisement", "Banner Ads", "Direct Mail", "Email", "Telemarketing", "Other")), _pick("Status", ("Planned", "In Progress", "Completed", "Aborted")), FieldDef("StartDate", "date"), FieldDef("EndDate", "date"), _bool("IsActive", label="Active"), FieldDef("ActualCost", "currency", precision=18), FieldDef("BudgetedCost", "currency", precision=18), FieldDef("ExpectedRevenue", "currency", precision=18), _ref("ParentId", "Campaign", rel="Parent"), FieldDef("Description", "textarea", length=32000)])

    obj("CampaignMember", "00v", [*_system_fields(False), _ref("CampaignId", "Campaign", nillable=False, updateable=False), _ref("LeadId", "Lead", updateable=False), _ref("ContactId", "Contact", updateable=False), FieldDef("Status", "picklist", length=40, picklist=("Sent", "Responded"), picklist_default="Sent", defaulted_on_create=True, default="Sent"), _ro(_bool("HasResponded", label="Responded")), _ro(FieldDef("FirstRespondedDate", "date"))], has_owner=False)

    obj("Opportunity", "006", [*_system_fields(True), _s("Name", 120, nillable=False), _ref("AccountId", "Account"), _pick("StageName", STAGES, restricted=True, nillable=False, label="Stage"), FieldDef("CloseDate", "date", nillable=False), FieldDef("Amount", "currency", precision=18), FieldDef("Probability", "percent", precision=3), _pick("Type", ("Existing Customer - Upgrade", "Existing Customer - Replacement", "Existing Customer - Downgrade", "New Customer")), _pick("LeadSource", LEAD_SOURCE), _ro(_bool("IsClosed", label="Closed")), _ro(_bool("IsWon", label="Won")), _ref("CampaignId", "Campaign"), FieldDef("Description", "textarea", length=32000)], plural="Opportunities")

    obj("OpportunityContactRole", "00K", [*_system_fields(False), _ref("OpportunityId", "Opportunity", nillable=False, updateable=False), _ref("ContactId", "Contact", nillable=False), _pick("Role", ("Business User", "Decision Maker", "Economic Buyer", "Economic Decision Maker", "Evaluator", "Executive Sponsor", "Influencer", "Technical Buyer", "Other")), _bool("IsPrimary", label="Primary")], has_owner=False)

    obj("Task", "00T", [*_system_fields(True, ("User", "Group")), _ref("WhoId", ("Contact", "Lead"), rel="Who"), _ref("WhatId", ("Account", "Opportunity", "Campaign"), rel="What"), FieldDef("Subject", "combobox", length=255), FieldDef("ActivityDate", "date", label="Due Date Only"), _pick("Status", ("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"), default="Not Started", nillable=False), _pick("Priority", ("High", "Normal", "Low"), default="Normal", nillable=False), FieldDef("Description", "textarea", length=32000), _pick("TaskSubtype", ("Task", "Email", "ListEmail", "Cadence", "Call"), default="Task", updateable=False), _ro(_bool("IsClosed", label="Closed"))])

    for hist, parent in (("LeadHistory", "Lead"), ("ContactHistory", "Contact")):
        obj(hist, "017", [
            FieldDef("Id", "id", label="History ID", length=18, nillable=False, createable=False,
                     updateable=False, defaulted_on_create=True),
            FieldDef("IsDeleted", "boolean", label="Deleted", nillable=False, createable=False,
                     updateable=False, defaulted_on_create=True),
            _ro(_ref(parent + "Id", parent, nillable=False)),
            _ro(FieldDef("Field", "picklist", length=255, nillable=False)),
            _ro(_pick("DataType", ("Boolean", "Text", "Date", "DateTime", "EntityId"))),
            _ro(_s("OldValue", 255)),
            _ro(_s("NewValue", 255)),
            FieldDef("CreatedDate", "datetime", nillable=False, createable=False, updateable=False,
                     defaulted_on_create=True),
            _ro(_ref("CreatedById", "User", rel="CreatedBy", nillable=False, defaulted_on_create=True)),
        ], plural=label_of(hist).replace("History", "Histories"), has_owner=False, createable=False,
            updateable=False, deletable=False)
    return objs


# Fields mirrored between a person account (left) and its person contact (right).
PERSON_MIRROR = {
    "FirstName": "FirstName",
    "LastName": "LastName",
    "Salutation": "Salutation",
    "PersonEmail": "Email",
    "PersonHasOptedOutOfEmail": "HasOptedOutOfEmail",
    "PersonDoNotCall": "DoNotCall",
    "PersonTitle": "Title",
    "PersonMobilePhone": "MobilePhone",
}


def _custom_field(spec: dict[str, Any]) -> FieldDef:
    ftype = spec.get("type", "string")
    if ftype == "text":
        ftype = "string"
    if ftype == "checkbox":
        ftype = "boolean"
    if ftype == "number":
        ftype = "double"
    if ftype not in TYPE_INFO or ftype == "id":
        raise ValueError(f"unsupported custom field type {ftype!r}")
    name = spec["name"]
    if not name.endswith("__c"):
        raise ValueError(f"custom field names end with __c: {name!r}")
    values = tuple(spec.get("values", ()))
    default = spec.get("default")
    if ftype == "boolean":
        return FieldDef(name, ftype, label=spec.get("label", label_of(name)), nillable=False,
                        defaulted_on_create=True, default=bool(default), custom=True)
    reference_to = tuple([spec["reference_to"]] if isinstance(spec.get("reference_to"), str)
                         else spec.get("reference_to", ()))
    return FieldDef(
        name,
        ftype,
        label=spec.get("label", label_of(name)),
        length=int(spec.get("length", DEFAULT_LENGTHS.get(ftype, 0))),
        nillable=not spec.get("required", False),
        unique=bool(spec.get("unique", False)),
        external_id=bool(spec.get("external_id", False)),
        id_lookup=bool(spec.get("external_id", False)),
        picklist=values,
        picklist_default=default if ftype == "picklist" else None,
        restricted=bool(spec.get("restricted", False)),
        default=default,
        defaulted_on_create=default is not None,
        reference_to=reference_to,
        relationship_name=(name[:-3] + "__r") if ftype == "reference" else None,
        custom=True,
        precision=18 if ftype in ("double", "currency", "percent") else 0,
        scale=int(spec.get("scale", 2 if ftype in ("currency", "percent") else 0)),
    )


class Registry:
    """All object definitions of one org (standard + custom fields + validation rules)."""

    def __init__(self, config: dict[str, Any]):
        self.objects: dict[str, ObjectDef] = {}
        for std in standard_objects():
            self.objects[std.name] = std
        self.by_lower = {k.lower(): v for k, v in self.objects.items()}
        for obj_name, specs in (config.get("custom_fields") or {}).items():
            o = self.get(obj_name)
            if o is None:
                raise ValueError(f"custom_fields: unknown object {obj_name!r}")
            for spec in specs:
                o.add(_custom_field(spec))
        # Contact custom fields appear on person accounts with a __pc suffix.
        acct = self.objects["Account"]
        for f in self.objects["Contact"].fields.values():
            if f.custom:
                acct.add(replace(f, name=f.name[:-3] + "__pc", unique=False, external_id=False,
                                 id_lookup=False, nillable=True))
        for obj_name, rules in (config.get("validation_rules") or {}).items():
            o = self.get(obj_name)
            if o is None:
                raise ValueError(f"validation_rules: unknown object {obj_name!r}")
            for r in rules:
                fdef = o.lookup(r["field"])
                if fdef is None:
                    raise ValueError(f"validation rule {r.get('name')!r}: unknown field {r['field']!r}")
                o.validation_rules.append(ValidationRule(
                    name=r.get("name", "rule"), field=fdef.name, condition=r.get("condition", "not_blank"),
                    message=r.get("message", f"{fdef.name} is invalid"), pattern=r.get("pattern"),
                    when_field=r.get("when_field"),
                    when_value=r.get("when_value", r.get("status")),
                ))
        # MasterRecordId points to the same object.
        for o in self.objects.values():
            mr = o.fields.get("MasterRecordId")
            if mr is not None:
                o.add(replace(mr, reference_to=(o.name,)))
        self.by_prefix: dict[str, ObjectDef] = {}
        for o in self.objects.values():
            self.by_prefix.setdefault(o.key_prefix, o)
        self._child_relationships()

    def get(self, name: str) -> ObjectDef | None:
        """The object called ``name`` (case-insensitive), or None."""
        return self.by_lower.get(name.lower())

    def _child_relationships(self) -> None:
        plural_names = {
            ("Contact", "AccountId"): "Contacts", ("Opportunity", "AccountId"): "Opportunities",
            ("CampaignMember", "LeadId"): "CampaignMembers", ("CampaignMember", "ContactId"): "CampaignMembers",
            ("CampaignMember", "CampaignId"): "CampaignMembers", ("Task", "WhoId"): "Tasks",
            ("Task", "WhatId"): "Tasks", ("OpportunityContactRole", "OpportunityId"): "OpportunityContactRoles",
            ("OpportunityContactRole", "ContactId"): "OpportunityContactRoles",
            ("LeadHistory", "LeadId"): "Histories", ("ContactHistory", "ContactId"): "Histories",
        }
        for child in self.objects.values():
            for f in child.reference_fields():
                for parent in f.reference_to:
                    p = self.objects.get(parent)
                    if p is None:
                        continue
                    p.child_relationships.append({
                        "cascadeDelete": False, "childSObject": child.name, "deprecatedAndHidden": False,
                        "field": f.name, "junctionIdListNames": [], "junctionReferenceTo": [],
                        "relationshipName": plural_names.get((child.name, f.name)), "restrictedDelete": False,
                    })


class SoqlSchema:
    """Adapter exposing the registry through the SOQL engine's ``Schema`` protocol."""

    def __init__(self, registry: Registry):
        from crmsandbox.soql.schema import FieldInfo, ObjectInfo

        self._objects = {}
        for o in registry.objects.values():
            fields = {
                f.name.lower(): FieldInfo(f.name, f.type, tuple(f.reference_to), f.relationship_name)
                for f in o.fields.values()
            }
            self._objects[o.name.lower()] = ObjectInfo(o.name, o.table, fields, has_owner=o.has_owner)

    def object(self, name: str):  # -> ObjectInfo | None
        return self._objects.get(name.lower())
