"""sObject REST resources through simple-salesforce, with exact wire checks through httpx."""

from __future__ import annotations

import pytest
from simple_salesforce.exceptions import (
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceResourceNotFound,
)

from crmsandbox.tests.fixtures import unique

V = "/services/data/v59.0"


def test_versions_list_needs_no_auth(sandbox):
    import httpx

    r = httpx.get(sandbox.base + "/services/data/", verify=sandbox.verify)
    assert r.status_code == 200
    assert {"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"} in r.json()


def test_limit_header_and_content_type(admin_http):
    r = admin_http.get(V + "/sobjects")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json;charset=UTF-8"
    used, total = r.headers["sforce-limit-info"].removeprefix("api-usage=").split("/")
    assert int(used) >= 1 and int(total) == 15000
    r2 = admin_http.get(V + "/sobjects/Nope/describe")
    assert r2.status_code == 404 and "sforce-limit-info" in r2.headers
    used2 = int(r2.headers["sforce-limit-info"].removeprefix("api-usage=").split("/")[0])
    assert used2 > int(used)


def test_describe_global_and_object(sf, admin_http):
    g = sf.describe()
    assert g["encoding"] == "UTF-8" and g["maxBatchSize"] == 200
    names = {o["name"]: o for o in g["sobjects"]}
    for name, prefix in [
        ("Lead", "00Q"),
        ("Contact", "003"),
        ("Account", "001"),
        ("User", "005"),
        ("Group", "00G"),
        ("Campaign", "701"),
        ("CampaignMember", "00v"),
        ("Opportunity", "006"),
        ("OpportunityContactRole", "00K"),
        ("Task", "00T"),
        ("LeadHistory", "017"),
        ("ContactHistory", "017"),
        ("Organization", "00D"),
    ]:
        assert names[name]["keyPrefix"] == prefix
    d = sf.Lead.describe()
    fields = {f["name"]: f for f in d["fields"]}
    assert fields["LastName"]["nillable"] is False and fields["LastName"]["createable"] is True
    assert fields["Status"]["defaultedOnCreate"] is True
    assert next(p["value"] for p in fields["Status"]["picklistValues"]) == "Open - Not Contacted"
    assert fields["OwnerId"]["referenceTo"] == ["User", "Group"]
    assert fields["OwnerId"]["relationshipName"] == "Owner"
    assert fields["External_Id__c"]["externalId"] is True and fields["External_Id__c"]["custom"] is True
    assert fields["Email"]["type"] == "email" and fields["Email"]["length"] == 80
    assert fields["SystemModstamp"]["type"] == "datetime"
    assert "_Client" not in fields
    required = {
        n for n, f in fields.items() if f["createable"] and not f["nillable"] and not f["defaultedOnCreate"]
    }
    assert required == {"LastName", "Company"}
    acct = {f["name"] for f in sf.Account.describe()["fields"]}
    assert {
        "IsPersonAccount",
        "PersonEmail",
        "PersonContactId",
        "FirstName",
        "LastName",
        "PersonHasOptedOutOfEmail",
        "External_Id__pc",
    } <= acct
    assert admin_http.get(V + "/sobjects/Lead").json()["objectDescribe"]["name"] == "Lead"


