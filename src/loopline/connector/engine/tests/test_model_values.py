"""Model helpers, the default mapping ([R18], [R21]) and value normalisation/hashing ([R17], [R24])."""

from __future__ import annotations

import ast
import pathlib
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from loopline.connector.engine.model import (
    NOT_PROVIDED,
    ConnectorSettings,
    CrmObject,
    CrmRecord,
    Direction,
    FieldKind,
    FieldMapping,
    MappingError,
    MatchingMode,
    SyncBehaviour,
    default_mapping,
    format_datetime,
    id18,
    mapped_crm_fields,
    parse_datetime,
    same_id,
    sobject_name,
)
from loopline.connector.engine.values import (
    crm_hash,
    field_digest,
    is_blank,
    normalise,
    to_crm_value,
    to_loopline_value,
    values_hash,
)

ENGINE = pathlib.Path(__file__).resolve().parents[1]


def test_engine_is_stdlib_only():
    # The engine must not need Django, HTTP clients or a database.
    allowed_roots = {
        "__future__",
        "collections",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "hashlib",
        "json",
        "re",
        "types",
        "typing",
        "csv",
        "io",
        "random",
        "urllib",
        "math",
    }
    for path in ENGINE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed_roots, f"{path.name} imports {roots - allowed_roots}"


def test_parse_and_format_datetimes():
    assert parse_datetime("2013-05-20T20:49:32.000+0000") == datetime(2013, 5, 20, 20, 49, 32, tzinfo=UTC)
    assert parse_datetime("2024-01-01T02:00:00+02:00") == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_datetime("2024-01-01T00:00:00Z") == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_datetime(None) is None and parse_datetime("") is None
    assert parse_datetime(datetime(2024, 1, 1)) == datetime(2024, 1, 1, tzinfo=UTC)  # naive = UTC
    with pytest.raises(ValueError):
        parse_datetime("yesterday")
    assert format_datetime(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00Z"
    assert format_datetime(datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)) == "2024-01-01T00:00:00.123Z"


def test_ids():
    assert id18("001A0000006Vm9r") == "001A0000006Vm9rIAC"
    assert same_id("001A0000006Vm9r", "001A0000006VM9RIAC")
    assert not same_id("001A0000006Vm9r", "") and not same_id(None, None)
    assert sobject_name("PersonAccount") == "Account" and sobject_name("Lead") == "Lead"


def test_default_mapping_covers_standard_fields():
    # [R21]
    by_field = {m.loopline_field: m for m in default_mapping()}
    expected = {
        "first_name",
        "last_name",
        "email",
        "company",
        "job_title",
        "phone",
        "fax",
        "address_one",
        "city",
        "state",
        "zip",
        "country",
        "industry",
        "website",
        "annual_revenue",
        "employees",
        "source",
        "opted_out",
        "do_not_call",
        "score",
        "grade",
        "campaign",
        "crm_owner_id",
    }
    assert expected <= set(by_field)
    assert by_field["opted_out"].crm_field("Lead") == "HasOptedOutOfEmail"
    assert by_field["opted_out"].crm_field("PersonAccount") == "PersonHasOptedOutOfEmail"
    assert by_field["email"].crm_field("PersonAccount") == "PersonEmail"
    assert by_field["address_one"].crm_field("Contact") == "MailingStreet"
    assert by_field["company"].crm_field("Contact") == "Account.Name"
    assert not by_field["company"].crm_writable("Contact") and by_field["company"].crm_writable("Lead")
    assert by_field["industry"].crm_field("Contact") is None
    # [R18] fixed fields
    assert {f for f, m in by_field.items() if m.fixed} == {"score", "grade", "campaign", "crm_owner_id"}
    assert by_field["score"].direction is Direction.TO_CRM
    assert by_field["crm_owner_id"].direction is Direction.TO_LOOPLINE
    assert "Account.Name" in mapped_crm_fields(default_mapping(), "Contact")


def test_mapping_validation_and_from_columns():
    with pytest.raises(MappingError):
        FieldMapping("score", {"Lead": "X"}, fixed=True)  # fixed needs a direction
    with pytest.raises(MappingError):
        FieldMapping(
            "job_title", {"Lead": "Title"}, direction=Direction.TO_CRM
        )  # only fixed fields are one-way
    row = FieldMapping.from_columns(
        "job_title", lead_field="Title", contact_field="Title", behaviour="use_crm"
    )
    assert row.behaviour is SyncBehaviour.USE_CRM and row.crm_field("PersonAccount") is None
    fixed = FieldMapping.from_columns("score", lead_field="pi__score__c", behaviour="use_crm")
    assert fixed.fixed and fixed.direction is Direction.TO_CRM and fixed.crm_field("Lead") == "pi__score__c"
    custom = FieldMapping.from_columns("custom.tier", lead_field="Tier__c", kind="integer")
    assert custom.kind is FieldKind.INTEGER and not custom.fixed


