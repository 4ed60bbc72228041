"""The sandbox HTTP server: a lean ASGI application served by uvicorn over HTTPS.

Paths:
    POST /services/oauth2/token          OAuth (JWT bearer, password, client credentials, refresh token)
    GET  /services/oauth2/userinfo       OpenID userinfo
    GET  /id/{orgId}/{userId}            identity URL
    GET  /services/data/                 API versions (no auth)
    *    /services/data/vXX.X/...        REST API (see crmsandbox.api), counted, fault-injected
    *    /_sandbox/...                   admin endpoints (System Administrator token): faults, undelete, merge,
                                         convert-lead, changes, expire-tokens, reset-usage

Extra API resources (Bulk API 2.0, ...) mount on :data:`crmsandbox.api.ROUTER` (``ROUTER.add(...)``); extra
non-API paths (a web UI) mount with :meth:`SandboxServer.add_route`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib
import importlib.util
import json
import logging
import os
import re
import sqlite3
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

import jwt

from crmsandbox import api
from crmsandbox.certs import public_key_from_pem
from crmsandbox.datadir import DataDir, write_json_atomic
from crmsandbox.describe import DescribeCache
from crmsandbox.errors import ApiError, RecordError, RecordErrors
from crmsandbox.faults import FaultConfigError, Faults
from crmsandbox.http import Request, Response, error_response, parse_json
from crmsandbox.store import AUTO_ASSIGN, Principal, Store

log = logging.getLogger("crmsandbox")

_API_RE = re.compile(r"^/services/data/v(\d+)\.(\d)(/.*)?$")
_CLIENT_RE = re.compile(r"client\s*=\s*([^,;\s]+)", re.I)
#: optional extension packages mounted by every server (see SandboxServer._mount_extensions)
EXTENSIONS = ["crmsandbox.bulk", "crmsandbox.ui"]
SESSION_INVALID = ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid",
                           headers={"WWW-Authenticate": "Token"})


class SandboxServer:
    """One org served over HTTP(S). ``await server(scope, receive, send)`` is the ASGI entry point."""

    def __init__(self, data_dir: str | os.PathLike[str], base_url: str | None = None):
        self.dd = DataDir(data_dir)
        self.config = self.dd.load_config()
        self.base_url = base_url or self.dd.base_url(self.config)
        self.store = Store(str(self.dd.db_file), self.config)
        self.store.analyze()
        self.describe_cache = DescribeCache(self.store.registry)
        self.router = api.ROUTER
        self.extra_routes: list[tuple[re.Pattern[str], Callable[..., Awaitable[Response]]]] = []
        #: per-server state of mounted extensions (e.g. ``"bulk"``, ``"ui"``)
        self.extensions: dict[str, Any] = {}
        self.faults = Faults()
        self._faults_mtime: int | None = None
        self._faults_checked = 0.0
        self._load_faults(force=True)
        self._mount_extensions()

    def _mount_extensions(self) -> None:
        """Optional sibling packages (e.g. ``crmsandbox.bulk``, ``crmsandbox.ui``) that define
        ``mount(server)`` are mounted at start-up: they add API routes to ``api.ROUTER`` (idempotently) and
        other paths with :meth:`add_route`."""
        for name in EXTENSIONS:
            if importlib.util.find_spec(name) is None:
                continue
            module = importlib.import_module(name)
            mount = getattr(module, "mount", None)
            if callable(mount):
                mount(self)

    # ------------------------------------------------------------------------------------ extension
    def add_route(self, pattern: str, handler: Callable[..., Awaitable[Response]]) -> None:
        """Mount an async ``handler(server, request) -> Response`` on a full-path regex (checked first)."""
        self.extra_routes.append((re.compile(pattern), handler))

    # -------------------------------------------------------------------------------------- faults
    def _load_faults(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._faults_checked < 1.0:
            return
        self._faults_checked = now
        try:
            mtime = os.stat(self.dd.faults_file).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._faults_mtime and not force:
            return
        self._faults_mtime = mtime
        data: dict[str, Any] = {}
        if mtime is not None:
            try:
                data = json.loads(self.dd.faults_file.read_text())
            except (OSError, ValueError):
                log.warning("unreadable faults.json ignored")
                return
        try:
            self.set_faults(Faults.from_dict(data), persist=False)
        except FaultConfigError as e:
            log.warning("bad faults.json ignored: %s", e)

    def set_faults(self, faults: Faults, persist: bool = True) -> None:
        self.faults = faults
        self.store.daily_api_limit_override = faults.daily_api_limit
        if persist:
            write_json_atomic(self.dd.faults_file, faults.to_dict())
            self._faults_mtime = os.stat(self.dd.faults_file).st_mtime_ns

    # ------------------------------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    self.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1").split("?", 1)[0] if raw_path else scope["path"]
        req = Request(scope["method"], path, scope.get("query_string", b"").decode("latin-1"), headers, body)
        try:
            resp = await self.handle(req, send)
        except _Dropped:
            return
        except Exception:
            log.error("unhandled error on %s %s\n%s", req.method, path, traceback.format_exc())
            resp = Response(500, [{"message": "An unexpected error occurred. Please include this ErrorId if you "
                                              "contact support: sandbox-internal", "errorCode": "UNKNOWN_EXCEPTION"}])
        await self._send(send, resp)

    async def _send(self, send: Callable, resp: Response) -> None:
        payload = resp.encode()
        hdrs = [(b"content-length", str(len(payload)).encode())]
        if resp.body is not None or resp.status not in (204, 304):
            hdrs.append((b"content-type", resp.content_type.encode()))
        for k, v in resp.headers.items():
            hdrs.append((k.lower().encode("latin-1"), str(v).encode("latin-1")))
        await send({"type": "http.response.start", "status": resp.status, "headers": hdrs})
        await send({"type": "http.response.body", "body": payload})

    async def handle(self, req: Request, send: Callable) -> Response:
        path = req.path
        for rx, handler in self.extra_routes:
            if rx.match(path):
                return await handler(self, req)
        m = _API_RE.match(path)
        if m:
            return await self._api(req, m, send)
        if path.startswith("/_sandbox/"):
            return self._guard(lambda: self._admin(req))
        if path in ("/services/data", "/services/data/"):
            return Response(200, [{"label": label, "url": f"/services/data/v{v}", "version": v}
                                  for v, label in api.API_VERSIONS])
        if path.rstrip("/") == "/services/oauth2/token":
            if req.method != "POST":
                return Response(405, [{"message": f"HTTP Method '{req.method}' not allowed. Allowed are POST",
                                       "errorCode": "METHOD_NOT_ALLOWED"}])
            self._load_faults()
            if self.faults.apply_to_oauth and self.faults.active:
                injected = await self._inject(send)
                if isinstance(injected, Response):
                    return injected
                if injected == "LOST_RESPONSE":  # the token is issued, the answer lost
                    self._guard(lambda: self._token(req))
                    await _drop(send)
                    raise _Dropped
            return self._guard(lambda: self._token(req))
        if path.rstrip("/") in ("/services/oauth2/userinfo",) or path.startswith("/id/"):
            return self._guard(lambda: self._identity(req))
        if path.rstrip("/") == "/services/oauth2/revoke":
            return self._guard(lambda: self._revoke(req))
        return Response(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])

    @staticmethod
    def _guard(fn: Callable[[], Response]) -> Response:
        try:
            return fn()
        except ApiError as e:
            return error_response(e)
        except (RecordErrors, RecordError) as e:
            errs = e.errors if isinstance(e, RecordErrors) else [e]
            return Response(errs[0].status, [x.as_api() for x in errs])

    # -------------------------------------------------------------------------------------------- API
    def authenticate(self, req: Request) -> Principal:
        auth = req.headers.get("authorization", "")
        parts = auth.split(None, 1)
        if len(parts) != 2 or parts[0].lower() not in ("bearer", "oauth"):
            raise SESSION_INVALID
        info = self.store.token_info(parts[1].strip())
        if info is None:
            raise SESSION_INVALID
        p = self.store.principal_for_user(info[0])
        if p is None:
            raise SESSION_INVALID
        return p

    async def _inject(self, send: Callable) -> Response | str | None:
        delay, code = self.faults.draw()
        if delay:
            await asyncio.sleep(delay)
        if code is None:
            return None
        if code == "LOST_RESPONSE":
            return code  # processed first, dropped after (see _api)
        if code == "UNABLE_TO_LOCK_ROW":
            return Response(400, [{"message": "unable to obtain exclusive access to this record or 1 records",
                                   "errorCode": "UNABLE_TO_LOCK_ROW"}])
        if code == "SERVER_UNAVAILABLE":
            return Response(503, [{"message": "Server temporarily unavailable", "errorCode": "SERVER_UNAVAILABLE"}])
        if code == "500":
            return Response(500, b"Internal Server Error", content_type="text/plain;charset=UTF-8")
        if code == "REQUEST_LIMIT_EXCEEDED":
            return Response(403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
        if code == "TIMEOUT":
            try:
                await asyncio.sleep(self.faults.timeout_seconds)
            except asyncio.CancelledError:  # server shutting down while hanging: just drop
                await _drop(send)
                raise _Dropped from None
        await _drop(send)
        raise _Dropped

    async def _api(self, req: Request, m: re.Match[str], send: Callable) -> Response:
        major, minor = int(m.group(1)), m.group(2)
        version = f"{major}.{minor}"
        sub = (m.group(3) or "").strip("/")
        req.path = sub
        self._load_faults()
        lose_answer = False
        if self.faults.active and (not self.faults.writes_only or _writes(req)):
            injected = await self._inject(send)
            if isinstance(injected, Response):
                return injected
            lose_answer = injected == "LOST_RESPONSE"
        resp = await self._api_call(req, version, major, send)
        if lose_answer:
            await _drop(send)
            raise _Dropped
        return resp

    async def _api_call(self, req: Request, version: str, major: int, send: Callable) -> Response:
        if major < 20 or major > 99:
            return Response(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
        try:
            principal = self.authenticate(req)
        except ApiError as e:
            return error_response(e)
        try:
            used, limit = self.store.count_api_call()
        except RecordError as e:
            used, limit = self.store.api_usage()
            return Response(e.status, [e.as_api()], {"Sforce-Limit-Info": f"api-usage={used}/{limit}"})
        client = None
        opts = req.headers.get("sforce-call-options")
        if opts:
            cm = _CLIENT_RE.search(opts)
            if cm:
                client = cm.group(1)
        ctx = api.Ctx(self.store, principal, client, version, self)
        # Salesforce's REST API runs the active assignment rules unless the request says Sforce-Auto-Assign: FALSE.
        auto_assign = AUTO_ASSIGN.set(req.headers.get("sforce-auto-assign", "true").strip().lower() != "false")
        try:
            resp = self.router.dispatch(ctx, req)
        except ApiError as e:
            resp = error_response(e)
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            # another process (e.g. a running seed) holds the write lock: Salesforce's lock contention answer
            resp = Response(400, [{"message": "unable to obtain exclusive access to this record or 1 records",
                                   "errorCode": "UNABLE_TO_LOCK_ROW"}])
        except (RecordErrors, RecordError) as e:
            resp = api.record_errors_response(e, ctx)
        finally:
            AUTO_ASSIGN.reset(auto_assign)
        resp.headers["Sforce-Limit-Info"] = f"api-usage={used}/{limit}"
        return resp

    # ------------------------------------------------------------------------------------------ OAuth
    def _oauth_error(self, error: str, description: str, status: int = 400) -> Response:
        return Response(status, {"error": error, "error_description": description})

    def _token_response(self, user_id: str, app: dict[str, Any], refresh: bool, extra: bool) -> Response:
        token = self.store.issue_token(user_id, app["consumer_key"])
        id_url = f"{self.base_url}/id/{self.store.org_id}/{user_id}"
        body: dict[str, Any] = {"access_token": token}
        if refresh:
            body["refresh_token"] = self.store.issue_token(user_id, app["consumer_key"], kind="refresh")
        body.update({"scope": "api", "instance_url": self.base_url, "id": id_url, "token_type": "Bearer"})
        if extra:
            issued = str(int(time.time() * 1000))
            sig = base64.b64encode(hmac.new(app["consumer_secret"].encode(), (id_url + issued).encode(),
                                            hashlib.sha256).digest()).decode()
            body["issued_at"] = issued
            body["signature"] = sig
        return Response(200, body, {"Cache-Control": "no-cache,must-revalidate,max-age=0,no-store,private"})

    def _token(self, req: Request) -> Response:
        ctype = req.headers.get("content-type", "")
        if "json" in ctype:
            try:
                form = {str(k): str(v) for k, v in (parse_json(req.body) or {}).items()}
            except (ApiError, AttributeError):
                return self._oauth_error("invalid_request", "invalid request body")
        else:
            form = dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
            form.update({k: v for k, v in parse_qsl(req.query_string) if k not in form})
        basic = req.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                cid, _, csec = base64.b64decode(basic[6:]).decode().partition(":")
                form.setdefault("client_id", unquote(cid))
                form.setdefault("client_secret", unquote(csec))
            except (ValueError, UnicodeDecodeError):
                return self._oauth_error("invalid_client", "invalid client credentials")
        grant = form.get("grant_type", "")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt_bearer(form)
        if grant in ("password", "client_credentials", "refresh_token"):
            app = self.store.app(form.get("client_id", ""))
            if app is None:
                return self._oauth_error("invalid_client_id", "client identifier invalid")
            secret = form.get("client_secret")
            if (grant != "refresh_token" or secret is not None) and (
                    secret is None or not hmac.compare_digest(secret, app["consumer_secret"])):
                return self._oauth_error("invalid_client", "invalid client credentials")
            if grant == "password":
                uid = self.store.user_by_username(form.get("username", ""))
                if uid is None or self.store.principal_for_user(uid) is None or \
                        not self.store.check_password(uid, form.get("password", "")):
                    return self._oauth_error("invalid_grant", "authentication failure")
                return self._token_response(uid, app, refresh=True, extra=True)
            if grant == "client_credentials":
                uid = app.get("run_as_user_id")
                if not uid or self.store.principal_for_user(uid) is None:
                    return self._oauth_error("invalid_grant", "no client credentials user enabled")
                return self._token_response(uid, app, refresh=False, extra=True)
            info = self.store.token_info(form.get("refresh_token", ""), kind="refresh")
            if info is None or info[1] != app["consumer_key"]:
                return self._oauth_error("invalid_grant", "expired access/refresh token")
            if self.store.principal_for_user(info[0]) is None:
                return self._oauth_error("invalid_grant", "inactive user")
            return self._token_response(info[0], app, refresh=False, extra=True)
        if not grant:
            return self._oauth_error("unsupported_grant_type", "grant type not supported")
        return self._oauth_error("unsupported_grant_type", "grant type not supported")

    def _jwt_bearer(self, form: dict[str, str]) -> Response:
        assertion = form.get("assertion", "")
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return self._oauth_error("invalid_grant", "invalid assertion")
        app = self.store.app(str(claims.get("iss", "")))
        if app is None:
            return self._oauth_error("invalid_client_id", "client identifier invalid")
        if not app.get("cert_pem") or header.get("alg") != "RS256":
            return self._oauth_error("invalid_grant", "invalid assertion")
        try:
            jwt.decode(assertion, public_key_from_pem(app["cert_pem"]), algorithms=["RS256"],
                       options={"verify_exp": False, "verify_aud": False, "verify_iat": False,
                                "verify_nbf": False})
        except (jwt.PyJWTError, ValueError):
            return self._oauth_error("invalid_grant", "invalid assertion")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a.rstrip("/") == self.base_url.rstrip("/") for a in auds):
            return self._oauth_error("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        try:
            if exp is None:
                raise ValueError("no exp claim")
            exp_f = float(exp)  # int or numeric string
        except (TypeError, ValueError):
            return self._oauth_error("invalid_grant", "invalid assertion")
        if isinstance(exp, bool) or exp_f < time.time():
            return self._oauth_error("invalid_grant", "expired authorization code")
        uid = self.store.user_by_username(str(claims.get("sub", "")))
        if uid is None or self.store.principal_for_user(uid) is None:
            return self._oauth_error("invalid_grant", "user hasn't approved this consumer")
        return self._token_response(uid, app, refresh=False, extra=False)

    def _identity(self, req: Request) -> Response:
        p = self.authenticate(req)
        row = self.store.get("User", p.user_id, None)
        id_url = f"{self.base_url}/id/{self.store.org_id}/{p.user_id}"
        base = {
            "user_id": p.user_id, "organization_id": self.store.org_id, "preferred_username": p.username,
            "email": row.get("Email"), "name": row.get("Name"), "given_name": row.get("FirstName"),
            "family_name": row.get("LastName"), "active": True, "user_type": "STANDARD", "language": "en_US",
            "locale": "en_US", "zoneinfo": row.get("TimeZoneSidKey"),
            "urls": {"rest": f"{self.base_url}/services/data/v{{version}}/",
                     "sobjects": f"{self.base_url}/services/data/v{{version}}/sobjects/",
                     "query": f"{self.base_url}/services/data/v{{version}}/query/"},
        }
        if req.path.startswith("/id/"):
            base.update({"id": id_url, "asserted_user": True, "username": p.username,
                         "display_name": row.get("Name"), "nick_name": row.get("Alias")})
        else:
            base.update({"sub": id_url, "nickname": row.get("Alias"), "email_verified": True})
        return Response(200, base)

    def _revoke(self, req: Request) -> Response:
        form = dict(parse_qsl(req.body.decode("utf-8", "replace")))
        token = form.get("token") or dict(parse_qsl(req.query_string)).get("token")
        if token:
            with self.store.transaction():
                self.store.db.execute("UPDATE _tokens SET expires_at=0 WHERE token=?", (token,))
            self.store._tokens.pop(token, None)
        return Response(200, None)

    # ------------------------------------------------------------------------------------------ admin
    def _admin(self, req: Request) -> Response:
        p = self.authenticate(req)
        if p.profile != "System Administrator":
            raise ApiError(403, "INSUFFICIENT_ACCESS", "sandbox admin endpoints need a System Administrator token")
        client = None
        cm = _CLIENT_RE.search(req.headers.get("sforce-call-options", ""))
        if cm:
            client = cm.group(1)
        name = req.path[len("/_sandbox/"):].strip("/")
        store = self.store
        if name == "faults":
            if req.method == "GET":
                return Response(200, self.faults.to_dict())
            body = req.json() if req.body.strip() else {}
            if not isinstance(body, dict):
                raise ApiError(400, "INVALID_API_INPUT", "expected a JSON object")
            if body.get("reset_usage"):
                store.reset_usage()
            if body.get("reset"):
                new = Faults()
            else:
                merged = self.faults.to_dict() if body.get("merge") else {}
                merged.update({k: v for k, v in body.items() if k not in ("reset", "reset_usage", "merge")})
                try:
                    new = Faults.from_dict(merged)
                except FaultConfigError as e:
                    raise ApiError(400, "INVALID_API_INPUT", str(e)) from None
            self.set_faults(new)
            return Response(200, new.to_dict())
        if name == "assignment-rules":
            # The org's active assignment rules: {"Lead": "<user or queue id>"}; POST replaces them ({} = none).
            if req.method == "POST":
                body = req.json() if req.body.strip() else {}
                if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
                    raise ApiError(400, "INVALID_API_INPUT", "expected {\"<object>\": \"<owner id>\"}")
                store.assignment_rules = {str(k): v for k, v in body.items() if v}
            return Response(200, dict(store.assignment_rules))
        if req.method == "GET" and name == "changes":
            q = req.query
            try:
                since = int(q.get("since", "0") or 0)
                limit = min(int(q.get("limit", "1000") or 1000), 10000)
            except ValueError:
                raise ApiError(400, "INVALID_API_INPUT", "since and limit are integers") from None
            changes = store.changes(since, limit, q.get("object") or None)
            return Response(200, {"changes": changes, "last": changes[-1]["seq"] if changes else since})
        if req.method == "GET" and name == "usage":
            used, limit = store.api_usage()
            return Response(200, {"used": used, "max": limit})
        if req.method != "POST":
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{req.method}' not allowed. Allowed are POST")
        body = req.json() if req.body.strip() else {}
        if not isinstance(body, dict):
            raise ApiError(400, "INVALID_API_INPUT", "expected a JSON object")
        if name == "undelete":
            id_list = body.get("ids") or ([body["id"]] if body.get("id") else [])
            results = []
            for rid in id_list:
                try:
                    store.undelete(rid, p, client)
                    results.append({"id": rid, "success": True, "errors": []})
                except (RecordErrors, RecordError) as e:
                    errs = e.errors if isinstance(e, RecordErrors) else [e]
                    results.append({"id": rid, "success": False, "errors": [x.as_collection() for x in errs]})
            return Response(200, results)
        if name == "merge":
            master = body.get("masterId") or body.get("masterRecordId")
            losers = body.get("mergeIds") or body.get("recordIds") or []
            if not master or not isinstance(losers, list):
                raise ApiError(400, "INVALID_API_INPUT", "masterId and mergeIds are required")
            o = store.object(body["object"]) if body.get("object") else store.object_for_id(str(master))
            if o is None:
                raise ApiError(400, "INVALID_TYPE", "unknown object")
            store.merge(o, master, losers, p, client, body.get("fields"))
            return Response(200, {"id": master, "success": True, "mergedRecordIds": losers, "errors": []})
        if name == "convert-lead":
            lead_id = body.get("leadId")
            if not lead_id:
                raise ApiError(400, "INVALID_API_INPUT", "leadId is required")
            res = store.convert_lead(
                lead_id, p, account_id=body.get("accountId"), contact_id=body.get("contactId"),
                create_opportunity=bool(body.get("createOpportunity", False)),
                opportunity_name=body.get("opportunityName"),
                converted_status=body.get("convertedStatus") or "Closed - Converted",
                owner_id=body.get("ownerId"), client=client, person_account=bool(body.get("personAccount", False)))
            return Response(200, {**res, "success": True, "errors": []})
        if name == "late-commit":
            # Fault injection: a record whose transaction "committed late" — its SystemModstamp moves back by
            # ``seconds`` (a stamp a poll that already ran past it could not have seen).
            rid = str(body.get("id") or "")
            try:
                seconds = float(body.get("seconds", 10))
            except (TypeError, ValueError):
                raise ApiError(400, "INVALID_API_INPUT", "seconds must be a number") from None
            stamp = store.backdate(rid, seconds)
            return Response(200, {"id": rid, "SystemModstamp": stamp})
        if name == "expire-tokens":
            uid = store.user_by_username(body["username"]) if body.get("username") else None
            n = store.expire_tokens(uid)
            return Response(200, {"expired": n})
        if name == "reset-usage":
            store.reset_usage()
            return Response(200, {"used": 0})
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    def close(self) -> None:
        self.store.close()


class _Dropped(Exception):
    pass


async def _drop(send: Callable) -> None:
    """Close the client connection without an answer (uvicorn: the send callable's transport)."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is not None:
        transport.abort()
        await asyncio.sleep(0.01)
        return
    raise RuntimeError("cannot drop the connection with this server")



def _writes(req: Request) -> bool:
    """Whether an API call writes records (for faults limited to writes): any non-GET call except queries, and a
    composite call with a non-GET subrequest."""
    if req.method == "GET":
        return False
    if req.path.rstrip("/") == "composite":
        try:
            subs = req.json().get("compositeRequest") or []
        except Exception:  # a malformed body is answered by the route itself
            return False
        return any(str(s.get("method", "GET")).upper() != "GET" for s in subs if isinstance(s, dict))
    return not req.path.startswith(("query", "queryAll"))