def test_crud_roundtrip(sf, admin_http):
    r = admin_http.post(
        V + "/sobjects/Lead/", json={"LastName": "Crud", "Company": "C Inc", "Email": "c@c.io"}
    )
    assert r.status_code == 201
    body = r.json()
    assert body["success"] is True and body["errors"] == [] and body["id"].startswith("00Q")
    lid = body["id"]
    rec = sf.Lead.get(lid)
    assert rec["attributes"] == {"type": "Lead", "url": f"{V}/sobjects/Lead/{lid}"}
    assert rec["Status"] == "Open - Not Contacted" and rec["HasOptedOutOfEmail"] is False
    assert rec["FirstName"] is None  # explicit nulls
    assert rec["CreatedDate"] == rec["LastModifiedDate"] == rec["SystemModstamp"]
    assert rec["CreatedDate"].endswith("+0000") and len(rec["CreatedDate"]) == 28
    # 15-char id and lower-cased 18-char id both work
    assert sf.Lead.get(lid[:15])["Id"] == lid
    assert sf.Lead.get(lid.lower()[:15] + lid[15:])["Id"] == lid
    r = admin_http.patch(f"{V}/sobjects/Lead/{lid}", json={"Title": "Boss"})
    assert r.status_code == 204 and r.content == b""
    rec2 = sf.Lead.get(lid)
    assert rec2["Title"] == "Boss" and rec2["SystemModstamp"] > rec["SystemModstamp"]
    assert rec2["LastModifiedDate"] > rec["LastModifiedDate"] and rec2["CreatedDate"] == rec["CreatedDate"]
    only = admin_http.get(f"{V}/sobjects/Lead/{lid}", params={"fields": "title,Email"}).json()
    assert set(only) == {"attributes", "Title", "Email"}
    assert sf.Lead.delete(lid) == 204
    r = admin_http.get(f"{V}/sobjects/Lead/{lid}")
    assert r.status_code == 404 and r.json() == [
        {"message": "entity is deleted", "errorCode": "ENTITY_IS_DELETED"}
    ]
    r = admin_http.delete(f"{V}/sobjects/Lead/{lid}")
    assert r.status_code == 404 and r.json()[0]["errorCode"] == "ENTITY_IS_DELETED"


