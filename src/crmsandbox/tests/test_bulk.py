"""Bulk API 2.0: simple-salesforce's bulk2 client unmodified, and exact wire checks with httpx."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time

import httpx

from crmsandbox.tests.fixtures import SRC, Sandbox, unique

V = "/services/data/v59.0"


def _wait(c: httpx.Client, url: str, states=("JobComplete", "Failed", "Aborted")) -> dict:
    deadline = time.time() + 30
    while time.time() < deadline:
        info = c.get(url).json()
        if info["state"] in states:
            return info
        time.sleep(0.05)
    raise AssertionError(f"job did not finish: {info}")


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_simple_salesforce_insert_upsert_update_delete_query(sandbox, sf, admin_http):
    tag = unique("bk")
    recs = [{"LastName": f"Bulk{i}", "Company": f"{tag} Co", "Email": f"{tag}{i}@example.com",
             "External_Id__c": f"{tag}-{i}"} for i in range(5)]
    recs.append({"LastName": "", "Company": f"{tag} Co", "Email": f"{tag}x@example.com",
                 "External_Id__c": f"{tag}-x"})
    res = sf.bulk2.Lead.insert(records=recs, wait=0.1)
    assert res[0]["numberRecordsProcessed"] == 6 and res[0]["numberRecordsFailed"] == 1
    job = res[0]["job_id"]
    ok = _rows(admin_http.get(f"{V}/jobs/ingest/{job}/successfulResults/").text)
    assert len(ok) == 5 and all(r["sf__Id"].startswith("00Q") and r["sf__Created"] == "true" for r in ok)
    assert ok[0]["LastName"] == "Bulk0"
    bad = _rows(admin_http.get(f"{V}/jobs/ingest/{job}/failedResults/").text)
    assert bad == [{"sf__Id": "", "sf__Error": "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]"
                    ":LastName --", "LastName": "", "Company": f"{tag} Co", "Email": f"{tag}x@example.com",
                    "External_Id__c": f"{tag}-x"}]

    up = sf.bulk2.Lead.upsert(records=[{"External_Id__c": f"{tag}-0", "Title": "CTO"},
                                       {"External_Id__c": f"{tag}-new", "LastName": "New", "Company": "N"}],
                              external_id_field="External_Id__c", wait=0.1)
    assert up[0]["numberRecordsFailed"] == 0
    ok = _rows(admin_http.get(f"{V}/jobs/ingest/{up[0]['job_id']}/successfulResults/").text)
    assert [r["sf__Created"] for r in ok] == ["false", "true"]
    first_id = ok[0]["sf__Id"]
    assert sf.Lead.get(first_id)["Title"] == "CTO"

    upd = sf.bulk2.Lead.update(records=[{"Id": first_id, "Title": "CEO", "Phone": "#N/A"},
                                        {"Id": "00Q000000000000AAA", "Title": "x"}], wait=0.1)
    assert upd[0]["numberRecordsFailed"] == 1
    fail = _rows(admin_http.get(f"{V}/jobs/ingest/{upd[0]['job_id']}/failedResults/").text)
    assert fail[0]["sf__Error"].startswith("INVALID_CROSS_REFERENCE_KEY:")
    assert sf.Lead.get(first_id)["Title"] == "CEO"

    # query: relationship columns, booleans, paging with maxRecords
    pages = list(sf.bulk2.Lead.query(
        f"SELECT Id, LastName, Owner.Email, HasOptedOutOfEmail, Phone FROM Lead WHERE Company = '{tag} Co' "
        f"ORDER BY LastName", max_records=2, wait=0.1))
    rows = [r for p in pages for r in _rows(p)]
    assert len(pages) == 3 and [r["LastName"] for r in rows] == [f"Bulk{i}" for i in range(5)]
    assert list(rows[0]) == ["Id", "LastName", "Owner.Email", "HasOptedOutOfEmail", "Phone"]
    assert rows[0]["Owner.Email"] == sandbox.admin and rows[0]["HasOptedOutOfEmail"] == "false"
    assert rows[0]["Phone"] == ""

    dele = sf.bulk2.Lead.delete(records=[{"Id": r["Id"]} for r in rows[:2]], wait=0.1)
    assert dele[0]["numberRecordsProcessed"] == 2 and dele[0]["numberRecordsFailed"] == 0
    left = sf.query(f"SELECT COUNT() FROM Lead WHERE Company = '{tag} Co'")["totalSize"]
    assert left == 3
    every = [r for p in sf.bulk2.Lead.query_all(
        f"SELECT Id, IsDeleted FROM Lead WHERE Company = '{tag} Co'", wait=0.1) for r in _rows(p)]
    assert len(every) == 5 and sorted(r["IsDeleted"] for r in every) == ["false"] * 3 + ["true"] * 2


def test_ingest_wire_format(sandbox, admin_http):
    before = admin_http.get(f"{V}/limits").json()["DailyBulkApiBatches"]["Remaining"]
    r = admin_http.post(f"{V}/jobs/ingest", json={"object": "Contact", "operation": "insert",
                                                   "lineEnding": "CRLF", "contentType": "CSV"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert "sforce-limit-info" in r.headers
    job = r.json()
    assert job["state"] == "Open" and job["id"].startswith("750") and job["object"] == "Contact"
    assert job["contentUrl"] == f"services/data/v59.0/jobs/ingest/{job['id']}/batches"
    url = f"{V}/jobs/ingest/{job['id']}"
    tag = unique("wc")
    body = f'LastName,Email,Score__c\r\n"{tag}, Jr",{tag}@example.com,4.5\r\n{tag}b,not-an-email,\r\n'
    r = admin_http.put(url + "/batches", content=body.encode(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 201 and r.content == b""
    r = admin_http.patch(url, json={"state": "UploadComplete"})
    assert r.status_code == 200 and r.json()["state"] == "UploadComplete"
    r = admin_http.put(url + "/batches", content=body.encode(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 409 and r.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    info = _wait(admin_http, url)
    assert info["state"] == "JobComplete" and info["jobType"] == "V2Ingest"
    assert info["numberRecordsProcessed"] == 2 and info["numberRecordsFailed"] == 1
    ok = admin_http.get(url + "/successfulResults/")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/csv")
    lines = ok.text.split("\r\n")
    assert lines[0] == '"sf__Id","sf__Created",LastName,Email,Score__c'
    assert lines[1].endswith(f',"true","{tag}, Jr",{tag}@example.com,4.5') and lines[2] == ""
    bad = admin_http.get(url + "/failedResults/").text.split("\r\n")
    assert bad[1] == f'"","INVALID_EMAIL_ADDRESS:Email: invalid email address: not-an-email:Email --",' \
                     f'{tag}b,not-an-email,'
    assert admin_http.get(url + "/unprocessedrecords/").text == "LastName,Email,Score__c\r\n"
    listing = admin_http.get(f"{V}/jobs/ingest").json()
    assert listing["done"] is True and any(j["id"] == job["id"] for j in listing["records"])
    after = admin_http.get(f"{V}/limits").json()["DailyBulkApiBatches"]["Remaining"]
    assert after == before - 1
    assert admin_http.delete(url).status_code == 204
    assert admin_http.get(url).status_code == 404


def test_ingest_errors_abort_and_bad_header(admin_http):
    r = admin_http.post(f"{V}/jobs/ingest", json={"object": "Nope", "operation": "insert"})
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "INVALIDJOB"
    r = admin_http.post(f"{V}/jobs/ingest", json={"object": "Lead", "operation": "upsert"})
    assert r.status_code == 400
    # abort an open job: its uploaded rows are unprocessed
    job = admin_http.post(f"{V}/jobs/ingest", json={"object": "Lead", "operation": "insert"}).json()
    url = f"{V}/jobs/ingest/{job['id']}"
    admin_http.put(url + "/batches", content=b"LastName,Company\nA,B\n", headers={"Content-Type": "text/csv"})
    r = admin_http.patch(url, json={"state": "Aborted"})
    assert r.status_code == 200 and r.json()["state"] == "Aborted"
    assert admin_http.get(url + "/unprocessedrecords/").text == "LastName,Company\nA,B\n"
    assert admin_http.patch(url, json={"state": "UploadComplete"}).status_code == 409
    # an unknown column fails the whole job
    job = admin_http.post(f"{V}/jobs/ingest", json={"object": "Lead", "operation": "insert"}).json()
    url = f"{V}/jobs/ingest/{job['id']}"
    admin_http.put(url + "/batches", content=b"LastName,Bogus\nA,B\n", headers={"Content-Type": "text/csv"})
    admin_http.patch(url, json={"state": "UploadComplete"})
    info = _wait(admin_http, url)
    assert info["state"] == "Failed" and info["errorMessage"] == "InvalidBatch : Field name not found : Bogus"


def test_query_job_wire_format(sandbox, admin_http):
    tag = unique("qj")
    with sandbox.http() as c:
        for i in range(3):
            c.post(f"{V}/sobjects/Lead/", json={"LastName": f"Q{i}", "Company": tag, "DoNotCall": i == 1,
                                                "Description": "line1\nline2, \"quoted\""})
    r = admin_http.post(f"{V}/jobs/query", json={"operation": "query", "query": "SELECT Id FROM Nope"})
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "INVALID_TYPE"
    r = admin_http.post(f"{V}/jobs/query", json={
        "operation": "query",
        "query": f"SELECT LastName, DoNotCall, Description, Owner.Username FROM Lead WHERE Company = '{tag}' "
                 f"ORDER BY LastName"})
    assert r.status_code == 200
    job = r.json()
    assert job["state"] == "UploadComplete" and job["object"] == "Lead" and job["operation"] == "query"
    url = f"{V}/jobs/query/{job['id']}"
    info = _wait(admin_http, url)
    assert info["state"] == "JobComplete" and info["numberRecordsProcessed"] == 3 and info["jobType"] == "V2Query"
    r = admin_http.get(url + "/results", params={"maxRecords": 2})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["sforce-numberofrecords"] == "2"
    loc = r.headers["sforce-locator"]
    assert loc not in ("", "null")
    rows = _rows(r.text)
    assert [x["LastName"] for x in rows] == ["Q0", "Q1"] and rows[1]["DoNotCall"] == "true"
    assert rows[0]["Description"] == 'line1\nline2, "quoted"'
    assert rows[0]["Owner.Username"] == sandbox.admin
    r2 = admin_http.get(url + "/results", params={"maxRecords": 2, "locator": loc})
    assert r2.headers["sforce-locator"] == "null" and r2.headers["sforce-numberofrecords"] == "1"
    assert [x["LastName"] for x in _rows(r2.text)] == ["Q2"]
    assert admin_http.get(url + "/results", params={"locator": "!!"}).status_code == 400
    assert any(j["id"] == job["id"] for j in admin_http.get(f"{V}/jobs/query").json()["records"])
    assert admin_http.delete(url).status_code == 204


def test_standard_user_sees_only_own_jobs(sandbox, admin_http):
    job = admin_http.post(f"{V}/jobs/ingest", json={"object": "Lead", "operation": "insert"}).json()
    user = sandbox.info["users"][0]
    with sandbox.http(user) as c:
        assert c.get(f"{V}/jobs/ingest/{job['id']}").status_code == 404
        assert all(j["id"] != job["id"] for j in c.get(f"{V}/jobs/ingest").json()["records"])


def test_job_state_survives_restart(own_sandbox: Sandbox):
    sb = own_sandbox
    with sb.http() as c:
        job = c.post(f"{V}/jobs/ingest", json={"object": "Lead", "operation": "insert"}).json()
        url = f"{V}/jobs/ingest/{job['id']}"
        c.put(url + "/batches", content=b"LastName,Company\nR1,Restart\n", headers={"Content-Type": "text/csv"})
        c.patch(url, json={"state": "UploadComplete"})
        assert _wait(c, url)["state"] == "JobComplete"
        pending = c.post(f"{V}/jobs/ingest", json={"object": "Lead", "operation": "insert"}).json()
    sb.stop()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    sb.proc = subprocess.Popen([sys.executable, "-m", "crmsandbox", "serve", "--data", str(sb.data)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while True:
        try:
            if httpx.get(sb.base + "/services/data/", verify=sb.verify, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline
        time.sleep(0.1)
    with sb.http() as c:
        info = c.get(url).json()
        assert info["state"] == "JobComplete" and info["numberRecordsProcessed"] == 1
        assert _rows(c.get(url + "/successfulResults/").text)[0]["LastName"] == "R1"
        assert c.get(f"{V}/jobs/ingest/{pending['id']}").json()["state"] == "Open"
