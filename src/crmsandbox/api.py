"""REST API handlers (``/services/data/vXX.X/...``).

Handlers are plain synchronous functions ``handler(ctx, req, **path_params) -> Response`` registered on a
:class:`Router`; the composite resource replays sub-requests through the same router in-process. Extra
resources (e.g. Bulk API 2.0) mount with ``router.add(methods, pattern, handler)`` where ``pattern`` is a
regex for the path below ``/services/data/vXX.X/`` (no leading or trailing slash).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from crmsandbox import ids as idlib
from crmsandbox.describe import DescribeCache
from crmsandbox.errors import ApiError, RecordError, RecordErrors, not_found
from crmsandbox.http import Request, Response
from crmsandbox.metadata import ObjectDef
from crmsandbox.store import Principal, Store
from crmsandbox.timeutil import parse_dt

if TYPE_CHECKING:
    from crmsandbox.server import SandboxServer

API_VERSIONS = [
    ("20.0", "Winter '11"), ("30.0", "Spring '14"), ("40.0", "Summer '17"), ("50.0", "Winter '21"),
    ("52.0", "Summer '21"), ("54.0", "Spring '22"), ("56.0", "Winter '23"), ("57.0", "Spring '23"),
    ("58.0", "Summer '23"), ("59.0", "Winter '24"), ("60.0", "Spring '24"), ("61.0", "Summer '24"),
    ("62.0", "Winter '25"),
]
MAX_COLLECTION = 200
MAX_RETRIEVE = 2000
MAX_SUBREQUESTS = 25
ROLLED_BACK = {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
               "message": "Record rolled back because not all records were valid and the request was using "
                          "AllOrNone header", "fields": []}


@dataclass
class Ctx:
    store: Store
    principal: Principal
    client: str | None
    version: str
    server: SandboxServer | None = None
    in_composite: bool = False


Handler = Callable[..., Response]
#: extensions add entries to ``GET limits/`` (e.g. the Bulk API's DailyBulkApiBatches) with these
LIMIT_HOOKS: list[Callable[[Ctx], dict[str, dict[str, int]]]] = []


class Router:
    def __init__(self) -> None:
        self.routes: list[tuple[re.Pattern[str], frozenset[str], Handler]] = []

    def add(self, methods: str | tuple[str, ...], pattern: str, handler: Handler) -> None:
        """Mount ``handler`` for ``methods`` on ``pattern`` (regex below the API root, named groups become
        keyword arguments, URL-decoded)."""
        if isinstance(methods, str):
            methods = (methods,)
        self.routes.append((re.compile("^" + pattern + "$"), frozenset(m.upper() for m in methods), handler))

    def dispatch(self, ctx: Ctx, req: Request) -> Response:
        path = req.path.strip("/")
        allowed: set[str] = set()
        for rx, methods, handler in self.routes:
            m = rx.match(path)
            if m is None:
                continue
            if req.method not in methods:
                allowed |= methods
                continue
            kwargs = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
            return handler(ctx, req, **kwargs)
        if allowed:
            allow = ",".join(sorted(allowed))
            raise ApiError(405, "METHOD_NOT_ALLOWED",
                           f"HTTP Method '{req.method}' not allowed. Allowed are {allow}", headers={"Allow": allow})
        raise not_found()


# ------------------------------------------------------------------------------------------------ helpers
def record_errors_response(e: RecordErrors | RecordError, ctx: Ctx) -> Response:
    errs = e.errors if isinstance(e, RecordErrors) else [e]
    status = errs[0].status
    if status == 300:
        o_urls = [f"/services/data/v{ctx.version}/sobjects/{_type_of(ctx, x)}/{x}" for x in errs[0].fields]
        return Response(300, o_urls)
    return Response(status, [x.as_api() for x in errs])


def _type_of(ctx: Ctx, record_id: str) -> str:
    o = ctx.store.object_for_id(record_id)
    return o.name if o else "sObject"


def _object(ctx: Ctx, name: str) -> ObjectDef:
    o = ctx.store.object(name)
    if o is None:
        raise not_found()
    return o


def _record_url(ctx: Ctx, o: ObjectDef, rid: str) -> str:
    return f"/services/data/v{ctx.version}/sobjects/{o.name}/{rid}"


def _call(ctx: Ctx, fn: Callable[[], Response]) -> Response:
    try:
        return fn()
    except (RecordErrors, RecordError) as e:
        return record_errors_response(e, ctx)


# ---------------------------------------------------------------------------------------------- resources
def resources(ctx: Ctx, req: Request) -> Response:
    base = f"/services/data/v{ctx.version}"
    names = ["tooling", "metadata", "eclair", "folders", "prechatForms", "contact-tracing", "jsonxform", "chatter",
             "tabs", "appMenu", "quickActions", "queryAll", "commerce", "wave", "iot", "analytics", "search",
             "smartdatadiscovery", "identity", "composite", "parameterizedSearch", "fingerprint", "theme", "nouns",
             "domino", "event", "serviceTemplates", "recent", "connect", "licensing", "limits", "process",
             "async-queries", "query", "match", "emailConnect", "compactLayouts", "knowledgeManagement",
             "sobjects", "actions", "support"]
    out = {n: f"{base}/{n}" for n in names}
    out["identity"] = f"{ctx.server.base_url if ctx.server else ''}/id/{ctx.store.org_id}/{ctx.principal.user_id}"
    return Response(200, out)


def _describe(ctx: Ctx) -> DescribeCache:
    """The server's describe cache (a private one when the handlers run without a server, e.g. in tests)."""
    if ctx.server is not None:
        return ctx.server.describe_cache
    return DescribeCache(ctx.store.registry)


