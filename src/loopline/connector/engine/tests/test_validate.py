"""Outgoing value checks against describe metadata ([R20])."""

from __future__ import annotations

from datetime import date

from loopline.connector.engine.model import NOT_PROVIDED
from loopline.connector.engine.validate import (
    FieldDescribe,
    ObjectDescribe,
    Operation,
    validate_payload,
)

LEAD_DESCRIBE = {
    "name": "Lead",
    "fields": [
        {
            "name": "Id",
            "type": "id",
            "nillable": False,
            "createable": False,
            "updateable": False,
            "defaultedOnCreate": True,
        },
        {
            "name": "LastName",
            "type": "string",
            "length": 80,
            "nillable": False,
            "createable": True,
            "updateable": True,
        },
        {
            "name": "Company",
            "type": "string",
            "length": 255,
            "nillable": False,
            "createable": True,
            "updateable": True,
        },
        {"name": "Email", "type": "email", "length": 80, "nillable": True},
        {
            "name": "Status",
            "type": "picklist",
            "nillable": False,
            "defaultedOnCreate": True,
            "restrictedPicklist": True,
            "picklistValues": [
                {"value": "Open", "active": True},
                {"value": "Closed", "active": True},
                {"value": "Old", "active": False},
            ],
        },
        {"name": "Industry", "type": "picklist", "picklistValues": [{"value": "Tech", "active": True}]},
        {"name": "HasOptedOutOfEmail", "type": "boolean", "nillable": False, "defaultedOnCreate": True},
        {"name": "NumberOfEmployees", "type": "int", "precision": 8},
        {"name": "AnnualRevenue", "type": "currency", "precision": 18, "scale": 0},
        {"name": "Discount__c", "type": "percent", "precision": 5, "scale": 2},
        {"name": "Since__c", "type": "date"},
        {"name": "Reviewed__c", "type": "datetime"},
        {
            "name": "Formula__c",
            "type": "string",
            "calculated": True,
            "createable": False,
            "updateable": False,
        },
        {
            "name": "Secret__c",
            "type": "string",
            "required": True,
            "nillable": False,
            "createable": True,
            "updateable": True,
        },
    ],
}
LEAD = ObjectDescribe.from_describe(LEAD_DESCRIBE)


def codes(result):
    return {(p.field, p.code) for p in result.problems}


def test_required_on_create_follows_salesforce_rule():
    assert set(LEAD.required_on_create()) == {"LastName", "Company", "Secret__c"}
    assert not FieldDescribe("HasOptedOutOfEmail", "boolean", nillable=False).required_on_create


def test_create_fills_in_company_and_last_name():
    # [R20] decision: missing Lead.Company / LastName → "[not provided]" (as Pardot does); others are problems
    result = validate_payload("Lead", {"Email": "a@b.com"}, LEAD, Operation.CREATE)
    assert result.payload["Company"] == NOT_PROVIDED and result.payload["LastName"] == NOT_PROVIDED
    assert result.filled == {"Company": NOT_PROVIDED, "LastName": NOT_PROVIDED}
    assert codes(result) == {("Secret__c", "REQUIRED_FIELD_MISSING")}
    strict = validate_payload("Lead", {"Secret__c": "x"}, LEAD, "create", fill_ins={})
    assert codes(strict) == {("LastName", "REQUIRED_FIELD_MISSING"), ("Company", "REQUIRED_FIELD_MISSING")}


def test_update_does_not_require_fields_but_rejects_clearing_them():
    assert validate_payload("Lead", {"Email": "a@b.com"}, LEAD, Operation.UPDATE).ok
    result = validate_payload("Lead", {"LastName": None}, LEAD, Operation.UPDATE)
    assert codes(result) == {("LastName", "REQUIRED_FIELD_MISSING")}


def test_type_checks_and_coercion():
    result = validate_payload(
        "Lead",
        {
            "Email": " Ann@Example.com ",
            "HasOptedOutOfEmail": "true",
            "NumberOfEmployees": "12",
            "AnnualRevenue": "1000.4",
            "Discount__c": 12.345,
            "Since__c": date(2024, 1, 2),
            "Reviewed__c": "2024-01-02T03:04:05Z",
            "Industry": "tech",
        },
        LEAD,
    )
    assert result.ok, result.summary()
    assert result.payload == {
        "Email": "ann@example.com",
        "HasOptedOutOfEmail": True,
        "NumberOfEmployees": 12,
        "AnnualRevenue": 1000,
        "Discount__c": 12.35,
        "Since__c": "2024-01-02",
        "Reviewed__c": "2024-01-02T03:04:05Z",
        "Industry": "Tech",  # canonical picklist spelling
    }


def test_salesforce_error_codes():
    result = validate_payload(
        "Lead",
        {
            "Email": "not an email",
            "LastName": "x" * 81,
            "Status": "Old",
            "NumberOfEmployees": "many",
            "Discount__c": 1000,
            "Bogus__c": 1,
            "Formula__c": "x",
            "HasOptedOutOfEmail": "maybe",
            "Since__c": "2024-13-45",
        },
        LEAD,
    )
    assert codes(result) == {
        ("Email", "INVALID_EMAIL_ADDRESS"),
        ("LastName", "STRING_TOO_LONG"),
        ("Status", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),  # inactive value
        ("NumberOfEmployees", "INVALID_TYPE_ON_FIELD_IN_RECORD"),
        ("Discount__c", "NUMBER_OUTSIDE_VALID_RANGE"),
        ("Bogus__c", "INVALID_FIELD"),
        ("Formula__c", "INVALID_FIELD_FOR_INSERT_UPDATE"),
        ("HasOptedOutOfEmail", "INVALID_TYPE_ON_FIELD_IN_RECORD"),
        ("Since__c", "INVALID_TYPE_ON_FIELD_IN_RECORD"),
    }
    assert not result.ok and "STRING_TOO_LONG" in result.summary()


def test_unrestricted_picklist_and_multipicklist():
    desc = ObjectDescribe(
        "Lead",
        {
            "Industry": FieldDescribe("Industry", "picklist", picklist_values=("Tech",)),
            "Tags__c": FieldDescribe(
                "Tags__c", "multipicklist", picklist_values=("A", "B"), restricted_picklist=True
            ),
        },
    )
    assert validate_payload("Lead", {"Industry": "Farming"}, desc).payload == {"Industry": "Farming"}
    assert validate_payload("Lead", {"Tags__c": "a; B"}, desc).payload == {"Tags__c": "A;B"}
    assert not validate_payload("Lead", {"Tags__c": "A;C"}, desc).ok


def test_field_names_case_insensitive():
    assert validate_payload("Lead", {"email": "a@b.com"}, LEAD).payload == {"Email": "a@b.com"}


def test_person_account_create_does_not_need_account_name():
    # [R14] Salesforce builds a person account's Name from First/LastName
    account = ObjectDescribe(
        "Account",
        {
            "Name": FieldDescribe("Name", "string", length=255, nillable=False),
            "LastName": FieldDescribe("LastName", "string", length=80, nillable=False),
        },
    )
    result = validate_payload("PersonAccount", {"LastName": "Lee"}, account, Operation.CREATE)
    assert result.ok and result.payload == {"LastName": "Lee"}
    assert not validate_payload("Account", {}, account, Operation.CREATE, fill_ins={}).ok