def test_create_validation_errors(admin_http):
    def post(body, obj="Lead"):
        return admin_http.post(f"{V}/sobjects/{obj}/", json=body)

    r = post({"Company": "X"})
    assert r.status_code == 400
    assert r.json() == [
        {
            "message": "Required fields are missing: [LastName]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["LastName"],
        }
    ]
    r = post({"LastName": "A", "Company": "B", "Email": "not an email"})
    assert r.json() == [
        {
            "message": "Email: invalid email address: not an email",
            "errorCode": "INVALID_EMAIL_ADDRESS",
            "fields": ["Email"],
        }
    ]
    r = post({"LastName": "x" * 81, "Company": "B"})
    assert r.json()[0]["errorCode"] == "STRING_TOO_LONG" and r.json()[0]["fields"] == ["LastName"]
    r = post({"LastName": "A", "Company": "B", "Status": "Bogus"})
    assert r.json()[0]["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    r = post({"LastName": "A", "Company": "B", "Bogus__c": 1})
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "INVALID_FIELD"
    r = post({"LastName": "A", "Company": "B", "Id": "00Q000000000001"})
    assert r.json()[0] == {
        "message": "The Id field should not be specified in the sobject data.",
        "errorCode": "INVALID_FIELD",
        "fields": ["Id"],
    }
    r = post({"LastName": "A", "Company": "B", "IsConverted": True})
    assert r.json()[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    r = post({"LastName": "A", "Company": "B", "OwnerId": "garbage"})
    assert r.json()[0]["errorCode"] == "MALFORMED_ID"
    r = post({"LastName": "A", "Company": "B", "HasOptedOutOfEmail": "maybe"})
    assert r.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    r = post({"LastName": "Z"}, obj="Contact")
    assert r.status_code == 201
    r = post({"Description": "only"}, obj="Opportunity")
    assert set(r.json()[0]["fields"]) == {"Name", "StageName", "CloseDate"}


def test_bad_input(admin_http):
    r = admin_http.post(
        f"{V}/sobjects/Lead/", content=b'{"LastName": ', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    r = admin_http.post(f"{V}/sobjects/Nope/", json={"Name": "x"})
    assert r.status_code == 404
    assert r.json() == [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
    r = admin_http.get(f"{V}/sobjects/Lead/00Qbad")
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "MALFORMED_ID"
    r = admin_http.get(f"{V}/sobjects/Lead/001000000000001AAA")  # an Account id
    assert r.status_code == 404 and r.json()[0]["errorCode"] == "NOT_FOUND"
    r = admin_http.get(f"{V}/sobjects/Lead/00Q00000000zzzzAAA")
    assert r.status_code == 404
    r = admin_http.put(f"{V}/sobjects/Lead/00Q000000000001AAA", json={})
    assert r.status_code == 405 and r.json()[0]["errorCode"] == "METHOD_NOT_ALLOWED"
    r = admin_http.get(f"{V}/nowhere")
    assert r.status_code == 404 and r.json()[0]["errorCode"] == "NOT_FOUND"
    r = admin_http.get("/services/data/v10.0/sobjects")
    assert r.status_code == 404
    r = admin_http.get(f"{V}/query", params={"q": "SELECT Id FROM Nope"})
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "INVALID_TYPE"
    r = admin_http.get(f"{V}/query", params={"q": "SELECT Bogus FROM Lead"})
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "INVALID_FIELD"
    r = admin_http.get(f"{V}/query", params={"q": "SELECT FROM"})
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_upsert_created_updated_and_300(sf, admin_http):
    ext = unique("ext")
    r = admin_http.patch(f"{V}/sobjects/Lead/External_Id__c/{ext}", json={"LastName": "Up", "Company": "U"})
    assert r.status_code == 201
    assert r.json() == {"id": r.json()["id"], "success": True, "errors": [], "created": True}
    lid = r.json()["id"]
    r = admin_http.patch(f"{V}/sobjects/Lead/External_Id__c/{ext}", json={"Title": "T"})
    assert r.status_code == 200
    assert r.json() == {"id": lid, "success": True, "errors": [], "created": False}
    assert sf.Lead.get_by_custom_id("External_Id__c", ext)["Title"] == "T"
    # simple-salesforce upsert returns the status code
    assert sf.Lead.upsert(f"External_Id__c/{ext}", {"Title": "T2"}) == 200
    # duplicates of an external id are rejected
    r = admin_http.post(
        f"{V}/sobjects/Lead/", json={"LastName": "D", "Company": "D", "External_Id__c": ext.upper()}
    )
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "DUPLICATE_VALUE"
    assert lid in r.json()[0]["message"]
    # upsert on Email (idLookup) with two matches → 300
    email = unique("dup") + "@example.com"
    a = sf.Lead.create({"LastName": "A", "Company": "A", "Email": email})["id"]
    b = sf.Lead.create({"LastName": "B", "Company": "B", "Email": email})["id"]
    r = admin_http.patch(f"{V}/sobjects/Lead/Email/{email}", json={"Title": "x"})
    assert r.status_code == 300
    assert sorted(r.json()) == sorted([f"{V}/sobjects/Lead/{a}", f"{V}/sobjects/Lead/{b}"])
    with pytest.raises(SalesforceMoreThanOneRecord):
        sf.Lead.upsert(f"Email/{email}", {"Title": "x"})
    r = admin_http.patch(f"{V}/sobjects/Lead/Company/x", json={"Title": "x"})
    assert r.status_code == 404


def test_simple_salesforce_exceptions(sf):
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Lead.create({"Company": "NoName"})
    assert e.value.content[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Lead.get("00Q0000000zzzzz")


def test_person_account_creates_contact(sf):
    email = unique("pa") + "@example.com"
    aid = sf.Account.create({"FirstName": "Pat", "LastName": "Person", "PersonEmail": email})["id"]
    acct = sf.Account.get(aid)
    assert acct["IsPersonAccount"] is True and acct["Name"] == "Pat Person"
    cid = acct["PersonContactId"]
    con = sf.Contact.get(cid)
    assert con["Email"] == email and con["AccountId"] == aid and con["IsPersonAccount"] is True
    sf.Account.update(aid, {"PersonHasOptedOutOfEmail": True, "External_Id__pc": unique("pc")})
    con = sf.Contact.get(cid)
    assert con["HasOptedOutOfEmail"] is True and con["External_Id__c"].startswith("pc")
    hist = sf.query(
        f"SELECT ContactId, Field, OldValue, NewValue FROM ContactHistory WHERE ContactId = '{cid}'"
    )
    assert hist["totalSize"] == 1
    # business accounts still need a Name
    with pytest.raises(SalesforceMalformedRequest):
        sf.Account.create({"Industry": "Banking"})


def test_other_objects(sf):
    acc = sf.Account.create({"Name": unique("Acc")})["id"]
    con = sf.Contact.create({"LastName": "C", "AccountId": acc})["id"]
    lead = sf.Lead.create({"LastName": "L", "Company": "Co"})["id"]
    camp = sf.Campaign.create({"Name": "Camp", "Status": "Planned"})["id"]
    cm = sf.CampaignMember.create({"CampaignId": camp, "LeadId": lead})["id"]
    assert cm.startswith("00v")
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.CampaignMember.create({"CampaignId": camp, "LeadId": lead})
    assert e.value.content[0]["errorCode"] == "DUPLICATE_VALUE"
    sf.CampaignMember.update(cm, {"Status": "Responded"})
    cmr = sf.CampaignMember.get(cm)
    assert cmr["HasResponded"] is True and cmr["FirstRespondedDate"]
    opp = sf.Opportunity.create(
        {
            "Name": "O",
            "StageName": "Closed Won",
            "CloseDate": "2025-01-31",
            "AccountId": acc,
            "Amount": 1200.5,
        }
    )["id"]
    o = sf.Opportunity.get(opp)
    assert o["IsWon"] is True and o["IsClosed"] is True and o["Amount"] == 1200.5
    ocr = sf.OpportunityContactRole.create(
        {"OpportunityId": opp, "ContactId": con, "Role": "Decision Maker", "IsPrimary": True}
    )["id"]
    assert ocr.startswith("00K")
    task = sf.Task.create({"WhoId": con, "WhatId": acc, "Subject": "Call", "Status": "Completed"})["id"]
    assert sf.Task.get(task)["IsClosed"] is True
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Task.create({"WhoId": acc, "Subject": "bad who"})
    assert e.value.content[0]["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    gid = sf.Group.create({"Name": "Queue2", "Type": "Queue"})["id"]
    assert gid.startswith("00G") and sf.Group.get(gid)["DeveloperName"] == "Queue2"
    queues = sf.query("SELECT Id, Name FROM Group WHERE Type = 'Queue'")["records"]
    assert {q["Name"] for q in queues} >= {"Unassigned Leads", "Queue2"}
    org = sf.query("SELECT Id, Name FROM Organization")["records"][0]
    assert org["Id"] == sf.query("SELECT Id FROM Organization")["records"][0]["Id"]
    assert org["Id"].startswith("00D")


def test_active_assignment_rule_follows_the_sforce_auto_assign_header(sandbox, admin_http):
    # Salesforce REST runs the active assignment rules unless a request says Sforce-Auto-Assign: FALSE.
    me = admin_http.get(f"{V}/query", params={"q": "SELECT Id FROM User WHERE IsActive = true LIMIT 2"}).json()
    owner, other = [r["Id"] for r in me["records"]]
    assert admin_http.post("/_sandbox/assignment-rules", json={"Lead": owner}).json() == {"Lead": owner}
    try:
        def create(headers, **values):
            r = admin_http.post(f"{V}/sobjects/Lead/", json={"LastName": unique("A"), "Company": "B", **values},
                                headers=headers)
            assert r.status_code == 201, r.text
            return admin_http.get(f"{V}/sobjects/Lead/{r.json()['id']}").json()["OwnerId"]

        assert create({}, OwnerId=other) == owner  # no header: the rule wins
        assert create({"Sforce-Auto-Assign": "TRUE"}) == owner
        assert create({"Sforce-Auto-Assign": "false"}, OwnerId=other) == other  # the owner sent stays
        # Collections (what the connector writes through) honour the header of the whole request.
        r = admin_http.post(f"{V}/composite/sobjects", headers={"Sforce-Auto-Assign": "TRUE"}, json={
            "allOrNone": False, "records": [{"attributes": {"type": "Lead"}, "LastName": unique("C"), "Company": "D",
                                             "OwnerId": other}]})
        new_id = r.json()[0]["id"]
        assert admin_http.get(f"{V}/sobjects/Lead/{new_id}").json()["OwnerId"] == owner
    finally:
        assert admin_http.post("/_sandbox/assignment-rules", json={}).json() == {}
    assert create({}, OwnerId=other) == other  # no active rule: nothing reassigns