def describe_global(ctx: Ctx, req: Request) -> Response:
    return Response(200, _describe(ctx).global_json(ctx.version))


def sobject_basic(ctx: Ctx, req: Request, type: str) -> Response:
    o = _object(ctx, type)
    if req.method == "POST":
        return create_record(ctx, req, o)
    return Response(200, {"objectDescribe": _describe(ctx).global_entry(o, ctx.version), "recentItems": []})


def describe_object(ctx: Ctx, req: Request, type: str) -> Response:
    o = _object(ctx, type)
    return Response(200, _describe(ctx).object_json(o, ctx.version))


def create_record(ctx: Ctx, req: Request, o: ObjectDef) -> Response:
    body = req.json()
    if not isinstance(body, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from START_ARRAY value")

    def go() -> Response:
        rid = ctx.store.create(o, body, ctx.principal, ctx.client)
        return Response(201, {"id": rid, "success": True, "errors": []},
                        {"Location": _record_url(ctx, o, rid)})

    return _call(ctx, go)


def record(ctx: Ctx, req: Request, type: str, id: str) -> Response:
    o = _object(ctx, type)
    if req.method == "GET":
        def get() -> Response:
            fields = None
            if req.query.get("fields"):
                fields = ctx.store.resolve_fields(o, req.query["fields"].split(","))
            return Response(200, ctx.store.get(o, id, ctx.principal, fields, ctx.version))
        return _call(ctx, get)
    if req.method == "PATCH":
        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from START_ARRAY value")

        def upd() -> Response:
            ctx.store.update(o, id, body, ctx.principal, ctx.client)
            return Response(204)
        return _call(ctx, upd)

    def dele() -> Response:
        ctx.store.delete(o, id, ctx.principal, ctx.client)
        return Response(204)
    return _call(ctx, dele)


def by_external_id(ctx: Ctx, req: Request, type: str, field: str, value: str) -> Response:
    o = _object(ctx, type)
    f = o.lookup(field)
    if f is None or not (f.external_id or f.id_lookup or f.name == "Id"):
        raise ApiError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {field}")
    if req.method == "PATCH":
        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from START_ARRAY value")

        def ups() -> Response:
            rid, created = ctx.store.upsert(o, f.name, value, body, ctx.principal, ctx.client)
            if created:
                return Response(201, {"id": rid, "success": True, "errors": [], "created": True},
                                {"Location": _record_url(ctx, o, rid)})
            if float(ctx.version) >= 46.0:
                return Response(200, {"id": rid, "success": True, "errors": [], "created": False},
                                {"Location": _record_url(ctx, o, rid)})
            return Response(204)
        return _call(ctx, ups)

    def find() -> Response:
        matches = ctx.store.find_by_field(o, f.name, value, ctx.principal)
        if not matches:
            raise RecordError("NOT_FOUND", "The requested resource does not exist", status=404)
        if len(matches) > 1:
            raise RecordErrors([RecordError("MULTIPLE_CHOICES", "several", matches, status=300)])
        if req.method == "DELETE":
            ctx.store.delete(o, matches[0], ctx.principal, ctx.client)
            return Response(204)
        fields = None
        if req.query.get("fields"):
            fields = ctx.store.resolve_fields(o, req.query["fields"].split(","))
        return Response(200, ctx.store.get(o, matches[0], ctx.principal, fields, ctx.version))
    return _call(ctx, find)


def _feed_dates(req: Request) -> tuple[Any, Any]:
    out = []
    for k in ("start", "end"):
        raw = req.query.get(k)
        if not raw:
            raise ApiError(400, "MISSING_ARGUMENT", f"{k} date is missing")
        dt = parse_dt(raw)
        if dt is None:
            raise ApiError(400, "INVALID_REPLICATION_DATE", f"Unable to parse {k} date: {raw}")
        out.append(dt)
    return out[0], out[1]


def updated(ctx: Ctx, req: Request, type: str) -> Response:
    o = _object(ctx, type)
    start, end = _feed_dates(req)
    return _call(ctx, lambda: Response(200, ctx.store.updated_ids(o, start, end, ctx.principal)))


def deleted(ctx: Ctx, req: Request, type: str) -> Response:
    o = _object(ctx, type)
    start, end = _feed_dates(req)
    return _call(ctx, lambda: Response(200, ctx.store.deleted_records(o, start, end, ctx.principal)))


# ------------------------------------------------------------------------------------------------ query
def _batch_size(req: Request) -> int:
    opts = req.headers.get("sforce-query-options", "")
    m = re.search(r"batchSize\s*=\s*(\d+)", opts, re.I)
    if not m:
        return 2000
    return max(200, min(2000, int(m.group(1))))


def _query(ctx: Ctx, req: Request, include_deleted: bool) -> Response:
    from crmsandbox.soql import SoqlError

    q = req.query.get("q")
    if q is None or not q.strip():
        raise ApiError(400, "MALFORMED_QUERY", "SOQL statement cannot be empty or null")
    try:
        page = ctx.store.query(q, ctx.principal, include_deleted=include_deleted, batch_size=_batch_size(req),
                               api_version=ctx.version)
    except SoqlError as e:
        raise ApiError(400, e.error_code, e.message) from None
    return Response(200, page)


def query(ctx: Ctx, req: Request) -> Response:
    return _query(ctx, req, False)


def query_all(ctx: Ctx, req: Request) -> Response:
    return _query(ctx, req, True)


def query_more(ctx: Ctx, req: Request, locator: str) -> Response:
    m = re.fullmatch(r"([A-Za-z0-9]{15,18})-(\d+)", locator)
    if m is None:
        raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    return _call(ctx, lambda: Response(200, ctx.store.query_more(m.group(1), int(m.group(2)), ctx.principal,
                                                                 ctx.version)))


# ----------------------------------------------------------------------------------------------- limits
def limits(ctx: Ctx, req: Request) -> Response:
    used, limit = ctx.store.api_usage()

    def lim(mx: int, rem: int | None = None) -> dict[str, int]:
        return {"Max": mx, "Remaining": mx if rem is None else rem}

    out = {
        "ActiveScratchOrgs": lim(3), "AnalyticsExternalDataSizeMB": lim(40960),
        "ConcurrentAsyncGetReportInstances": lim(200), "ConcurrentSyncReportRuns": lim(20),
        "DailyAnalyticsDataflowJobExecutions": lim(60), "DailyApiRequests": lim(limit, max(0, limit - used)),
        "DailyAsyncApexExecutions": lim(250000), "DailyBulkApiBatches": lim(15000),
        "DailyBulkV2QueryFileStorageMB": lim(976562), "DailyBulkV2QueryJobs": lim(10000),
        "DailyDurableGenericStreamingApiEvents": lim(10000), "DailyDurableStreamingApiEvents": lim(10000),
        "DailyGenericStreamingApiEvents": lim(10000), "DailyStandardVolumePlatformEvents": lim(10000),
        "DailyStreamingApiEvents": lim(10000), "DailyWorkflowEmails": lim(2000), "DataStorageMB": lim(1024),
        "FileStorageMB": lim(1024), "HourlyAsyncReportRuns": lim(1200), "HourlyDashboardRefreshes": lim(200),
        "HourlyODataCallout": lim(10000), "HourlyPublishedPlatformEvents": lim(50000),
        "HourlySyncReportRuns": lim(500), "MassEmail": lim(5000), "SingleEmail": lim(5000),
    }
    for hook in LIMIT_HOOKS:
        out.update(hook(ctx))
    return Response(200, out)


# ------------------------------------------------------------------------------------------ collections
def _collection_body(req: Request) -> tuple[bool, list[Any]]:
    body = req.json()
    if not isinstance(body, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of request from START_ARRAY value")
    records = body.get("records")
    if not isinstance(records, list):
        raise ApiError(400, "INVALID_FIELD", "records is required", fields=["records"])
    if len(records) > MAX_COLLECTION:
        raise ApiError(400, "EXCEEDED_ID_LIMIT",
                       f"record limit reached. cannot submit more than {MAX_COLLECTION} records into this call")
    return bool(body.get("allOrNone", False)), records


class _Rollback(Exception):
    pass


def _run_collection(ctx: Ctx, all_or_none: bool, items: list[Any],
                    op: Callable[[Any], dict[str, Any]]) -> Response:
    """Run ``op`` per item; each item in its own savepoint; allOrNone rolls everything back on any error."""
    results: list[dict[str, Any]] = []
    store = ctx.store
    try:
        with store.transaction():
            for item in items:
                try:
                    with store.transaction():
                        results.append(op(item))
                except (RecordErrors, RecordError) as e:
                    errs = e.errors if isinstance(e, RecordErrors) else [e]
                    res: dict[str, Any] = {"success": False,
                                           "errors": [x.as_collection() for x in errs]}
                    rid = e.record_id
                    if rid:
                        res["id"] = rid
                    results.append(res)
                except ApiError as e:
                    results.append({"success": False, "errors": [
                        {"statusCode": e.code, "message": e.message, "fields": e.fields or []}]})
            if all_or_none and any(not r["success"] for r in results):
                raise _Rollback
    except _Rollback:
        out = []
        for r in results:
            if r["success"]:
                r2 = {"id": r.get("id"), "success": False, "errors": [dict(ROLLED_BACK)]}
                if "created" in r:
                    r2["created"] = r["created"]
                out.append(r2)
            else:
                out.append(r)
        results = out
    return Response(200, results)


def _rec_object(ctx: Ctx, rec: Any) -> ObjectDef:
    if not isinstance(rec, dict):
        raise RecordError("JSON_PARSER_ERROR", "Expected a JSON object for the record")
    attrs = rec.get("attributes")
    t = attrs.get("type") if isinstance(attrs, dict) else None
    if not t:
        raise RecordError("INVALID_TYPE", "Must specify a type in the attributes of the sObject.")
    o = ctx.store.object(t)
    if o is None:
        raise RecordError("INVALID_TYPE", f"sObject type '{t}' is not supported.")
    return o


def collections(ctx: Ctx, req: Request) -> Response:
    store = ctx.store
    if req.method == "DELETE":
        raw = req.query.get("ids", "")
        id_list = [x for x in raw.split(",") if x]
        if not id_list:
            raise ApiError(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(id_list) > MAX_COLLECTION:
            raise ApiError(400, "EXCEEDED_ID_LIMIT",
                           f"record limit reached. cannot submit more than {MAX_COLLECTION} records into this call")
        all_or_none = req.query.get("allOrNone", "false").lower() == "true"

        def del_one(rid: str) -> dict[str, Any]:
            try:
                norm = idlib.normalize(rid)
                o = store.object_for_id(norm) if norm else None
                if o is None:
                    raise RecordError("MALFORMED_ID" if norm is None else "INVALID_CROSS_REFERENCE_KEY",
                                      f"malformed id {rid}" if norm is None else "invalid cross reference id")
                store.delete(o, rid, ctx.principal, ctx.client)
                return {"id": norm, "success": True, "errors": []}
            except (RecordErrors, RecordError) as e:
                e.record_id = idlib.normalize(rid) or rid
                raise
        return _run_collection(ctx, all_or_none, id_list, del_one)

    all_or_none, records = _collection_body(req)
    if req.method == "POST":
        def create_one(rec: Any) -> dict[str, Any]:
            o = _rec_object(ctx, rec)
            if any(k.lower() == "id" for k in rec):
                raise RecordError("INVALID_FIELD", "Record ID: cannot specify Id in an insert call", ["Id"])
            rid = store.create(o, rec, ctx.principal, ctx.client)
            return {"id": rid, "success": True, "errors": []}
        return _run_collection(ctx, all_or_none, records, create_one)

    def update_one(rec: Any) -> dict[str, Any]:
        o = _rec_object(ctx, rec)
        rid = next((v for k, v in rec.items() if k.lower() == "id"), None)
        if not rid:
            raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
        body = {k: v for k, v in rec.items() if k.lower() != "id"}
        try:
            store.update(o, rid, body, ctx.principal, ctx.client)
        except (RecordErrors, RecordError) as e:
            e.record_id = idlib.normalize(rid) or rid
            raise
        return {"id": idlib.normalize(rid), "success": True, "errors": []}
    return _run_collection(ctx, all_or_none, records, update_one)


def collections_typed(ctx: Ctx, req: Request, type: str) -> Response:
    """``POST|GET composite/sobjects/{Type}``: retrieve several records by id."""
    o = _object(ctx, type)
    if req.method == "GET":
        id_list = [x for x in req.query.get("ids", "").split(",") if x]
        fields_raw = [x for x in req.query.get("fields", "").split(",") if x]
    else:
        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of request from START_ARRAY value")
        id_list = body.get("ids") or []
        fields_raw = body.get("fields") or []
        if not isinstance(id_list, list) or not isinstance(fields_raw, list):
            raise ApiError(400, "JSON_PARSER_ERROR", "ids and fields must be lists")
    if not id_list:
        raise ApiError(400, "MISSING_ARGUMENT", "ids parameter is required")
    if not fields_raw:
        raise ApiError(400, "MISSING_ARGUMENT", "fields parameter is required")
    if len(id_list) > MAX_RETRIEVE:
        raise ApiError(400, "EXCEEDED_ID_LIMIT",
                       f"record limit reached. cannot submit more than {MAX_RETRIEVE} records into this call")
    try:
        fields = ctx.store.resolve_fields(o, fields_raw)
    except RecordError as e:
        raise ApiError(400, e.code, e.message) from None
    out: list[Any] = []
    for rid in id_list:
        if not isinstance(rid, str) or idlib.normalize(rid) is None:
            raise ApiError(400, "MALFORMED_ID", f"malformed id {rid}")
        try:
            out.append(ctx.store.get(o, rid, ctx.principal, fields, ctx.version))
        except RecordError:
            out.append(None)
    return Response(200, out)


def collections_upsert(ctx: Ctx, req: Request, type: str, field: str) -> Response:
    o = _object(ctx, type)
    f = o.lookup(field)
    if f is None or not (f.external_id or f.id_lookup or f.name == "Id"):
        raise ApiError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {field}")
    all_or_none, records = _collection_body(req)

    def upsert_one(rec: Any) -> dict[str, Any]:
        ro = _rec_object(ctx, rec)
        if ro.name != o.name:
            raise RecordError("INVALID_TYPE", f"sObject type '{ro.name}' does not match '{o.name}'")
        value = next((v for k, v in rec.items() if k.lower() == f.name.lower()), None)
        if value is None or value == "":
            raise RecordError("MISSING_ARGUMENT", f"{f.name} not specified", [f.name])
        body = {k: v for k, v in rec.items() if k.lower() != f.name.lower()}
        try:
            rid, created = ctx.store.upsert(o, f.name, value, body, ctx.principal, ctx.client)
        except (RecordErrors, RecordError) as e:
            errs = e.errors if isinstance(e, RecordErrors) else [e]
            if errs[0].status == 300:
                raise RecordError("DUPLICATE_EXTERNAL_ID",
                                  f"{f.name}: more than one record found for external id field: "
                                  f"[{', '.join(errs[0].fields)}]", [f.name]) from None
            raise
        return {"id": rid, "success": True, "errors": [], "created": created}
    return _run_collection(ctx, all_or_none, records, upsert_one)


# -------------------------------------------------------------------------------------------- composite
_REF_RE = re.compile(r"@\{([A-Za-z0-9_]+)((?:\.[A-Za-z0-9_]+|\[\d+\])*)\}")


class _Unresolved(Exception):
    pass


def _resolve_ref(results: dict[str, Any], name: str, path: str) -> Any:
    if name not in results:
        raise _Unresolved(name)
    cur = results[name]
    for part in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        key, idx = part
        try:
            if key:
                if isinstance(cur, dict):
                    match = next((k for k in cur if k.lower() == key.lower()), None)
                    if match is None:
                        raise KeyError(key)
                    cur = cur[match]
                else:
                    raise KeyError(key)
            else:
                cur = cur[int(idx)]
        except (KeyError, IndexError, TypeError):
            raise _Unresolved(name + path) from None
    return cur


def _substitute(value: Any, results: dict[str, Any], in_url: bool = False) -> Any:
    if isinstance(value, str):
        m = _REF_RE.fullmatch(value)
        if m and not in_url:
            return _resolve_ref(results, m.group(1), m.group(2))

        def repl(mm: re.Match[str]) -> str:
            v = _resolve_ref(results, mm.group(1), mm.group(2))
            s = v if isinstance(v, str) else json.dumps(v)
            return quote(s, safe="") if in_url and "?" in value[: mm.start()] else s
        return _REF_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, results) for v in value]
    return value


def composite(ctx: Ctx, req: Request) -> Response:
    body = req.json()
    if not isinstance(body, dict) or not isinstance(body.get("compositeRequest"), list):
        raise ApiError(400, "INVALID_API_INPUT", "compositeRequest is required")
    subs = body["compositeRequest"]
    if len(subs) > MAX_SUBREQUESTS:
        raise ApiError(400, "INVALID_API_INPUT", f"Exceeded max number of subrequests : {MAX_SUBREQUESTS}")
    heavy = 0
    seen: set[str] = set()
    for s in subs:
        if not isinstance(s, dict) or not s.get("method") or not s.get("url") or not s.get("referenceId"):
            raise ApiError(400, "INVALID_API_INPUT", "Each subrequest needs method, url and referenceId")
        rid = s["referenceId"]
        if not isinstance(rid, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", rid):
            raise ApiError(400, "INVALID_API_INPUT", f"Invalid referenceId: {rid}")
        if rid in seen:
            raise ApiError(400, "INVALID_API_INPUT", f"Duplicate referenceId: {rid}")
        seen.add(rid)
        u = str(s["url"])
        if "/query" in u or "/queryAll" in u or "/composite/sobjects" in u:
            heavy += 1
    if heavy > 5:
        raise ApiError(400, "INVALID_API_INPUT", "Exceeded max number of query and collection subrequests : 5")
    all_or_none = bool(body.get("allOrNone", False))
    results: dict[str, Any] = {}
    out: list[dict[str, Any]] = []
    halted = [{"errorCode": "PROCESSING_HALTED",
               "message": "The transaction was rolled back since another operation in the same transaction failed."}]
    sub_ctx = Ctx(ctx.store, ctx.principal, ctx.client, ctx.version, ctx.server, in_composite=True)
    failed = False
    try:
        with ctx.store.transaction() if all_or_none else contextlib.nullcontext():
            for s in subs:
                ref = s["referenceId"]
                if failed and all_or_none:
                    out.append({"body": halted, "httpHeaders": {}, "httpStatusCode": 400, "referenceId": ref})
                    continue
                try:
                    url = _substitute(str(s["url"]), results, in_url=True)
                    sub_body = _substitute(s.get("body"), results) if "body" in s else None
                except _Unresolved as e:
                    failed = True
                    out.append({"body": [{"errorCode": "PROCESSING_HALTED",
                                          "message": f"Invalid reference specified. No value for {e} found in "
                                                     f"{ref}. Provided referenceId ({ref}) must be the referenceId "
                                                     f"of a previous successful request."}],
                                "httpHeaders": {}, "httpStatusCode": 400, "referenceId": ref})
                    continue
                resp = _subrequest(sub_ctx, str(s["method"]).upper(), url, sub_body,
                                   s.get("httpHeaders") or {})
                payload = json.loads(resp.body) if isinstance(resp.body, bytes) and resp.body else resp.body
                if resp.status < 300:
                    results[ref] = payload
                else:
                    failed = True
                out.append({"body": payload, "httpHeaders": dict(resp.headers), "httpStatusCode": resp.status,
                            "referenceId": ref})
            if failed and all_or_none:
                raise _Rollback
    except _Rollback:
        for item in out:
            if item["httpStatusCode"] < 300:
                item.update({"body": halted, "httpHeaders": {}, "httpStatusCode": 400})
    return Response(200, {"compositeResponse": out})


def _subrequest(ctx: Ctx, method: str, url: str, body: Any, headers: dict[str, str]) -> Response:
    m = re.match(r"^/services/data/v(\d+\.\d)(/[^?]*)?(?:\?(.*))?$", url)
    if m is None:
        return Response(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
    version, path, qs = m.group(1), m.group(2) or "", m.group(3) or ""
    sub = Ctx(ctx.store, ctx.principal, ctx.client, version, ctx.server, in_composite=True)
    req = Request(method, path, qs, {k.lower(): str(v) for k, v in headers.items()},
                  json.dumps(body).encode() if body is not None else b"")
    if path.strip("/") == "composite":
        return Response(400, [{"errorCode": "INVALID_API_INPUT", "message": "composite cannot be nested"}])
    try:
        return ROUTER.dispatch(sub, req)
    except ApiError as e:
        return Response(e.status, e.body(), dict(e.headers))


# -------------------------------------------------------------------------------------------- routing
def build_router() -> Router:
    r = Router()
    r.add("GET", r"", resources)
    r.add("GET", r"sobjects", describe_global)
    r.add(("GET", "POST"), r"sobjects/(?P<type>[^/]+)", sobject_basic)
    r.add("GET", r"sobjects/(?P<type>[^/]+)/describe", describe_object)
    r.add("GET", r"sobjects/(?P<type>[^/]+)/updated", updated)
    r.add("GET", r"sobjects/(?P<type>[^/]+)/deleted", deleted)
    r.add(("GET", "PATCH", "DELETE"), r"sobjects/(?P<type>[^/]+)/(?P<id>[^/]+)", record)
    r.add(("GET", "PATCH", "DELETE"), r"sobjects/(?P<type>[^/]+)/(?P<field>[^/]+)/(?P<value>[^/]+)",
          by_external_id)
    r.add("GET", r"query", query)
    r.add("GET", r"queryAll", query_all)
    r.add("GET", r"(?:query|queryAll)/(?P<locator>[^/]+)", query_more)
    r.add("GET", r"limits", limits)
    r.add(("POST", "PATCH", "DELETE"), r"composite/sobjects", collections)
    r.add(("GET", "POST"), r"composite/sobjects/(?P<type>[^/]+)", collections_typed)
    r.add("PATCH", r"composite/sobjects/(?P<type>[^/]+)/(?P<field>[^/]+)", collections_upsert)
    r.add("POST", r"composite", composite)
    return r


ROUTER = build_router()
