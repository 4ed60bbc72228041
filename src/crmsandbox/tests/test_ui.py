"""The web UI, driven with httpx like a browser without JavaScript (cookies, forms, redirects)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from crmsandbox.tests.fixtures import Sandbox, run_cli, unique

V = "/services/data/v59.0"
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


class Browser:
    def __init__(self, sb: Sandbox):
        self.c = httpx.Client(base_url=sb.base, verify=sb.verify, timeout=30, follow_redirects=False)
        self.csrf = ""

    def login(self, username: str, password: str) -> httpx.Response:
        page = self.c.get("/ui/login")
        token = CSRF_RE.search(page.text).group(1)
        r = self.c.post("/ui/login", data={"csrf": token, "username": username, "password": password})
        if r.status_code == 303:
            home = self.c.get("/ui/")
            self.csrf = CSRF_RE.search(home.text).group(1)
        return r

    def get(self, url: str, **kw) -> httpx.Response:
        return self.c.get(url, **kw)

    def post(self, url: str, data: dict | None = None, csrf: bool = True) -> httpx.Response:
        data = dict(data or {})
        if csrf:
            data["csrf"] = self.csrf
        return self.c.post(url, data=data)

    def follow(self, r: httpx.Response) -> httpx.Response:
        assert r.status_code == 303, (r.status_code, r.text[:2000])
        return self.c.get(r.headers["location"])


def _user(sb: Sandbox, i: int = 0) -> tuple[str, str]:
    u = sb.config["users"][i]
    return u["username"], u["password"]


def _uid(sb: Sandbox, username: str) -> str:
    with sb.http() as c:
        return c.get(f"{V}/sobjects/User/Username/{username}").json()["Id"]


@pytest.fixture(scope="module")
def admin_ui(sandbox) -> Browser:
    b = Browser(sandbox)
    assert b.login(sandbox.admin, sandbox.info["admin"]["password"]).status_code == 303
    return b


@pytest.fixture(scope="module")
def user_ui(sandbox) -> Browser:
    b = Browser(sandbox)
    assert b.login(*_user(sandbox)).status_code == 303
    return b


def test_root_redirects_to_login_and_login_errors(sandbox):
    b = Browser(sandbox)
    r = b.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    r = b.get("/ui/o/Lead")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=")
    page = b.get("/ui/login")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert b.login(sandbox.admin, "wrong").status_code == 401
    # a login post without the double-submit token is refused
    with httpx.Client(base_url=sandbox.base, verify=sandbox.verify) as fresh:
        r = fresh.post("/ui/login", data={"username": sandbox.admin, "password": "x", "csrf": "forged"})
    assert r.status_code == 403
    r = b.login(sandbox.admin, sandbox.info["admin"]["password"])
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "sbx_session=" in cookie and "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie
    assert b.post("/ui/logout", csrf=False).status_code == 403  # CSRF checked on every POST
    assert b.post("/ui/logout").status_code == 303
    assert b.get("/ui/").status_code == 303


def test_create_list_search_and_paginate(sandbox, user_ui):
    tag = unique("ui")
    for i in range(3):
        r = user_ui.post("/ui/o/Lead/new", {"LastName": f"Pager{i}", "Company": f"{tag} Inc",
                                            "Email": f"{tag}{i}@example.com", "Status": "Open - Not Contacted"})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/r/00Q")
    page = user_ui.follow(r)
    assert "was created" in page.text and "Send to Loopline" in page.text
    lst = user_ui.get("/ui/o/Lead", params={"q": tag})
    assert lst.status_code == 200 and lst.text.count(f"{tag} Inc") == 3
    assert user_ui.get("/ui/o/Lead", params={"q": f"{tag}1@example"}).text.count(f"{tag} Inc") == 1
    run_cli("config", "--data", str(sandbox.data), "--set", "ui_page_size=5")
    try:
        first = user_ui.get("/ui/o/Lead")
        assert "Next →" in first.text or first.text.count("<tr>") <= 6
        second = user_ui.get("/ui/o/Lead", params={"page": 2})
        assert second.status_code == 200 and "Page 2" in second.text
    finally:
        run_cli("config", "--data", str(sandbox.data), "--unset", "ui_page_size")
    for name in ("Contact", "Account", "Opportunity"):
        assert user_ui.get(f"/ui/o/{name}").status_code == 200


def test_edit_with_validation_errors_and_last_modified_by(sandbox, user_ui):
    tag = unique("ed")
    r = user_ui.post("/ui/o/Lead/new", {"LastName": "Editme", "Company": tag})
    rid = r.headers["location"].rsplit("/", 1)[1]
    form = user_ui.get(f"/ui/r/{rid}/edit")
    assert form.status_code == 200 and '<select id="f_Status"' in form.text and "Working - Contacted" in form.text
    bad = user_ui.post(f"/ui/r/{rid}/edit", {"LastName": "Editme", "Company": tag, "Email": "not-an-email"})
    assert bad.status_code == 400 and "Email: invalid email address: not-an-email" in bad.text
    assert 'value="not-an-email"' in bad.text  # the form keeps what was typed
    bad = user_ui.post(f"/ui/r/{rid}/edit", {"LastName": "Editme", "Company": tag, "Website": "example.com"})
    assert bad.status_code == 400 and "Website must start with http" in bad.text
    missing = user_ui.post(f"/ui/r/{rid}/edit", {"LastName": "", "Company": tag})
    assert missing.status_code == 400 and "Required fields are missing: [LastName]" in missing.text
    ok = user_ui.post(f"/ui/r/{rid}/edit", {"LastName": "Edited", "Company": tag, "Title": "VP",
                                            "DoNotCall": "on", "Status": "Open - Not Contacted"})
    assert "saved" in user_ui.follow(ok).text
    with sandbox.http() as c:
        rec = c.get(f"{V}/sobjects/Lead/{rid}").json()
    assert rec["LastName"] == "Edited" and rec["Title"] == "VP" and rec["DoNotCall"] is True
    assert rec["LastModifiedById"] == _uid(sandbox, _user(sandbox)[0])


def test_standard_user_sees_only_own_records(sandbox, admin_ui, user_ui):
    tag = unique("own")
    r = admin_ui.post("/ui/o/Lead/new", {"LastName": "AdminOwned", "Company": tag})
    rid = r.headers["location"].rsplit("/", 1)[1]
    assert admin_ui.get(f"/ui/r/{rid}").status_code == 200
    assert user_ui.get(f"/ui/r/{rid}").status_code == 404
    assert rid not in user_ui.get("/ui/o/Lead", params={"q": tag}).text
    assert rid in admin_ui.get("/ui/o/Lead", params={"q": tag}).text
    assert user_ui.post(f"/ui/r/{rid}/delete").status_code == 404


def test_convert_lead(sandbox, user_ui):
    tag = unique("cv")
    r = user_ui.post("/ui/o/Lead/new", {"FirstName": "Conny", "LastName": "Vert", "Company": f"{tag} GmbH",
                                        "Email": f"{tag}@example.com"})
    lid = r.headers["location"].rsplit("/", 1)[1]
    page = user_ui.get(f"/ui/r/{lid}/convert")
    assert page.status_code == 200 and "Create a new account" in page.text
    bad = user_ui.post(f"/ui/r/{lid}/convert", {"account_mode": "existing", "account_id": "nope"})
    assert bad.status_code == 400
    r = user_ui.post(f"/ui/r/{lid}/convert", {"account_mode": "new", "create_opportunity": "on",
                                              "opportunity_name": f"{tag} deal",
                                              "converted_status": "Closed - Converted"})
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/r/003")
    assert "was converted" in user_ui.follow(r).text
    with sandbox.http() as c:
        lead = c.get(f"{V}/sobjects/Lead/{lid}").json()
    assert lead["IsConverted"] is True and lead["ConvertedAccountId"].startswith("001")
    assert lead["ConvertedOpportunityId"].startswith("006")
    # a converted lead has no edit / convert buttons and cannot be converted again
    view = user_ui.get(f"/ui/r/{lid}")
    assert f"/ui/r/{lid}/edit" not in view.text and f"/ui/r/{lid}/convert" not in view.text
    again = user_ui.post(f"/ui/r/{lid}/convert", {"account_mode": "new"})
    assert again.status_code == 400 and "cannot reference converted lead" in again.text
    # converting into an existing account
    r = user_ui.post("/ui/o/Lead/new", {"LastName": "Second", "Company": f"{tag} GmbH"})
    lid2 = r.headers["location"].rsplit("/", 1)[1]
    assert lead["ConvertedAccountId"] in user_ui.get(f"/ui/r/{lid2}/convert").text
    r = user_ui.post(f"/ui/r/{lid2}/convert", {"account_mode": "existing",
                                               "account_id": lead["ConvertedAccountId"]})
    assert r.status_code == 303
    with sandbox.http() as c:
        assert c.get(f"{V}/sobjects/Lead/{lid2}").json()["ConvertedAccountId"] == lead["ConvertedAccountId"]


def test_delete_recycle_bin_undelete(user_ui):
    tag = unique("del")
    r = user_ui.post("/ui/o/Contact/new", {"LastName": f"Gone {tag}"})
    cid = r.headers["location"].rsplit("/", 1)[1]
    r = user_ui.post(f"/ui/r/{cid}/delete")
    assert r.status_code == 303 and "recycle bin" in user_ui.follow(r).text
    bin_page = user_ui.get("/ui/recycle")
    assert f"Gone {tag}" in bin_page.text and f"/ui/r/{cid}/undelete" in bin_page.text
    assert "in the recycle bin" in user_ui.get(f"/ui/r/{cid}").text
    r = user_ui.post(f"/ui/r/{cid}/undelete")
    assert r.status_code == 303 and "was restored" in user_ui.follow(r).text
    assert f"Gone {tag}" not in user_ui.get("/ui/recycle").text


def test_merge_two_leads_and_contacts(sandbox, user_ui):
    tag = unique("mg")
    ids = []
    for i in range(2):
        r = user_ui.post("/ui/o/Lead/new", {"LastName": f"Dup{i}", "Company": tag})
        ids.append(r.headers["location"].rsplit("/", 1)[1])
    page = user_ui.get("/ui/merge", params={"object": "Lead", "master": ids[0]})
    assert page.status_code == 200 and ids[0] in page.text
    bad = user_ui.post("/ui/merge", {"object": "Lead", "master": ids[0], "other": ids[0]})
    assert bad.status_code == 400
    r = user_ui.post("/ui/merge", {"object": "Lead", "master": ids[0], "other": ids[1]})
    assert r.status_code == 303 and r.headers["location"] == f"/ui/r/{ids[0]}"
    with sandbox.http() as c:
        gone = c.get(f"{V}/queryAll", params={"q": f"SELECT IsDeleted, MasterRecordId FROM Lead WHERE Id = "
                                                   f"'{ids[1]}'"}).json()["records"][0]
    assert gone["IsDeleted"] is True and gone["MasterRecordId"] == ids[0]
    cids = []
    for i in range(2):
        r = user_ui.post("/ui/o/Contact/new", {"LastName": f"CDup{i} {tag}"})
        cids.append(r.headers["location"].rsplit("/", 1)[1])
    r = user_ui.post("/ui/merge", {"object": "Contact", "master": cids[0], "other": cids[1]})
    assert r.status_code == 303


class _Receiver(BaseHTTPRequestHandler):
    hits: list[dict] = []
    status = 202

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.hits.append({"auth": self.headers.get("Authorization"), "body": json.loads(body)})
        self.send_response(_Receiver.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_send_to_loopline(sandbox, user_ui):
    r = user_ui.post("/ui/o/Lead/new", {"LastName": "Sendme", "Company": unique("snd")})
    lid = r.headers["location"].rsplit("/", 1)[1]
    run_cli("config", "--data", str(sandbox.data), "--unset", "loopline_send_url")
    r = user_ui.post(f"/ui/r/{lid}/send")
    assert "not configured" in user_ui.follow(r).text
    srv = HTTPServer(("127.0.0.1", 0), _Receiver)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        out = run_cli("config", "--data", str(sandbox.data), "--set",
                      f"loopline_send_url=http://127.0.0.1:{srv.server_port}/hook", "--set",
                      "loopline_send_token=s3cret")
        assert json.loads(out.stdout)["loopline_send_token"] == "***"
        r = user_ui.post(f"/ui/r/{lid}/send")
        assert "Sent to Loopline: HTTP 202" in user_ui.follow(r).text
        assert _Receiver.hits[-1] == {"auth": "Bearer s3cret", "body": {
            "id": lid, "object": "Lead", "orgId": sandbox.info["org_id"], "userId": _uid(sandbox, _user(sandbox)[0])}}
        _Receiver.status = 500
        r = user_ui.post(f"/ui/r/{lid}/send")
        assert "answered HTTP 500" in user_ui.follow(r).text
    finally:
        srv.shutdown()
        run_cli("config", "--data", str(sandbox.data), "--unset", "loopline_send_url", "--unset",
                "loopline_send_token")
