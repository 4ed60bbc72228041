"""query / queryAll paging and the updated/deleted feeds."""

from __future__ import annotations

import datetime as dt

from crmsandbox.tests.fixtures import unique

V = "/services/data/v59.0"


def _make_leads(sf, tag: str, n: int) -> list[str]:
    out = []
    for chunk in range(0, n, 200):
        recs = [
            {"attributes": {"type": "Lead"}, "LastName": f"{tag}-{i:04d}", "Company": tag}
            for i in range(chunk, min(n, chunk + 200))
        ]
        res = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": recs})
        assert all(r["success"] for r in res)
        out += [r["id"] for r in res]
    return out


def test_paging_with_batch_size(sf, admin_http):
    tag = unique("page")
    ids = _make_leads(sf, tag, 450)
    q = f"SELECT Id, LastName FROM Lead WHERE Company = '{tag}' ORDER BY LastName"
    r = admin_http.get(V + "/query", params={"q": q}, headers={"Sforce-Query-Options": "batchSize=200"})
    assert r.status_code == 200
    page = r.json()
    assert page["totalSize"] == 450 and page["done"] is False and len(page["records"]) == 200
    url = page["nextRecordsUrl"]
    assert url.startswith(V + "/query/01g") and url.endswith("-200")
    seen = [x["Id"] for x in page["records"]]
    while not page["done"]:
        page = admin_http.get(page["nextRecordsUrl"]).json()
        seen += [x["Id"] for x in page["records"]]
        if page["done"]:
            assert "nextRecordsUrl" not in page
    assert seen == ids  # ORDER BY LastName == creation order here
    # the last page can be fetched again (client retry)
    # a bad locator
    r = admin_http.get(V + "/query/01gXXXXXXXXXXXXXXX-200")
    assert r.status_code == 400
    assert r.json() == [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}]
    r = admin_http.get(V + "/query/garbage")
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_retry_same_page(admin_http, sf):
    tag = unique("retry")
    _make_leads(sf, tag, 250)
    q = f"SELECT Id FROM Lead WHERE Company = '{tag}'"
    first = admin_http.get(
        V + "/query", params={"q": q}, headers={"Sforce-Query-Options": "batchSize=200"}
    ).json()
    a = admin_http.get(first["nextRecordsUrl"]).json()
    b = admin_http.get(first["nextRecordsUrl"]).json()
    assert a == b and a["done"] is True and len(a["records"]) == 50


def test_default_batch_and_query_all_iter(sf):
    tag = unique("big")
    _make_leads(sf, tag, 2100)
    res = sf.query(f"SELECT Id FROM Lead WHERE Company = '{tag}'")
    assert len(res["records"]) == 2000 and res["totalSize"] == 2100 and not res["done"]
    assert len(sf.query_all(f"SELECT Id FROM Lead WHERE Company = '{tag}'")["records"]) == 2100
    assert sf.query(f"SELECT COUNT() FROM Lead WHERE Company = '{tag}'") == {
        "totalSize": 2100,
        "done": True,
        "records": [],
    }


def test_query_all_sees_deleted(sf):
    tag = unique("del")
    ids = _make_leads(sf, tag, 3)
    sf.Lead.delete(ids[0])
    q = f"SELECT Id, IsDeleted FROM Lead WHERE Company = '{tag}'"
    assert sf.query(q)["totalSize"] == 2
    everything = sf.query_all(q, include_deleted=True)["records"]
    assert {r["Id"]: r["IsDeleted"] for r in everything}[ids[0]] is True
    assert len(everything) == 3


def test_parent_fields_nested(sf):
    acc = sf.Account.create({"Name": unique("Parent")})["id"]
    sf.Contact.create({"LastName": "Kid", "AccountId": acc})
    sf.Contact.create({"LastName": "Orphan", "Email": unique("o") + "@x.io"})
    recs = sf.query(f"SELECT Id, Account.Name, Owner.Username FROM Contact WHERE AccountId = '{acc}'")[
        "records"
    ]
    assert recs[0]["Account"]["attributes"]["type"] == "Account"
    assert recs[0]["Owner"]["Username"]


def test_updated_and_deleted_feeds(sf):
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
    lid = sf.Lead.create({"LastName": "Feed", "Company": "F"})["id"]
    gone = sf.Lead.create({"LastName": "Gone", "Company": "F"})["id"]
    sf.Lead.delete(gone)
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    up = sf.Lead.updated(start, end)
    assert lid in up["ids"] and gone not in up["ids"]
    assert up["latestDateCovered"].endswith(":00.000+0000")
    de = sf.Lead.deleted(start, end)
    assert gone in [d["id"] for d in de["deletedRecords"]]
    assert {"earliestDateAvailable", "latestDateCovered"} <= set(de)


def test_feed_errors(admin_http):
    r = admin_http.get(
        V + "/sobjects/Lead/updated/", params={"start": "2000-01-01T00:00:00Z", "end": "2000-01-02T00:00:00Z"}
    )
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "INVALID_REPLICATION_DATE"
    r = admin_http.get(V + "/sobjects/Lead/updated/", params={"start": "bogus", "end": "x"})
    assert r.status_code == 400


def test_system_modstamp_strictly_increasing(sf):
    ids = [sf.Lead.create({"LastName": f"S{i}", "Company": "S"})["id"] for i in range(5)]
    stamps = [sf.Lead.get(i)["SystemModstamp"] for i in ids]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