def test_crm_record_from_api():
    raw = {
        "attributes": {"type": "Contact"},
        "Id": "003000000000001AAA",
        "Email": "A@B.com",
        "Account": {"attributes": {"type": "Account"}, "Name": "Acme"},
        "SystemModstamp": "2024-01-01T00:00:00.000+0000",
        "LastModifiedById": "005X",
        "OwnerId": "005Y",
        "IsDeleted": False,
        "AccountId": "001A",
    }
    r = CrmRecord.from_api("Contact", raw)
    assert r.values["Account.Name"] == "Acme" and r.values["OwnerId"] == "005Y"
    assert r.email == "a@b.com" and r.account_id == "001A" and r.last_modified_by_id == "005X"
    pa = CrmRecord.from_api(
        "Account",
        {
            "Id": "001",
            "IsPersonAccount": True,
            "PersonEmail": "x@y.z",
            "PersonContactId": "003P",
            "SystemModstamp": "2024-01-01T00:00:00Z",
        },
    )
    assert (
        pa.object_type == CrmObject.PERSON_ACCOUNT and pa.person_contact_id == "003P" and pa.email == "x@y.z"
    )
    with pytest.raises(ValueError):
        CrmRecord.from_api("Lead", {"Id": "00Q"})


def test_settings_from_dict():
    s = ConnectorSettings.from_dict(
        {"matching_mode": "crm_id", "unknown": 1, "new_record_object": "Contact"}, connector_user_id="005C"
    )
    assert s.matching_mode is MatchingMode.CRM_ID and s.new_record_object is CrmObject.CONTACT
    assert s.connector_user_id == "005C" and s.auto_create_prospects


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        (FieldKind.TEXT, " Acme ", "Acme"),
        (FieldKind.TEXT, "a\r\nb", "a\nb"),
        (FieldKind.EMAIL, "Ann@Example.COM", "ann@example.com"),
        (FieldKind.BOOLEAN, "true", True),
        (FieldKind.BOOLEAN, 0, False),
        (FieldKind.INTEGER, "5", 5.0),
        (FieldKind.DECIMAL, Decimal("1000.00"), 1000),
        (FieldKind.DECIMAL, 0.1, "0.10"),
        (FieldKind.DATE, "2024-01-02", date(2024, 1, 2)),
        (FieldKind.DATETIME, "2024-01-02T00:00:00.000+0000", datetime(2024, 1, 2, tzinfo=UTC)),
        (FieldKind.ID, "001A0000006Vm9r", "001A0000006VM9RIAC"),
    ],
)
def test_normalise_equal(kind, a, b):
    assert normalise(kind, a) == normalise(kind, b)


def test_blankness():
    # [R17] blanks: None, "", whitespace and the fill-in placeholder; False and 0 are values
    assert (
        is_blank(FieldKind.TEXT, "  ")
        and is_blank(FieldKind.TEXT, NOT_PROVIDED)
        and is_blank(FieldKind.TEXT, None)
    )
    assert not is_blank(FieldKind.BOOLEAN, False) and not is_blank(FieldKind.INTEGER, 0)
    assert is_blank(FieldKind.DECIMAL, "") and is_blank(FieldKind.BOOLEAN, None)


def test_output_forms():
    assert to_crm_value(FieldKind.DECIMAL, Decimal("12.50")) == 12.5
    assert to_crm_value(FieldKind.DECIMAL, Decimal("1000.00")) == 1000
    assert to_crm_value(FieldKind.DECIMAL, Decimal("1234567890123456.78")) == "1234567890123456.78"
    assert to_crm_value(FieldKind.DATE, date(2024, 1, 2)) == "2024-01-02"
    assert to_loopline_value(FieldKind.DECIMAL, 12.5) == Decimal("12.5")
    assert to_loopline_value(FieldKind.INTEGER, "7") == 7
    assert to_loopline_value(FieldKind.TEXT, None) == ""
    assert to_loopline_value(FieldKind.EMAIL, " A@B.COM ") == "a@b.com"


def test_hashes_are_stable_and_normalised():
    # [R24]
    kinds = {"N": FieldKind.DECIMAL, "E": FieldKind.EMAIL}
    assert values_hash({"N": 1, "E": "A@b.c", "X": ""}, kinds) == values_hash(
        {"E": "a@b.c", "N": "1.0"}, kinds
    )
    assert values_hash({"N": 1}, kinds) != values_hash({"N": 2}, kinds)
    mappings = default_mapping()
    a = crm_hash({"FirstName": "Ann", "Unmapped__c": 1}, mappings, "Lead")
    assert a == crm_hash({"FirstName": " Ann", "Unmapped__c": 2}, mappings, "Lead")
    assert field_digest(FieldKind.TEXT, "x") == field_digest(FieldKind.TEXT, " x ")


def test_default_behaviour_is_use_crm_except_opt_out():
    by_field = {m.loopline_field: m for m in default_mapping()}
    assert by_field["first_name"].behaviour is SyncBehaviour.USE_CRM
    assert by_field["opted_out"].behaviour is SyncBehaviour.MOST_RECENT_FIELD
    assert default_mapping(behaviour=SyncBehaviour.USE_LOOPLINE)[0].behaviour is SyncBehaviour.USE_LOOPLINE
