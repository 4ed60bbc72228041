"""The sandbox's web UI: server-rendered HTML (no JavaScript), mounted at ``/ui`` (``/`` redirects there).

Log in as a sandbox user (username + password); a session cookie (``sbx_session``, HttpOnly, Secure,
SameSite=Lax) carries an in-memory session, and every form carries the session's CSRF token (the login form a
double-submit token). Everything goes through :class:`crmsandbox.store.Store` as the logged-in user, so
validation errors carry Salesforce's messages, writes record the user as ``LastModifiedById`` (client id
``crmsandbox-ui``) and standard users see and change only their own records.

Pages: lists with search and pagination (``/ui/o/{Lead|Contact|Account|Opportunity}``), record view and edit
(forms built from the object metadata), new lead/contact, lead conversion, delete / recycle bin / undelete,
merge of two leads or contacts, and "Send to Loopline" (POSTs ``{"id", "object"}`` to the org's
``loopline_send_url`` with ``Authorization: Bearer <loopline_send_token>``; set with ``crmsandbox config``).
"""

from __future__ import annotations

import asyncio
import html
import json
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

from crmsandbox import ids as idlib
from crmsandbox.errors import RecordError, RecordErrors
from crmsandbox.http import Request, Response
from crmsandbox.metadata import FieldDef, ObjectDef
from crmsandbox.store import Principal, Store

if TYPE_CHECKING:
    from crmsandbox.server import SandboxServer

HTML_CT = "text/html; charset=utf-8"
COOKIE = "sbx_session"
PRE_COOKIE = "sbx_login"
CLIENT = "crmsandbox-ui"
SESSION_SECONDS = 8 * 3600
LIST_OBJECTS = ("Lead", "Contact", "Account", "Opportunity")
CREATE_OBJECTS = ("Lead", "Contact")
MERGE_OBJECTS = ("Lead", "Contact")
SEND_OBJECTS = ("Lead", "Contact")
LIST_COLUMNS = {
    "Lead": ("Name", "Company", "Email", "Status", "LastModifiedDate"),
    "Contact": ("Name", "Email", "Title", "Phone", "LastModifiedDate"),
    "Account": ("Name", "Industry", "Phone", "BillingCity", "LastModifiedDate"),
    "Opportunity": ("Name", "StageName", "Amount", "CloseDate", "LastModifiedDate"),
}
SEARCH_FIELDS = {"Lead": ("Name", "Email", "Company"), "Contact": ("Name", "Email"), "Account": ("Name",),
                 "Opportunity": ("Name",)}
# fields the forms leave out (system-maintained, person-account mirrors)
HIDDEN_FIELDS = frozenset({"MasterRecordId", "IsPersonAccount", "PersonContactId", "IsUnreadByOwner"})

CSS = """
*{box-sizing:border-box}body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b2733;background:#f4f6f9}
header{background:#0b5cab;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#fff;text-decoration:none}header .me{margin-left:auto;display:flex;gap:.6rem;align-items:center}
main{max-width:1100px;margin:1.2rem auto;padding:0 1rem}h1{font-size:1.35rem;margin:.2rem 0 1rem}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:.4rem .6rem;border-bottom:1px solid #e1e5ea;
text-align:left;vertical-align:top}th{background:#eef1f5;font-weight:600}
.card{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:1rem;margin-bottom:1rem}
.actions{display:flex;gap:.5rem;flex-wrap:wrap;margin-bottom:1rem}.actions form{margin:0}
button,.btn{background:#0b5cab;color:#fff;border:0;border-radius:4px;padding:.4rem .8rem;cursor:pointer;
text-decoration:none;font:inherit;display:inline-block}.btn.secondary,button.secondary{background:#5a6b7d}
button.danger{background:#c23934}label{display:block;font-weight:600;margin:.6rem 0 .2rem}
input[type=text],input[type=password],input[type=date],select,textarea{width:100%;padding:.35rem;
border:1px solid #b8c2cc;border-radius:4px;font:inherit}textarea{min-height:4rem}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:0 1.5rem}.err{background:#fde8e8;border:1px solid #c23934;
color:#8c1d18;padding:.6rem;border-radius:4px;margin-bottom:1rem}.msg{background:#e6f4ea;border:1px solid #2e844a;
padding:.6rem;border-radius:4px;margin-bottom:1rem}.bad input,.bad select,.bad textarea{border-color:#c23934}
.pager{display:flex;gap:1rem;margin:.8rem 0}.muted{color:#5a6b7d}dl{display:grid;grid-template-columns:14rem 1fr;
gap:.2rem 1rem;margin:0}dt{font-weight:600;color:#3e4a57}dd{margin:0;word-break:break-word}
"""


