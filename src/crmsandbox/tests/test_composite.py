"""sObject Collections and composite."""

from __future__ import annotations

from crmsandbox.tests.fixtures import unique

V = "/services/data/v59.0"


def lead(**kw):
    return {"attributes": {"type": "Lead"}, **kw}


def test_collection_create_partial_failure(admin_http, sf):
    r = admin_http.post(V + "/composite/sobjects", json={"allOrNone": False, "records": [
        lead(LastName="Ok", Company="C"), lead(Company="NoName"), lead(LastName="Bad", Company="C", Email="nope")]})
    assert r.status_code == 200
    res = r.json()
    assert res[0]["success"] is True and res[0]["id"].startswith("00Q") and res[0]["errors"] == []
    assert res[1] == {"success": False, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING",
                                                    "message": "Required fields are missing: [LastName]",
                                                    "fields": ["LastName"]}]}
    assert res[2]["errors"][0]["statusCode"] == "INVALID_EMAIL_ADDRESS"
    assert sf.Lead.get(res[0]["id"])["LastName"] == "Ok"


def test_collection_all_or_none_rolls_back(admin_http, sf):
    tag = unique("aon")
    r = admin_http.post(V + "/composite/sobjects", json={"allOrNone": True, "records": [
        lead(LastName="A", Company=tag), lead(Company=tag)]})
    res = r.json()
    assert res[0]["success"] is False
    assert res[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert res[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert sf.query(f"SELECT COUNT() FROM Lead WHERE Company = '{tag}'")["totalSize"] == 0


def test_collection_update_upsert_retrieve_delete(admin_http, sf):
    tag = unique("coll")
    ids = [x["id"] for x in admin_http.post(V + "/composite/sobjects", json={"records": [
        lead(LastName=f"L{i}", Company=tag) for i in range(3)]}).json()]
    upd = admin_http.patch(V + "/composite/sobjects", json={"records": [
        {"attributes": {"type": "Lead"}, "id": ids[0], "Title": "T0"},
        {"attributes": {"type": "Lead"}, "Id": ids[1], "Status": "Nope"},
        {"attributes": {"type": "Lead"}, "Title": "no id"}]}).json()
    assert upd[0] == {"id": ids[0], "success": True, "errors": []}
    assert upd[1]["success"] is False and upd[1]["id"] == ids[1]
    assert upd[1]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert upd[2]["errors"][0]["statusCode"] == "MISSING_ARGUMENT"
    e1, e2 = unique("u1"), unique("u2")
    admin_http.patch(f"{V}/sobjects/Lead/{ids[2]}", json={"External_Id__c": e1})
    ups = admin_http.patch(V + "/composite/sobjects/Lead/External_Id__c", json={"allOrNone": False, "records": [
        lead(External_Id__c=e1, Title="upd"), lead(External_Id__c=e2, LastName="New", Company=tag)]}).json()
    assert ups[0] == {"id": ids[2], "success": True, "errors": [], "created": False}
    assert ups[1]["created"] is True and ups[1]["success"] is True
    got = admin_http.post(V + "/composite/sobjects/Lead", json={
        "ids": [ids[0], ids[2], "00Q0000000zzzzzAAA"], "fields": ["Id", "Title"]}).json()
    assert got[0]["Title"] == "T0" and got[1]["Title"] == "upd" and got[2] is None
    assert set(got[0]) == {"attributes", "Id", "Title"}
    # simple-salesforce style
    got2 = sf.restful("composite/sobjects/Lead", method="POST", json={"ids": ids[:1], "fields": ["LastName"]})
    assert got2[0]["LastName"] == "L0"
    dele = admin_http.delete(V + "/composite/sobjects", params={"ids": f"{ids[0]},{ids[0]},00Qbad",
                                                                 "allOrNone": "false"}).json()
    assert dele[0] == {"id": ids[0], "success": True, "errors": []}
    assert dele[1]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    assert dele[2]["errors"][0]["statusCode"] == "MALFORMED_ID"


def test_collection_limits(admin_http):
    r = admin_http.post(V + "/composite/sobjects", json={"records": [lead(LastName="x", Company="y")] * 201})
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    r = admin_http.post(V + "/composite/sobjects", content=b"[", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    r = admin_http.post(V + "/composite/sobjects", json={"records": [{"LastName": "no type"},
                                                                    {"attributes": {"type": "Nope"}}]})
    assert [x["errors"][0]["statusCode"] for x in r.json()] == ["INVALID_TYPE", "INVALID_TYPE"]


def test_upsert_collection_duplicate_external_id(admin_http, sf):
    email = unique("dupe") + "@example.com"
    sf.Lead.create({"LastName": "A", "Company": "A", "Email": email})
    sf.Lead.create({"LastName": "B", "Company": "B", "Email": email})
    res = admin_http.patch(V + "/composite/sobjects/Lead/Email", json={"records": [
        lead(Email=email, Title="x")]}).json()
    assert res[0]["success"] is False and res[0]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"


def test_composite_references(admin_http, sf):
    tag = unique("comp")
    body = {"allOrNone": False, "compositeRequest": [
        {"method": "POST", "url": V + "/sobjects/Account", "referenceId": "acc", "body": {"Name": tag}},
        {"method": "POST", "url": V + "/sobjects/Contact", "referenceId": "con",
         "body": {"LastName": "Ref", "AccountId": "@{acc.id}"}},
        {"method": "GET", "url": V + "/sobjects/Contact/@{con.id}?fields=AccountId", "referenceId": "get"},
        {"method": "GET", "url": V + "/query?q=SELECT+Id+FROM+Contact+WHERE+AccountId='@{acc.id}'",
         "referenceId": "q"},
        {"method": "PATCH", "url": V + "/sobjects/Contact/@{q.records[0].Id}", "referenceId": "upd",
         "body": {"Title": "Referenced"}},
    ]}
    before = int(admin_http.get(V + "/limits").headers["sforce-limit-info"].split("=")[1].split("/")[0])
    r = admin_http.post(V + "/composite", json=body)
    after = int(r.headers["sforce-limit-info"].split("=")[1].split("/")[0])
    assert after == before + 1  # counts as one call
    out = {x["referenceId"]: x for x in r.json()["compositeResponse"]}
    assert out["acc"]["httpStatusCode"] == 201 and "Location" in out["acc"]["httpHeaders"]
    acc_id = out["acc"]["body"]["id"]
    assert out["get"]["body"]["AccountId"] == acc_id
    assert out["q"]["body"]["totalSize"] == 1
    assert out["upd"]["httpStatusCode"] == 204 and out["upd"]["body"] is None
    assert sf.Contact.get(out["con"]["body"]["id"])["Title"] == "Referenced"


def test_composite_all_or_none_and_errors(admin_http, sf):
    tag = unique("compaon")
    body = {"allOrNone": True, "compositeRequest": [
        {"method": "POST", "url": V + "/sobjects/Account", "referenceId": "acc", "body": {"Name": tag}},
        {"method": "POST", "url": V + "/sobjects/Contact", "referenceId": "bad", "body": {"FirstName": "x"}},
        {"method": "POST", "url": V + "/sobjects/Contact", "referenceId": "after", "body": {"LastName": "x"}},
    ]}
    out = admin_http.post(V + "/composite", json=body).json()["compositeResponse"]
    assert [x["httpStatusCode"] for x in out] == [400, 400, 400]
    assert out[0]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert out[1]["body"][0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert out[2]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert sf.query(f"SELECT COUNT() FROM Account WHERE Name = '{tag}'")["totalSize"] == 0
    # not allOrNone: a failed reference halts only its dependants
    body["allOrNone"] = False
    body["compositeRequest"][2]["body"] = {"LastName": "x", "AccountId": "@{bad.id}"}
    out = admin_http.post(V + "/composite", json=body).json()["compositeResponse"]
    assert [x["httpStatusCode"] for x in out] == [201, 400, 400]
    assert out[2]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    too_many = {"compositeRequest": [{"method": "GET", "url": V + "/limits", "referenceId": f"r{i}"}
                                     for i in range(26)]}
    r = admin_http.post(V + "/composite", json=too_many)
    assert r.status_code == 400
