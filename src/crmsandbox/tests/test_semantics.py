"""Org semantics: custom fields and rules, sharing, conversion, merge, undelete, history, client ids."""

from __future__ import annotations

import pytest
from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceResourceNotFound

from crmsandbox.tests.fixtures import unique

V = "/services/data/v59.0"


def test_custom_picklist_and_validation_rules(sf, admin_http):
    fields = {f["name"]: f for f in sf.Lead.describe()["fields"]}
    assert fields["Region__c"]["restrictedPicklist"] is True
    lid = sf.Lead.create({"LastName": "R", "Company": "R", "Region__c": "emea"})["id"]
    assert sf.Lead.get(lid)["Region__c"] == "EMEA"
    r = admin_http.patch(f"{V}/sobjects/Lead/{lid}", json={"Region__c": "MARS"})
    assert r.json()[0]["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    r = admin_http.patch(f"{V}/sobjects/Lead/{lid}", json={"Status": "Working - Contacted"})
    assert r.status_code == 400
    assert r.json() == [{"message": "Phone is required when working a lead",
                         "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "fields": ["Phone"]}]
    r = admin_http.patch(f"{V}/sobjects/Lead/{lid}", json={"Status": "Working - Contacted", "Phone": "123"})
    assert r.status_code == 204
    r = admin_http.patch(f"{V}/sobjects/Lead/{lid}", json={"Website": "example.com"})
    assert r.json()[0]["message"] == "Website must start with http"
    cid = sf.Contact.create({"LastName": "N", "Score__c": "12.5"})["id"]
    assert sf.Contact.get(cid)["Score__c"] == 12.5


def test_sharing_standard_user_sees_own_records(sandbox, sf):
    user = sandbox.info["users"][0]
    mine_sf = sandbox.sf(user)
    tag = unique("share")
    mine = mine_sf.Lead.create({"LastName": "Mine", "Company": tag})["id"]
    theirs = sf.Lead.create({"LastName": "Theirs", "Company": tag})["id"]
    assert mine_sf.Lead.get(mine)["OwnerId"] != sf.Lead.get(theirs)["OwnerId"]
    recs = mine_sf.query(f"SELECT Id FROM Lead WHERE Company = '{tag}'")["records"]
    assert [r["Id"] for r in recs] == [mine]
    with pytest.raises(SalesforceResourceNotFound) as e:
        mine_sf.Lead.get(theirs)
    assert e.value.content[0]["errorCode"] == "NOT_FOUND"
    with pytest.raises(SalesforceResourceNotFound):
        mine_sf.Lead.update(theirs, {"Title": "x"})
    with pytest.raises(SalesforceResourceNotFound):
        mine_sf.Lead.delete(theirs)
    # the integration user sees everything
    integ = sandbox.sf(sandbox.integration)
    assert integ.query(f"SELECT COUNT() FROM Lead WHERE Company = '{tag}'")["totalSize"] == 2
    integ.Lead.update(mine, {"Title": "touched by integration"})
    # ...and retrieving through collections hides others' records
    got = mine_sf.restful("composite/sobjects/Lead", method="POST", json={"ids": [mine, theirs], "fields": ["Id"]})
    assert got[0]["Id"] == mine and got[1] is None
    # admin endpoints are admin-only
    with sandbox.http(user) as c:
        assert c.get("/_sandbox/changes").status_code == 403


def test_history_rows_for_opt_out(sf):
    lid = sf.Lead.create({"LastName": "H", "Company": "H"})["id"]
    sf.Lead.update(lid, {"HasOptedOutOfEmail": True})
    sf.Lead.update(lid, {"Title": "no history for this"})
    sf.Lead.update(lid, {"HasOptedOutOfEmail": False})
    rows = sf.query(f"SELECT LeadId, Field, OldValue, NewValue, CreatedDate FROM LeadHistory "
                    f"WHERE LeadId = '{lid}' ORDER BY CreatedDate")["records"]
    assert [(r["Field"], r["OldValue"], r["NewValue"]) for r in rows] == [
        ("HasOptedOutOfEmail", "false", "true"), ("HasOptedOutOfEmail", "true", "false")]
    cid = sf.Contact.create({"LastName": "H"})["id"]
    sf.Contact.update(cid, {"HasOptedOutOfEmail": True})
    assert sf.query(f"SELECT COUNT() FROM ContactHistory WHERE ContactId = '{cid}'")["totalSize"] == 1


def test_lead_conversion(sandbox, sf):
    email = unique("conv") + "@example.com"
    lid = sf.Lead.create({"FirstName": "Con", "LastName": "Vert", "Company": "ConvCo", "Email": email,
                          "HasOptedOutOfEmail": True})["id"]
    camp = sf.Campaign.create({"Name": "C"})["id"]
    sf.CampaignMember.create({"CampaignId": camp, "LeadId": lid})
    r = sandbox.admin_post("convert-lead", {"leadId": lid, "createOpportunity": True})
    assert r.status_code == 200, r.text
    res = r.json()
    lead = sf.Lead.get(lid)
    assert lead["IsConverted"] is True and lead["Status"] == "Closed - Converted"
    assert lead["ConvertedContactId"] == res["contactId"] and lead["ConvertedAccountId"] == res["accountId"]
    assert lead["ConvertedDate"] and lead["ConvertedOpportunityId"] == res["opportunityId"]
    con = sf.Contact.get(res["contactId"])
    assert con["Email"] == email and con["AccountId"] == res["accountId"] and con["HasOptedOutOfEmail"] is True
    assert sf.Account.get(res["accountId"])["Name"] == "ConvCo"
    with pytest.raises(SalesforceMalformedRequest) as e:
        sf.Lead.update(lid, {"Title": "x"})
    assert e.value.content == [{"message": "cannot reference converted lead",
                                "errorCode": "CANNOT_UPDATE_CONVERTED_LEAD"}]
    cm = sf.query(f"SELECT ContactId FROM CampaignMember WHERE LeadId = '{lid}'")["records"][0]
    assert cm["ContactId"] == res["contactId"]
    again = sandbox.admin_post("convert-lead", {"leadId": lid})
    assert again.status_code == 400 and again.json()[0]["errorCode"] == "CANNOT_UPDATE_CONVERTED_LEAD"
    # into an existing account and contact
    l2 = sf.Lead.create({"LastName": "Two", "Company": "X"})["id"]
    r2 = sandbox.admin_post("convert-lead", {"leadId": l2, "accountId": res["accountId"],
                                             "contactId": res["contactId"]}).json()
    assert r2["contactId"] == res["contactId"] and r2["opportunityId"] is None


def test_lead_conversion_into_a_person_account(sandbox, sf):
    email = unique("convpa") + "@example.com"
    lid = sf.Lead.create({"FirstName": "Per", "LastName": "Son", "Company": "Self", "Email": email,
                          "Title": "Vet", "HasOptedOutOfEmail": True})["id"]
    res = sandbox.admin_post("convert-lead", {"leadId": lid, "personAccount": True}).json()
    acc = sf.Account.get(res["accountId"])
    assert acc["IsPersonAccount"] is True and acc["PersonContactId"] == res["contactId"]
    assert (acc["PersonEmail"], acc["PersonTitle"], acc["LastName"]) == (email, "Vet", "Son")
    assert acc["PersonHasOptedOutOfEmail"] is True
    lead = sf.Lead.get(lid)
    assert lead["ConvertedAccountId"] == res["accountId"] and lead["ConvertedContactId"] == res["contactId"]
    # into an existing person account: the contact is its person contact
    l2 = sf.Lead.create({"LastName": "Two", "Company": "X"})["id"]
    r2 = sandbox.admin_post("convert-lead", {"leadId": l2, "accountId": res["accountId"]}).json()
    assert r2["contactId"] == res["contactId"]


def test_merge(sandbox, sf):
    a = sf.Contact.create({"LastName": "Winner", "Email": unique("m") + "@x.io"})["id"]
    b = sf.Contact.create({"LastName": "Loser"})["id"]
    task = sf.Task.create({"WhoId": b, "Subject": "follow up"})["id"]
    r = sandbox.admin_post("merge", {"masterId": a, "mergeIds": [b]})
    assert r.status_code == 200, r.text
    assert sf.Task.get(task)["WhoId"] == a
    gone = sf.query_all(f"SELECT Id, IsDeleted, MasterRecordId FROM Contact WHERE Id = '{b}'",
                        include_deleted=True)["records"][0]
    assert gone["IsDeleted"] is True and gone["MasterRecordId"] == a
    bad = sandbox.admin_post("merge", {"masterId": a, "mergeIds": [a]})
    assert bad.status_code == 400


def test_undelete(sandbox, sf):
    acc = sf.Account.create({"Name": unique("Undel")})["id"]
    con = sf.Contact.create({"LastName": "Child", "AccountId": acc})["id"]
    sf.Account.delete(acc)
    with pytest.raises(SalesforceResourceNotFound):
        sf.Contact.get(con)  # cascaded
    r = sandbox.admin_post("undelete", {"ids": [acc, "001000000000zzzAAA"]})
    res = r.json()
    assert res[0]["success"] is True and res[1]["success"] is False
    assert sf.Account.get(acc)["IsDeleted"] is False
    assert sf.Contact.get(con)["AccountId"] == acc
    again = sandbox.admin_post("undelete", {"ids": [acc]}).json()
    assert again[0]["errors"][0]["statusCode"] == "UNDELETE_FAILED"


def test_call_options_client_recorded(sandbox, sf, admin_http):
    since = admin_http.get("/_sandbox/changes", params={"since": 0, "limit": 10000}).json()["last"]
    lid = sf.Lead.create({"LastName": "Cli", "Company": "C"},
                         headers={"Sforce-Call-Options": "client=loopline-sync"})["id"]
    sf.Lead.update(lid, {"Title": "no client"})
    ch = admin_http.get("/_sandbox/changes", params={"since": since, "object": "Lead"}).json()["changes"]
    mine = [c for c in ch if c["recordId"] == lid]
    assert [(c["changeType"], c["client"]) for c in mine] == [("CREATE", "loopline-sync"), ("UPDATE", None)]
    assert mine[1]["fields"] == ["Title"]
    assert mine[0]["userId"] == sf.Lead.get(lid)["CreatedById"]