@dataclass
class Session:
    token: str
    user_id: str
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind "msg"|"err", text)


class UiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _redirect(location: str, cookie: str | None = None) -> Response:
    headers = {"Location": location, "Cache-Control": "no-store"}
    if cookie:
        headers["Set-Cookie"] = cookie
    return Response(303, b"", headers, content_type=HTML_CT)


def _errors_of(e: RecordError | RecordErrors) -> list[RecordError]:
    return e.errors if isinstance(e, RecordErrors) else [e]


class WebUI:
    def __init__(self, server: SandboxServer):
        self.server = server
        self.store: Store = server.store
        self.sessions: dict[str, Session] = {}

    # ----------------------------------------------------------------------------------- plumbing
    @property
    def page_size(self) -> int:
        return max(5, min(200, int(self._config().get("ui_page_size", 25))))

    def _config(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.server.dd.config_file.read_text()))
        except (OSError, ValueError):
            return dict(self.server.config)

    @staticmethod
    def _cookies(req: Request) -> dict[str, str]:
        c: SimpleCookie = SimpleCookie()
        try:
            c.load(req.headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is just no cookies
            return {}
        return {k: m.value for k, m in c.items()}

    @staticmethod
    def _cookie(name: str, value: str, max_age: int) -> str:
        return f"{name}={value}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={max_age}"

    def _session(self, req: Request) -> Session | None:
        tok = self._cookies(req).get(COOKIE)
        s = self.sessions.get(tok or "")
        if s is None:
            return None
        if s.expires < time.time() or self.store.principal_for_user(s.user_id) is None:
            self.sessions.pop(s.token, None)
            return None
        return s

    @staticmethod
    def _form(req: Request) -> dict[str, str]:
        return dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))

    def page(self, title: str, body: str, s: Session | None, status: int = 200,
             headers: dict[str, str] | None = None) -> Response:
        nav = ""
        flash = ""
        if s is not None:
            p = self.store.principal_for_user(s.user_id)
            links = "".join(f'<a href="/ui/o/{o}">{o}s</a>' for o in LIST_OBJECTS)
            nav = (f'<header><strong>crmsandbox</strong>{links}<a href="/ui/recycle">Recycle bin</a>'
                   f'<a href="/ui/merge">Merge</a><span class="me">{esc(p.username if p else "")}'
                   f'<form method="post" action="/ui/logout">{self.csrf_field(s)}'
                   f'<button class="secondary">Log out</button></form></span></header>')
            flash = "".join(f'<div class="{k}">{esc(t)}</div>' for k, t in s.flash)
            s.flash.clear()
        doc = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(title)} · crmsandbox</title>"
               f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head>"
               f"<body>{nav}<main>{flash}{body}</main></body></html>")
        h = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}
        h.update(headers or {})
        return Response(status, doc.encode(), h, content_type=HTML_CT)

    @staticmethod
    def csrf_field(s: Session) -> str:
        return f'<input type="hidden" name="csrf" value="{esc(s.csrf)}">'

    def _post_form(self, s: Session, action: str, label: str, cls: str = "", extra: str = "") -> str:
        return (f'<form method="post" action="{esc(action)}">{self.csrf_field(s)}{extra}'
                f'<button class="{cls}">{esc(label)}</button></form>')

    # ------------------------------------------------------------------------------------ dispatch
    async def handle(self, server: SandboxServer, req: Request) -> Response:
        path = req.path
        if path == "/":
            return _redirect("/ui/")
        parts = [p for p in path[len("/ui"):].split("/") if p]
        try:
            if parts == ["login"]:
                return self.login(req)
            s = self._session(req)
            if s is None:
                if req.method == "GET":
                    return _redirect("/ui/login?next=" + quote(path + ("?" + req.query_string
                                                                        if req.query_string else "")))
                return self.page("Session expired", '<p class="err">Your session has expired. '
                                 '<a href="/ui/login">Log in</a> again.</p>', None, status=403)
            if req.method == "POST":
                form = self._form(req)
                if not secrets.compare_digest(form.get("csrf", ""), s.csrf):
                    return self.page("Forbidden", '<p class="err">Invalid or missing CSRF token.</p>', s,
                                     status=403)
            else:
                form = {}
            p = self.store.principal_for_user(s.user_id)
            assert p is not None
            return await self.route(req, s, p, parts, form)
        except UiError as e:
            return self.page("Error", f'<p class="err">{esc(e.message)}</p>', self._session(req), status=e.status)

    async def route(self, req: Request, s: Session, p: Principal, parts: list[str],
                    form: dict[str, str]) -> Response:
        m = req.method
        if not parts:
            return self.home(s)
        if parts == ["logout"] and m == "POST":
            self.sessions.pop(s.token, None)
            return _redirect("/ui/login", self._cookie(COOKIE, "", 0))
        if parts[0] == "o" and len(parts) == 2 and m == "GET":
            return self.list_page(req, s, p, self._obj(parts[1], LIST_OBJECTS))
        if parts[0] == "o" and len(parts) == 3 and parts[2] == "new":
            o = self._obj(parts[1], CREATE_OBJECTS)
            return self.new_record(s, p, o, form if m == "POST" else None)
        if parts[0] == "r" and len(parts) >= 2:
            rid = parts[1]
            action = parts[2] if len(parts) > 2 else ""
            if action == "" and m == "GET":
                return self.view(s, p, rid)
            if action == "edit":
                return self.edit(s, p, rid, form if m == "POST" else None)
            if action == "delete" and m == "POST":
                return self.delete(s, p, rid)
            if action == "undelete" and m == "POST":
                return self.undelete(s, p, rid)
            if action == "convert":
                return self.convert(s, p, rid, form if m == "POST" else None)
            if action == "send" and m == "POST":
                return await self.send(s, p, rid)
        if parts == ["recycle"] and m == "GET":
            return self.recycle(s, p)
        if parts == ["merge"]:
            return self.merge(req, s, p, form if m == "POST" else None)
        raise UiError(404, "Page not found.")

    def _obj(self, name: str, allowed: tuple[str, ...]) -> ObjectDef:
        o = self.store.object(name)
        if o is None or o.name not in allowed:
            raise UiError(404, "Page not found.")
        return o

    # --------------------------------------------------------------------------------------- login
    def login(self, req: Request) -> Response:
        cookies = self._cookies(req)
        nxt = dict(parse_qsl(req.query_string)).get("next", "/ui/")
        if not nxt.startswith("/ui/"):
            nxt = "/ui/"
        if req.method == "POST":
            form = self._form(req)
            pre = cookies.get(PRE_COOKIE, "")
            if not pre or not secrets.compare_digest(form.get("csrf", ""), pre):
                return self._login_page("Your login form expired; please try again.", form.get("username", ""),
                                        nxt, status=403)
            uid = self.store.user_by_username(form.get("username", "").strip())
            if uid is None or self.store.principal_for_user(uid) is None or \
                    not self.store.check_password(uid, form.get("password", "")):
                return self._login_page("Please check your username and password. If you still can't log in, "
                                        "contact your Salesforce administrator.", form.get("username", ""), nxt,
                                        status=401)
            now = time.time()
            for t in [t for t, x in self.sessions.items() if x.expires < now]:
                self.sessions.pop(t, None)
            tok = secrets.token_urlsafe(32)
            self.sessions[tok] = Session(tok, uid, secrets.token_urlsafe(24), now + SESSION_SECONDS)
            target = form.get("next") or nxt
            if not target.startswith("/ui/"):
                target = "/ui/"
            return _redirect(target, self._cookie(COOKIE, tok, SESSION_SECONDS))
        return self._login_page("", "", nxt)

    def _login_page(self, error: str, username: str, nxt: str, status: int = 200) -> Response:
        pre = secrets.token_urlsafe(24)
        err = f'<div class="err">{esc(error)}</div>' if error else ""
        body = (f'<div class="card" style="max-width:26rem;margin:3rem auto"><h1>Log in to crmsandbox</h1>{err}'
                f'<form method="post" action="/ui/login"><input type="hidden" name="csrf" value="{pre}">'
                f'<input type="hidden" name="next" value="{esc(nxt)}">'
                f'<label for="username">Username</label><input type="text" id="username" name="username" '
                f'value="{esc(username)}" autocomplete="username" required>'
                f'<label for="password">Password</label><input type="password" id="password" name="password" '
                f'autocomplete="current-password" required><p><button>Log in</button></p></form></div>')
        return self.page("Log in", body, None, status=status,
                         headers={"Set-Cookie": self._cookie(PRE_COOKIE, pre, 3600)})

    # ---------------------------------------------------------------------------------------- pages
    def home(self, s: Session) -> Response:
        links = "".join(f'<li><a href="/ui/o/{o}">{o}s</a></li>' for o in LIST_OBJECTS)
        new = "".join(f'<li><a href="/ui/o/{o}/new">New {o.lower()}</a></li>' for o in CREATE_OBJECTS)
        return self.page("Home", f"<h1>crmsandbox</h1><div class=card><ul>{links}{new}"
                                 f'<li><a href="/ui/recycle">Recycle bin</a></li>'
                                 f'<li><a href="/ui/merge">Merge records</a></li></ul></div>', s)

    def _label(self, o: ObjectDef, name: str) -> str:
        f = o.fields.get(name)
        return (f.label or name) if f else name

    def list_page(self, req: Request, s: Session, p: Principal, o: ObjectDef) -> Response:
        q = req.query.get("q", "").strip()
        try:
            page = max(1, int(req.query.get("page", "1") or 1))
        except ValueError:
            page = 1
        size = self.page_size
        cols = [c for c in LIST_COLUMNS[o.name] if c in o.fields]
        where = ['"IsDeleted"=0']
        params: list[Any] = []
        if o.has_owner and not p.view_all:
            where.append('"OwnerId"=?')
            params.append(p.user_id)
        if q:
            like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            fields = [f for f in SEARCH_FIELDS[o.name] if f in o.fields]
            where.append("(" + " OR ".join(f'"{f}" LIKE ? ESCAPE \'\\\'' for f in fields) + ")")
            params += [like] * len(fields)
        sql = (f'SELECT "Id", {", ".join(chr(34) + c + chr(34) for c in cols)} FROM "{o.table}" '
               f'WHERE {" AND ".join(where)} ORDER BY "SystemModstamp" DESC, rowid DESC LIMIT ? OFFSET ?')
        rows = self.store.db.execute(sql, [*params, size + 1, (page - 1) * size]).fetchall()
        more = len(rows) > size
        rows = rows[:size]
        head = "".join(f"<th>{esc(self._label(o, c))}</th>" for c in cols)
        body_rows = []
        for r in rows:
            cells = [f'<td><a href="/ui/r/{r[0]}">{esc(r[1] or r[0])}</a></td>']
            cells += [f"<td>{esc(v)}</td>" for v in r[2:]]
            body_rows.append("<tr>" + "".join(cells) + "</tr>")
        table = (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body_rows)}</tbody></table>"
                 if rows else '<p class="muted">No records found.</p>')

        def link(n: int, text: str) -> str:
            qs = urlencode({"q": q, "page": n} if q else {"page": n})
            return f'<a href="/ui/o/{o.name}?{qs}">{text}</a>'
        pager = '<div class="pager">' + (link(page - 1, "← Previous") if page > 1 else "") + \
            f'<span class="muted">Page {page}</span>' + (link(page + 1, "Next →") if more else "") + "</div>"
        new = f'<a class="btn" href="/ui/o/{o.name}/new">New</a>' if o.name in CREATE_OBJECTS else ""
        search = (f'<form method="get" action="/ui/o/{o.name}" class="actions"><input type="text" name="q" '
                  f'value="{esc(q)}" placeholder="Search by {"/".join(SEARCH_FIELDS[o.name]).lower()}" '
                  f'style="max-width:24rem"><button>Search</button>{new}</form>')
        return self.page(o.label_plural, f"<h1>{esc(o.label_plural)}</h1>{search}{table}{pager}", s)

    def _load(self, p: Principal, rid: str, allow_deleted: bool = False) -> tuple[ObjectDef, dict[str, Any]]:
        norm = idlib.normalize(rid)
        o = self.store.object_for_id(norm) if norm else None
        if o is None or norm is None:
            raise UiError(404, "The record you are looking for does not exist.")
        try:
            row = self.store._visible_row(o, norm, p, allow_deleted=allow_deleted)
        except RecordError as e:
            raise UiError(404, "This record was deleted." if e.code == "ENTITY_IS_DELETED" else
                          "The record you are looking for does not exist or you can't see it.") from None
        return o, row

    def _display(self, o: ObjectDef, f: FieldDef, v: Any) -> str:
        if v is None or v == "":
            return ""
        if f.type == "boolean":
            return "✓" if v else "✗"
        if f.type in ("reference", "id") and f.name != "Id":
            return f'<a href="/ui/r/{esc(v)}">{esc(self._name_of(str(v)))}</a>'
        if f.type == "textarea":
            return esc(v).replace("\n", "<br>")
        return esc(v)

    def _name_of(self, rid: str) -> str:
        o = self.store.object_for_id(rid)
        if o is None or "Name" not in o.fields:
            return rid
        row = self.store.db.execute(f'SELECT "Name" FROM "{o.table}" WHERE "Id"=?', (rid,)).fetchone()
        return row[0] if row and row[0] else rid

    def view(self, s: Session, p: Principal, rid: str) -> Response:
        o, row = self._load(p, rid, allow_deleted=True)
        deleted = bool(row.get("IsDeleted"))
        items = "".join(f"<dt>{esc(f.label or f.name)}</dt><dd>{self._display(o, f, row.get(f.name))}</dd>"
                        for f in o.fields.values() if f.name not in HIDDEN_FIELDS)
        acts = []
        rid = row["Id"]
        if deleted:
            acts.append(self._post_form(s, f"/ui/r/{rid}/undelete", "Undelete"))
        else:
            if o.updateable and not (o.name == "Lead" and row.get("IsConverted")):
                acts.append(f'<a class="btn" href="/ui/r/{rid}/edit">Edit</a>')
            if o.name == "Lead" and not row.get("IsConverted"):
                acts.append(f'<a class="btn" href="/ui/r/{rid}/convert">Convert</a>')
            if o.name in MERGE_OBJECTS:
                acts.append(f'<a class="btn secondary" href="/ui/merge?object={o.name}&amp;master={rid}">Merge</a>')
            if o.name in SEND_OBJECTS:
                acts.append(self._post_form(s, f"/ui/r/{rid}/send", "Send to Loopline"))
            if o.deletable:
                acts.append(self._post_form(s, f"/ui/r/{rid}/delete", "Delete", "danger"))
        title = row.get("Name") or rid
        badge = ' <span class="muted">(in the recycle bin)</span>' if deleted else ""
        body = (f'<h1>{esc(o.label)}: {esc(title)}{badge}</h1><div class="actions">{"".join(acts)}</div>'
                f'<div class="card"><dl>{items}</dl></div>')
        return self.page(f"{o.label} {title}", body, s)

    # ---------------------------------------------------------------------------------------- forms
    def _form_fields(self, o: ObjectDef, creating: bool) -> list[FieldDef]:
        out = []
        for f in o.fields.values():
            if f.name in HIDDEN_FIELDS or f.calculated or f.type == "id":
                continue
            if not (f.createable if creating else f.updateable):
                continue
            if o.name == "Contact" and f.name.startswith("Person"):
                continue
            out.append(f)
        return out

    def _input(self, f: FieldDef, value: Any, bad: bool) -> str:
        name = esc(f.name)
        req = " *" if f.required_on_create or (not f.nillable and f.type != "boolean") else ""
        label = f'<label for="f_{name}">{esc(f.label or f.name)}{req}</label>'
        v = "" if value is None else value
        if f.type == "boolean":
            checked = " checked" if v in (True, 1, "1", "on", "true") else ""
            ctrl = f'<input type="checkbox" id="f_{name}" name="{name}"{checked}>'
        elif f.type in ("picklist", "multipicklist") and f.picklist:
            opts = ['<option value="">--None--</option>']
            cur = str(v)
            for pv in f.picklist:
                sel = " selected" if pv == cur else ""
                opts.append(f'<option value="{esc(pv)}"{sel}>{esc(pv)}</option>')
            if cur and cur not in f.picklist:
                opts.append(f'<option value="{esc(cur)}" selected>{esc(cur)}</option>')
            ctrl = f'<select id="f_{name}" name="{name}">{"".join(opts)}</select>'
        elif f.type == "textarea":
            ctrl = f'<textarea id="f_{name}" name="{name}">{esc(v)}</textarea>'
        else:
            typ = "date" if f.type == "date" else "text"
            ctrl = f'<input type="{typ}" id="f_{name}" name="{name}" value="{esc(v)}">'
        return f'<div class="{"bad" if bad else ""}">{label}{ctrl}</div>'

    def _render_form(self, s: Session, o: ObjectDef, action: str, title: str, values: dict[str, Any],
                     creating: bool, errors: list[RecordError], status: int = 200) -> Response:
        bad = {fld for e in errors for fld in e.fields}
        err = ""
        if errors:
            err = ('<div class="err"><strong>Review the errors on this page.</strong><ul>'
                   + "".join(f"<li>{esc(e.message)}</li>" for e in errors) + "</ul></div>")
        inputs = "".join(self._input(f, values.get(f.name), f.name in bad) for f in self._form_fields(o, creating))
        body = (f"<h1>{esc(title)}</h1>{err}<form method=post action=\"{esc(action)}\" class=card>"
                f"{self.csrf_field(s)}<div class=grid>{inputs}</div><p class=actions><button>Save</button>"
                f"<a class='btn secondary' href='javascript:history.back()'>Cancel</a></p></form>")
        return self.page(title, body, s, status=status)

    def _values_from_form(self, o: ObjectDef, form: dict[str, str], creating: bool) -> dict[str, Any]:
        """Field values of a submitted record form (checkboxes: absent = unchecked; blank text = null)."""
        vals: dict[str, Any] = {}
        allowed = {f.name: f for f in self._form_fields(o, creating)}
        for name, f in allowed.items():
            if f.type == "boolean":
                vals[name] = name in form
                continue
            if name in form:
                raw = form[name]
                vals[name] = raw.strip() if raw.strip() != "" else None
        return vals

    def new_record(self, s: Session, p: Principal, o: ObjectDef, form: dict[str, str] | None) -> Response:
        action = f"/ui/o/{o.name}/new"
        if form is None:
            defaults = {f.name: f.default for f in o.fields.values() if f.default is not None}
            return self._render_form(s, o, action, f"New {o.label.lower()}", defaults, True, [])
        vals = self._values_from_form(o, form, True)
        clean = {k: v for k, v in vals.items() if v is not None and v is not False}
        try:
            rid = self.store.create(o, clean, p, CLIENT)
        except (RecordError, RecordErrors) as e:
            return self._render_form(s, o, action, f"New {o.label.lower()}", vals, True, _errors_of(e), 400)
        s.flash.append(("msg", f'{o.label} "{self._name_of(rid)}" was created.'))
        return _redirect(f"/ui/r/{rid}")

    def edit(self, s: Session, p: Principal, rid: str, form: dict[str, str] | None) -> Response:
        o, row = self._load(p, rid)
        rid = row["Id"]
        action = f"/ui/r/{rid}/edit"
        title = f"Edit {o.label.lower()}: {row.get('Name') or rid}"
        if form is None:
            return self._render_form(s, o, action, title, row, False, [])
        vals = self._values_from_form(o, form, False)
        changed: dict[str, Any] = {}
        for k, v in vals.items():
            f = o.fields[k]
            old = row.get(k)
            if f.type == "boolean":
                if bool(old) != bool(v):
                    changed[k] = bool(v)
            elif (None if old is None or old == "" else str(old)) != v:
                if f.type in ("int", "double", "currency", "percent") and v is not None and old is not None:
                    try:
                        if float(v) == float(old):
                            continue
                    except ValueError:
                        pass
                changed[k] = v
        try:
            if changed:
                self.store.update(o, rid, changed, p, CLIENT)
        except (RecordError, RecordErrors) as e:
            shown = dict(row)
            shown.update(vals)
            return self._render_form(s, o, action, title, shown, False, _errors_of(e), 400)
        s.flash.append(("msg", f"{o.label} saved." if changed else "No changes."))
        return _redirect(f"/ui/r/{rid}")

    # -------------------------------------------------------------------------------------- actions
    def delete(self, s: Session, p: Principal, rid: str) -> Response:
        o, row = self._load(p, rid)
        try:
            self.store.delete(o, row["Id"], p, CLIENT)
        except (RecordError, RecordErrors) as e:
            s.flash.append(("err", "; ".join(x.message for x in _errors_of(e))))
            return _redirect(f"/ui/r/{row['Id']}")
        s.flash.append(("msg", f'{o.label} "{row.get("Name") or row["Id"]}" was moved to the recycle bin.'))
        return _redirect(f"/ui/o/{o.name}" if o.name in LIST_OBJECTS else "/ui/")

    def undelete(self, s: Session, p: Principal, rid: str) -> Response:
        o, row = self._load(p, rid, allow_deleted=True)
        try:
            self.store.undelete(row["Id"], p, CLIENT)
        except (RecordError, RecordErrors) as e:
            s.flash.append(("err", "; ".join(x.message for x in _errors_of(e))))
            return _redirect("/ui/recycle")
        s.flash.append(("msg", f'{o.label} "{row.get("Name") or row["Id"]}" was restored.'))
        return _redirect(f"/ui/r/{row['Id']}")

    def recycle(self, s: Session, p: Principal) -> Response:
        rows = []
        for name in LIST_OBJECTS:
            o = self.store.registry.objects[name]
            sql = f'SELECT "Id", "Name", "SystemModstamp" FROM "{o.table}" WHERE "IsDeleted"=1'
            params: list[Any] = []
            if not p.view_all:
                sql += ' AND "OwnerId"=?'
                params.append(p.user_id)
            sql += ' ORDER BY "SystemModstamp" DESC LIMIT 100'
            rows += [(r[2] or "", o.label, r[0], r[1]) for r in self.store.db.execute(sql, params)]
        rows.sort(reverse=True)
        trs = "".join(f'<tr><td><a href="/ui/r/{esc(r[2])}">{esc(r[3] or r[2])}</a></td><td>{esc(r[1])}</td>'
                      f'<td>{esc(r[0])}</td><td>{self._post_form(s, f"/ui/r/{r[2]}/undelete", "Undelete")}</td></tr>'
                      for r in rows[:200])
        table = (f"<table><thead><tr><th>Name</th><th>Type</th><th>Deleted</th><th></th></tr></thead>"
                 f"<tbody>{trs}</tbody></table>" if rows else '<p class="muted">The recycle bin is empty.</p>')
        return self.page("Recycle bin", f"<h1>Recycle bin</h1>{table}", s)

    def convert(self, s: Session, p: Principal, rid: str, form: dict[str, str] | None) -> Response:
        o, lead = self._load(p, rid)
        if o.name != "Lead":
            raise UiError(404, "Only leads can be converted.")
        lid = lead["Id"]
        errors: list[str] = []
        if form is not None:
            acc = None
            if form.get("account_mode") == "existing":
                acc = idlib.normalize(form.get("account_id", "").strip())
                if acc is None or not acc.startswith("001"):
                    errors.append("Choose an existing account (an account id starting with 001).")
            if not errors:
                try:
                    res = self.store.convert_lead(
                        lid, p, account_id=acc, create_opportunity=form.get("create_opportunity") == "on",
                        opportunity_name=form.get("opportunity_name") or None,
                        converted_status=form.get("converted_status") or "Closed - Converted", client=CLIENT)
                except (RecordError, RecordErrors) as e:
                    errors += [x.message for x in _errors_of(e)]
                else:
                    s.flash.append(("msg", f'Lead "{lead.get("Name")}" was converted.'))
                    return _redirect(f"/ui/r/{res['contactId']}")
        # accounts whose name matches the lead's company (the ones the user can see)
        accounts = []
        company = lead.get("Company") or ""
        acc_o = self.store.registry.objects["Account"]
        sql = f'SELECT "Id", "Name" FROM "{acc_o.table}" WHERE "IsDeleted"=0 AND "Name" LIKE ?'
        params: list[Any] = [company[:40] + "%"]
        if not p.view_all:
            sql += ' AND "OwnerId"=?'
            params.append(p.user_id)
        accounts = self.store.db.execute(sql + " LIMIT 20", params).fetchall() if company else []
        opts = "".join(f'<option value="{esc(a[0])}">{esc(a[1])} ({esc(a[0])})</option>' for a in accounts)
        err = ('<div class="err"><ul>' + "".join(f"<li>{esc(x)}</li>" for x in errors) + "</ul></div>") \
            if errors else ""
        status_opts = "".join(f'<option{" selected" if v == "Closed - Converted" else ""}>{esc(v)}</option>'
                              for v in o.fields["Status"].picklist if v.startswith("Closed"))
        body = (f'<h1>Convert lead: {esc(lead.get("Name"))}</h1>{err}<form method="post" class="card" '
                f'action="/ui/r/{lid}/convert">{self.csrf_field(s)}'
                f'<label><input type="radio" name="account_mode" value="new" checked> Create a new account: '
                f'{esc(company)}</label>'
                f'<label><input type="radio" name="account_mode" value="existing"> Use an existing account'
                f'</label>'
                f'<input type="text" name="account_id" placeholder="Account id (001…)" list="accts">'
                f'<datalist id="accts">{opts}</datalist>'
                + ('<p class="muted">Matching accounts: ' + ", ".join(f"{esc(a[1])} ({esc(a[0])})"
                                                                        for a in accounts) + "</p>"
                   if accounts else "")
                + f'<label><input type="checkbox" name="create_opportunity"> Create an opportunity</label>'
                f'<label for="opp">Opportunity name</label><input type="text" id="opp" name="opportunity_name" '
                f'value="{esc(company)}-">'
                f'<label for="cs">Converted status</label><select id="cs" name="converted_status">{status_opts}'
                f'</select><p class="actions"><button>Convert</button></p></form>')
        return self.page("Convert lead", body, s, status=400 if errors else 200)

    def merge(self, req: Request, s: Session, p: Principal, form: dict[str, str] | None) -> Response:
        q = req.query
        obj = (form or {}).get("object") or q.get("object") or "Lead"
        o = self._obj(obj, MERGE_OBJECTS)
        errors: list[str] = []
        master = (form or {}).get("master") or q.get("master", "")
        other = (form or {}).get("other", "")
        if form is not None:
            m_id, o_id = idlib.normalize(master.strip()), idlib.normalize(other.strip())
            if m_id is None or o_id is None:
                errors.append("Enter the ids of the two records to merge.")
            else:
                try:
                    self.store.merge(o, m_id, [o_id], p, CLIENT)
                except (RecordError, RecordErrors) as e:
                    errors += [x.message for x in _errors_of(e)]
                else:
                    s.flash.append(("msg", f"Merged {o_id} into {self._name_of(m_id)}."))
                    return _redirect(f"/ui/r/{m_id}")
        err = ('<div class="err"><ul>' + "".join(f"<li>{esc(x)}</li>" for x in errors) + "</ul></div>") \
            if errors else ""
        objs = "".join(f'<option{" selected" if x == o.name else ""}>{x}</option>' for x in MERGE_OBJECTS)
        body = (f"<h1>Merge {esc(o.label_plural.lower())}</h1>{err}<form method=post action=/ui/merge class=card>"
                f"{self.csrf_field(s)}<label for=obj>Object</label><select id=obj name=object>{objs}</select>"
                f'<label for=master>Master record id (kept)</label><input type=text id=master name=master '
                f'value="{esc(master)}"><label for=other>Duplicate record id (merged into the master and '
                f'deleted)</label><input type=text id=other name=other value="{esc(other)}">'
                f"<p class=actions><button>Merge</button></p></form>")
        return self.page("Merge", body, s, status=400 if errors else 200)

    async def send(self, s: Session, p: Principal, rid: str) -> Response:
        o, row = self._load(p, rid)
        if o.name not in SEND_OBJECTS:
            raise UiError(404, "Only leads and contacts can be sent to Loopline.")
        cfg = self._config()
        url = cfg.get("loopline_send_url")
        if url and not str(url).startswith(("http://", "https://")):
            s.flash.append(("err", f"loopline_send_url must be an http(s) URL, not {url!r}."))
            return _redirect(f"/ui/r/{row['Id']}")
        if not url:
            s.flash.append(("err", "Send to Loopline is not configured (crmsandbox config --set "
                                   "loopline_send_url=... loopline_send_token=...)."))
            return _redirect(f"/ui/r/{row['Id']}")
        payload = json.dumps({"id": row["Id"], "object": o.name, "orgId": self.store.org_id,
                              "userId": p.user_id}).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "crmsandbox-ui"}
        if cfg.get("loopline_send_token"):
            headers["Authorization"] = f"Bearer {cfg['loopline_send_token']}"

        def post() -> tuple[int | None, str]:
            # only http(s) URLs (checked below) configured by the org admin
            r = urllib.request.Request(str(url), data=payload, headers=headers, method="POST")  # noqa: S310
            try:
                with urllib.request.urlopen(r, timeout=10) as resp:  # noqa: S310
                    return resp.status, resp.read(500).decode("utf-8", "replace")
            except urllib.error.HTTPError as e:
                return e.code, e.read(500).decode("utf-8", "replace")
            except (urllib.error.URLError, OSError, ValueError) as e:
                return None, str(getattr(e, "reason", e))

        status, text = await asyncio.to_thread(post)
        if status is None:
            s.flash.append(("err", f"Send to Loopline failed: {text}"))
        elif 200 <= status < 300:
            s.flash.append(("msg", f"Sent to Loopline: HTTP {status}."))
        else:
            s.flash.append(("err", f"Send to Loopline answered HTTP {status}: {text[:200]}"))
        return _redirect(f"/ui/r/{row['Id']}")


def mount(server: SandboxServer) -> None:
    ui = WebUI(server)
    server.extensions["ui"] = ui
    server.add_route(r"^/$", ui.handle)
    server.add_route(r"^/ui(?:/.*)?$", ui.handle)
