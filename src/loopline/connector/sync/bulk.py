"""The initial import through Bulk API 2.0 query jobs, for backlogs above ``bulk_threshold`` (issue #5 item 5;
[R10], [R22], [R25], [R26], [R27]).

1. Before any job, every object gets a :class:`~loopline.connector.models.BulkImportCheckpoint` holding the watermark
   (import start minus the overlap), and its ``Watermark`` row moves back there unless it is already earlier: the
   first poll after the import reads from there and catches what changed while the import ran ([R22]).
2. Per object one query job (``SELECT <system + mapped fields> FROM Lead``); its id goes into the checkpoint.
3. Result pages (``maxRecords`` + ``Sforce-Locator``) are fetched and parsed one ahead in a background thread while the
   current page is applied in chunks through the REST pull's own :func:`pull.apply_records`. Each chunk commits in
   one transaction with the checkpoint (page locator, rows of the page done, counters) and the job's progress, so a
   worker killed at any moment resumes after the last committed chunk: nothing applied twice, nothing skipped ([R25]).
4. Budget ([R27]): before each page bulk work must be allowed (under 90% of the share, no limit pause); otherwise the
   import stops with :class:`BulkDeferred`, the checkpoint kept for the next run. ``REQUEST_LIMIT_EXCEEDED`` pauses
   the connector first. Transient errors (5xx, ``UNABLE_TO_LOCK_ROW``, timeouts) are retried with backoff.

Rows Loopline rejects go to the error queue through the same apply path as polled records ([R26]).

The other direction, large push backlogs ([R23]): :func:`push_jobs` writes what ``push`` planned through ingest
jobs (updates by Id, creates as upserts on the external id) and hands the per-record results back to ``push``.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from django.db import transaction
from django.utils import timezone
from simple_salesforce.util import call_salesforce

from loopline.platform import tasks as platform_tasks
from loopline.platform.models import Job

from ..engine import BatchLimits, CrmRecord, OutboxItem, RunCounters, WriteOp, plan_push
from ..engine.batching import BulkJob, CoalescedWrite, WriteOutcome, bulk_outcomes
from ..engine.budget import ApiUsage, decide_budget
from ..engine.capture import build_soql, select_fields
from ..engine.errors import CrmError, ErrorCategory, classify
from ..engine.model import id18
from ..models import BulkImportCheckpoint, Connector
from ..models import Watermark as WatermarkRow
from ..salesforce.client import CrmApiError, CrmClient
from . import budget, pull, related, runs
from .context import SyncContext

logger = logging.getLogger("loopline.connector.bulk")

PAGE_RECORDS = 50_000  # rows per result page (Salesforce's own default for maxRecords)
CHUNK = pull.CHUNK  # rows per transaction (and per checkpoint)
JOB_WAIT_SECONDS = 4 * 3600
TRANSIENT_ATTEMPTS = 6
GONE = frozenset({"NOT_FOUND", "BULK_JOB_FAILED", "INVALIDLOCATOR", "INVALID_QUERY_LOCATOR"})
_BOOLEAN = frozenset({"boolean"})
_INTEGER = frozenset({"int"})
_FLOAT = frozenset({"double", "currency", "percent"})
Checkpoint = BulkImportCheckpoint


class BulkDeferred(Exception):
    """Bulk work must wait (API budget, limit pause, [R27]); the checkpoint stays and the next run resumes."""

    def __init__(self, reason: str, until=None):
        super().__init__(reason)
        self.reason = reason
        self.until = until


class BulkConflict(Exception):
    """Another worker moved this import's checkpoint: this one stops without applying anything."""


# --- The Bulk API 2.0 calls (simple-salesforce's session: token re-mint, error mapping, call counting) -------------


class BulkQueries:
    def __init__(self, client: CrmClient):
        self.client = client

    def create(self, soql: str) -> dict:
        return self.client.restful(
            "jobs/query",
            method="POST",
            json={
                "operation": "query",
                "query": soql,
                "contentType": "CSV",
                "columnDelimiter": "COMMA",
                "lineEnding": "LF",
            },
        )

    def info(self, job_id: str) -> dict:
        return self.client.restful(f"jobs/query/{job_id}")

    def results(self, job_id: str, locator: str, max_records: int) -> tuple[str, str]:
        """One CSV page and the next page's locator ('' when this was the last)."""
        params: dict[str, Any] = {"maxRecords": max_records}
        if locator:
            params["locator"] = locator

        def read(response) -> tuple[str, str]:
            following = response.headers.get("Sforce-Locator", "")
            return response.content.decode("utf-8"), "" if following in ("", "null") else following

        return _get_csv(self.client, f"query/{job_id}/results", read, params)


class BulkIngest:
    """Bulk API 2.0 ingest jobs, through the same session as :class:`BulkQueries`."""

    def __init__(self, client: CrmClient):
        self.client = client

    def create(self, body: dict[str, Any]) -> dict:
        return self.client.restful("jobs/ingest", method="POST", json=body)

    def upload(self, job_id: str, data: str) -> None:
        timeout = self.client.config.timeout

        def put(sf) -> None:
            call_salesforce(
                f"{sf.bulk2_url}ingest/{job_id}/batches",
                "PUT",
                sf.session,
                {**sf.headers, "Content-Type": "text/csv", "Accept": "application/json"},
                data=data.encode("utf-8"),
                timeout=timeout,
            )

        self.client.call(put)

    def close(self, job_id: str) -> dict:
        return self.client.restful(f"jobs/ingest/{job_id}", method="PATCH", json={"state": "UploadComplete"})

    def abort(self, job_id: str) -> dict:
        return self.client.restful(f"jobs/ingest/{job_id}", method="PATCH", json={"state": "Aborted"})

    def info(self, job_id: str) -> dict:
        return self.client.restful(f"jobs/ingest/{job_id}")

    def results(self, job_id: str, which: str) -> list[dict[str, str]]:
        """``successfulResults`` / ``failedResults`` rows as dicts (``sf__Id``, ``sf__Created``/``sf__Error`` and
        the uploaded columns)."""
        text = _get_csv(self.client, f"ingest/{job_id}/{which}/", lambda r: r.content.decode("utf-8-sig"))
        return list(csv.DictReader(io.StringIO(text, newline="")))


def _get_csv[T](client: CrmClient, path: str, read: Callable[[Any], T], params: dict[str, Any] | None = None) -> T:
    """GET a Bulk API 2.0 CSV resource (``path`` below the bulk base URL) through the client's session; ``read``
    turns the response into the result inside the client's error mapping."""
    timeout = client.config.timeout

    def fetch(sf) -> T:
        response = call_salesforce(f"{sf.bulk2_url}{path}", "GET", sf.session, {**sf.headers, "Accept": "text/csv"},
                                   params=params, timeout=timeout)
        return read(response)

    return client.call(fetch)


def _retrying[T](fn: Callable[[], T]) -> T:
    """Retry transient CRM errors with jittered backoff ([R26]); anything else propagates."""
    for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
        try:
            return fn()
        except CrmApiError as exc:
            if attempt == TRANSIENT_ATTEMPTS or not classify(exc.code, exc.status, exc.message).transient:
                raise
            delay = min(10.0, 0.25 * 2**attempt)
            time.sleep(delay / 2 + random.random() * delay / 2)
    raise AssertionError("unreachable")


# --- CSV rows → CRM records -----------------------------------------------------------------------------------------


def column_types(ctx: SyncContext, object_type: str, columns: Sequence[str]) -> dict[str, str]:
    """The describe type of every selected column (parent paths are read as text)."""
    described = ctx.describe(object_type)
    out = {}
    for name in columns:
        meta = None if "." in name else described.get(name)
        out[name] = meta.type if meta is not None else "string"
    return out


def _typed(value: str, kind: str) -> Any:
    """A CSV cell as the REST API's JSON would have it: empty is null, booleans and numbers typed."""
    if kind in _BOOLEAN:
        return value.lower() == "true"
    if value == "":
        return None
    try:
        if kind in _INTEGER:
            return int(value)
        if kind in _FLOAT:
            return float(value)
    except ValueError:
        return value
    return value


def parse_page(object_type: str, text: str, types: dict[str, str]) -> list[CrmRecord]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        return []
    kinds = [types.get(name, "string") for name in header]
    records = []
    for row in reader:
        if not row:
            continue
        raw = {name: _typed(cell, kind) for name, cell, kind in zip(header, row, kinds, strict=False)}
        records.append(CrmRecord.from_api(object_type, raw))
    return records


# --- The import -------------------------------------------------------------------------------------------------------


def pending(connector: Connector) -> bool:
    """An interrupted bulk import waits to be resumed."""
    return Checkpoint.objects.filter(connector=connector, state=Checkpoint.State.RUNNING).exists()


def _record_watermarks(connector: Connector, objects: Sequence[str]) -> None:
    """Step 1: the watermark is recorded before any job exists ([R22])."""
    mark = timezone.now() - pull.OVERLAP
    with transaction.atomic():
        for object_type in objects:
            Checkpoint.objects.update_or_create(
                connector=connector,
                object_type=object_type,
                defaults={
                    "state": Checkpoint.State.RUNNING,
                    "watermark_at": mark,
                    "job_id": "",
                    "locator": "",
                    "page_offset": 0,
                    "total": 0,
                    "done": 0,
                    "pages": 0,
                    "counters": {},
                    "finished_at": None,
                },
            )
            row, _ = WatermarkRow.objects.select_for_update().get_or_create(
                connector=connector, object_type=object_type
            )
            if row.modstamp is None or row.modstamp > mark:
                row.modstamp = mark
                row.save(update_fields=["modstamp"])


def _check_budget(ctx: SyncContext, what: str = "bulk import") -> None:
    """[R27]: bulk work only below 90% of the connector's share and outside a limit pause."""
    connector = ctx.connector
    now = timezone.now()
    fresh = Connector.objects.filter(pk=connector.pk).values_list("paused_until", "api_usage").first()
    paused_until, usage_row = fresh if fresh is not None else (None, None)
    usage_row = usage_row or {}
    seen = ctx.client.usage
    usage = (
        ApiUsage(seen.used or 0, seen.max)
        if seen.max
        else ApiUsage(int(usage_row["used"]), int(usage_row["max"]))
        if usage_row.get("max")
        else None
    )
    counter = budget.counter_of(connector)
    decision = decide_budget(
        usage,
        counter.total(now) + ctx.calls,
        now,
        budget.policy_for(connector),
        counter=counter,
        paused_until=paused_until,
    )
    if not decision.allows_bulk:
        raise BulkDeferred(f"{what} deferred: {decision.reason}", decision.until)


def _limit_stop(ctx: SyncContext, exc: CrmApiError, what: str = "bulk import") -> BulkDeferred:
    until = budget.pause_for_limit(ctx.connector, exc.message)
    return BulkDeferred(f"{what} stopped by the CRM's API limit until {until:%H:%M} UTC", until)


def _call(ctx: SyncContext, fn: Callable[[], Any], what: str = "bulk import") -> Any:
    try:
        return _retrying(fn)
    except CrmApiError as exc:
        if classify(exc.code, exc.status, exc.message).category is ErrorCategory.LIMIT:
            raise _limit_stop(ctx, exc, what) from exc
        raise


def _wait_for_job(
    ctx: SyncContext,
    api: BulkQueries | BulkIngest,
    job_id: str,
    job,
    *,
    kind: str = "query",
    waiting: Callable[[], None] | None = None,
    wait_seconds: float = JOB_WAIT_SECONDS,
    what: str = "bulk import",
) -> dict:
    delay, deadline = 0.2, time.monotonic() + wait_seconds
    while True:
        info = _call(ctx, lambda: api.info(job_id), what)
        state = info.get("state")
        if state == "JobComplete":
            return info
        if state in ("Failed", "Aborted"):
            raise CrmApiError(
                "BULK_JOB_FAILED",
                f"Bulk {kind} job {job_id} {state.lower()}: {info.get('errorMessage') or 'no details'}",
            )
        if time.monotonic() > deadline:
            raise CrmApiError(
                "BULK_JOB_TIMEOUT",
                f"Bulk {kind} job {job_id} still {state} after {int(wait_seconds // 60)} min",
            )
        if job is not None:
            platform_tasks.heartbeat(job)
        if waiting is not None:
            waiting()
        time.sleep(delay)
        delay = min(2.0, delay * 1.5)


def _start_job(ctx: SyncContext, api: BulkQueries, cp: Checkpoint) -> None:
    fields = select_fields(cp.object_type, ctx.mappings)
    # No ORDER BY: the watermark was recorded before the job, so the order of the rows does not matter.
    soql = build_soql(cp.object_type, fields, None, conditions=ctx.soql_filter(cp.object_type), ordered=False)
    created = _call(ctx, lambda: api.create(soql))
    cp.job_id, cp.locator, cp.page_offset, cp.done, cp.pages = str(created["id"]), "", 0, 0, 0
    cp.save(update_fields=["job_id", "locator", "page_offset", "done", "pages", "updated_at"])


def _pages(
    ctx: SyncContext, api: BulkQueries, cp: Checkpoint, page_records: int, types: dict[str, str]
) -> Iterator[tuple[str, str, list[CrmRecord]]]:
    """``(locator, next locator, records)`` from the checkpoint's page on; the next page is fetched, parsed and
    pre-derived ([SyncContext.precompute]) in a background thread (no database there) while this one is applied."""
    job_id, object_type = cp.job_id, cp.object_type

    def fetch(locator: str) -> tuple[str, str, list[CrmRecord]]:
        text, following = _retrying(lambda: api.results(job_id, locator, page_records))
        records = parse_page(object_type, text, types)
        ctx.precompute(records)
        return locator, following, records

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-bulk-page") as pool:
        _check_budget(ctx)
        future: Future[tuple[str, str, list[CrmRecord]]] | None = pool.submit(fetch, cp.locator)
        while future is not None:
            try:
                locator, following, records = future.result()
            except CrmApiError as exc:
                if classify(exc.code, exc.status, exc.message).category is ErrorCategory.LIMIT:
                    raise _limit_stop(ctx, exc) from exc
                raise
            future = None
            if following:
                _check_budget(ctx)
                future = pool.submit(fetch, following)
            yield locator, following, records


def _apply_page(
    ctx: SyncContext,
    cp: Checkpoint,
    locator: str,
    following: str,
    records: list[CrmRecord],
    run_counters: RunCounters,
    job,
    after_chunk: Callable[[Checkpoint], None] | None,
) -> None:
    if locator != cp.locator:  # a page already done (cannot happen with an intact checkpoint; be safe)
        return
    start = cp.page_offset
    if start >= len(records) and records:
        start = len(records)
    positions = list(range(start, len(records), CHUNK)) or [start]
    for pos in positions:
        chunk = records[pos : pos + CHUNK]
        end = pos + len(chunk)
        with transaction.atomic():
            # The checkpoint row is the import's lock: a second worker on the same import (a retried task next to
            # a live one) waits here, then sees the position moved and stops instead of applying rows twice.
            current = Checkpoint.objects.select_for_update().get(pk=cp.pk)
            if (current.job_id, current.locator, current.page_offset) != (
                cp.job_id,
                cp.locator,
                cp.page_offset,
            ):
                raise BulkConflict(f"another worker is running the bulk import of {cp.object_type}")
            counters = RunCounters()
            counters.fetched += len(chunk)
            pull.apply_records(ctx, [r for r in chunk if not r.is_deleted], counters, explicit=True)
            total = RunCounters.from_dict(cp.counters or {}).merge(counters)
            cp.counters = total.as_dict()
            cp.done += len(chunk)
            last = end >= len(records)
            if last:
                cp.locator, cp.page_offset, cp.pages = following, 0, cp.pages + 1
                if not following:
                    cp.state, cp.finished_at = Checkpoint.State.DONE, timezone.now()
            else:
                cp.page_offset = end
            cp.save()
            if job is not None:
                platform_tasks.advance(job, len(chunk) - counters.failed, failed=counters.failed)
            if after_chunk is not None:
                after_chunk(cp)
        run_counters.merge(counters)
        ctx.forget_precomputed(chunk)
        pull.LOAD_STATS.added(len(chunk))


def _import_object(
    ctx: SyncContext,
    cp: Checkpoint,
    run_counters: RunCounters,
    job,
    *,
    page_records: int,
    after_chunk: Callable[[Checkpoint], None] | None,
) -> None:
    api = BulkQueries(ctx.client)
    _check_budget(ctx)
    if not cp.job_id:
        _start_job(ctx, api, cp)
    types = column_types(ctx, cp.object_type, select_fields(cp.object_type, ctx.mappings))
    for attempt in (1, 2):
        try:
            info = _wait_for_job(ctx, api, cp.job_id, job)
            cp.total = int(info.get("numberRecordsProcessed") or 0)
            cp.save(update_fields=["total", "updated_at"])
            for locator, following, records in _pages(ctx, api, cp, page_records, types):
                _apply_page(ctx, cp, locator, following, records, run_counters, job, after_chunk)
            break
        except CrmApiError as exc:
            if attempt == 2 or exc.code not in GONE:
                raise
            # The job or its results are gone (kept 7 days) or it failed: a new job; the rows applied already are
            # matched again, not duplicated ([R25]).
            logger.warning(
                "bulk job %s for %s unusable (%s); starting a new one", cp.job_id, cp.object_type, exc
            )
            _start_job(ctx, api, cp)
    if cp.state != Checkpoint.State.DONE:  # an empty result set: no chunk closed it
        cp.state, cp.finished_at = Checkpoint.State.DONE, timezone.now()
        cp.save(update_fields=["state", "finished_at", "updated_at"])


def bulk_initial_import(
    connector: Connector,
    job=None,
    *,
    client=None,
    objects: Sequence[str] | None = None,
    page_records: int | None = None,
    after_chunk: Callable[[Checkpoint], None] | None = None,
) -> RunCounters:
    """Import every live Lead and Contact (and person account, when synced) through Bulk API 2.0, or resume the interrupted import. Returns the whole
    import's counters (earlier, interrupted runs included). ``after_chunk`` is called inside each chunk's
    transaction (tests and the benchmark interrupt the import there)."""
    ctx = SyncContext.load(connector, client)
    every_object = objects is None
    objects = ctx.polled_objects if objects is None else tuple(objects)  # [R14] person accounts when on
    if not pending(connector):
        _record_watermarks(connector, objects)
    if job is not None:  # a resumed import (same job or a new one) shows what earlier runs already applied
        done = failed = 0
        for cp in Checkpoint.objects.filter(connector=connector, object_type__in=objects):
            failed_here = int((cp.counters or {}).get("failed") or 0)
            done, failed = done + cp.done - failed_here, failed + failed_here
        Job.objects.filter(pk=getattr(job, "pk", job)).update(
            done=done, failed=failed, heartbeat_at=timezone.now()
        )
    with runs.sync_run(connector, "initial_import", client=ctx.client) as run:
        for object_type in objects:
            found = Checkpoint.objects.filter(connector=connector, object_type=object_type).first()
            if found is None:  # an object added to a resumed import
                _record_watermarks(connector, [object_type])
            cp = found or Checkpoint.objects.get(connector=connector, object_type=object_type)
            if cp.state == Checkpoint.State.DONE:
                continue
            _import_object(
                ctx, cp, run.counters, job, page_records=page_records or PAGE_RECORDS, after_chunk=after_chunk
            )
    if every_object:  # then the existing contact roles, deals and campaign members ([R38], [R40])
        related.initial_import(connector, client=ctx.client)
    total = RunCounters()
    for cp in Checkpoint.objects.filter(connector=connector, object_type__in=objects):
        total.merge(RunCounters.from_dict(cp.counters or {}))
    return total


def progress(connector: Connector) -> dict[str, Any]:
    """Done/total per object of the current (or last) bulk import."""
    return {
        cp.object_type: {"state": cp.state, "done": cp.done, "total": cp.total, "job_id": cp.job_id}
        for cp in Checkpoint.objects.filter(connector=connector).order_by("object_type")
    }


# --- Loopline → CRM: large push backlogs through ingest jobs ([R23], [R25], [R26], [R27]) ----------------------------

PUSH_ROWS = 10_000  # rows per ingest job, and the most outbox entries one bulk drain claims
PUSH_WAIT_SECONDS = 1800  # a job still running after this is aborted; its writes go through collections
PUSH_APPLY_CHUNK = 1000  # outcomes applied per transaction
LEASE_EVERY = 60.0  # seconds between lease extensions while a job runs
PUSH = "bulk push"


@dataclass(frozen=True)
class IngestJob(BulkJob):
    """An ingest job. Creates are upserts on ``upsert_field`` (the external id, [R25]): a job re-sent after a
    crash finds the records the first one made, and its results map back to prospects by that column."""

    upsert_field: str | None = None

    def job_body(self) -> dict[str, Any]:
        body = super().job_body()
        if self.upsert_field:
            body.update(operation="upsert", externalIdFieldName=self.upsert_field)
        return body


def upsert_outcomes(
    job: IngestJob, successful: Iterable[Mapping[str, str]], failed: Iterable[Mapping[str, str]]
) -> list[WriteOutcome]:
    """Results of an upsert job, matched to its writes by the external-id column (the CRM echoes every uploaded
    column). Writes in neither list were not processed: a transient ``UNPROCESSED`` failure (retried)."""
    field_name = str(job.upsert_field)

    def key(row: Mapping[str, str]) -> str:
        for name, value in row.items():
            if name and name.lower() == field_name.lower():
                return value or ""
        return ""

    ok = {key(r): r for r in successful}
    bad = {key(r): r for r in failed}
    outcomes = []
    for w in job.writes:
        value = str(w.payload.get(field_name) or "")
        if value and value in ok:
            row = ok[value]
            created = (row.get("sf__Created") or "").lower() == "true"
            outcomes.append(WriteOutcome(w, True, id18(row.get("sf__Id") or ""), created))
        elif value and value in bad:
            error = CrmError.from_bulk(bad[value].get("sf__Error") or "UNKNOWN_ERROR:no details")
            outcomes.append(WriteOutcome(w, False, None, errors=(error,)))
        else:
            unprocessed = CrmError("UNPROCESSED", "not processed by the bulk job")
            outcomes.append(WriteOutcome(w, False, None, errors=(unprocessed,)))
    return outcomes


def _blank_as_null(item: OutboxItem) -> OutboxItem:
    # An empty CSV cell means "leave unchanged"; collections send "" to clear a field, so do the same with #N/A.
    if not any(v == "" for v in item.payload.values()):
        return item
    return replace(item, payload={k: (None if v == "" else v) for k, v in item.payload.items()})


def _abort_quietly(api: BulkIngest, job_id: str) -> None:
    try:
        api.abort(job_id)
    except CrmApiError:  # already finished or gone: nothing to stop
        logger.info("could not abort ingest job %s", job_id, exc_info=True)


def _start_ingest(ctx: SyncContext, api: BulkIngest, job: IngestJob) -> str:
    """Create the job, upload the CSV, close it. A failed step aborts the job and the whole sequence is retried
    with a new one: an upload is never repeated inside one job (that would send every row twice)."""
    body, data = job.job_body(), job.csv()
    for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
        job_id = ""
        try:
            job_id = str(api.create(body)["id"])
            api.upload(job_id, data)
            api.close(job_id)
            return job_id
        except CrmApiError as exc:
            if job_id:
                _abort_quietly(api, job_id)
            info = classify(exc.code, exc.status, exc.message)
            if info.category is ErrorCategory.LIMIT:
                raise _limit_stop(ctx, exc, PUSH) from exc
            if attempt == TRANSIENT_ATTEMPTS or not info.transient:
                raise
            delay = min(10.0, 0.25 * 2**attempt)
            time.sleep(delay / 2 + random.random() * delay / 2)
    raise AssertionError("unreachable")


def _run_ingest(
    ctx: SyncContext, api: BulkIngest, job: IngestJob, keep_leased: Callable[[], None]
) -> list[WriteOutcome] | None:
    """One job from creation to per-write outcomes; None when the job as a whole failed or timed out (its writes
    then go through collections, which report per record)."""
    job_id = _start_ingest(ctx, api, job)
    last = [time.monotonic()]

    def waiting() -> None:
        if time.monotonic() - last[0] >= LEASE_EVERY:
            keep_leased()
            last[0] = time.monotonic()

    try:
        _wait_for_job(
            ctx, api, job_id, None, kind="ingest", waiting=waiting, wait_seconds=PUSH_WAIT_SECONDS, what=PUSH
        )
    except CrmApiError as exc:
        if exc.code not in ("BULK_JOB_FAILED", "BULK_JOB_TIMEOUT"):
            raise
        if exc.code == "BULK_JOB_TIMEOUT":
            _abort_quietly(api, job_id)
        logger.warning(
            "ingest job %s unusable (%s); writing its %d rows through collections",
            job_id,
            exc,
            len(job.writes),
        )
        return None
    keep_leased()
    # Rows in neither list were not processed (``unprocessedrecords``): they come back as transient failures.
    successful = _call(ctx, lambda: api.results(job_id, "successfulResults"), PUSH)
    failed = _call(ctx, lambda: api.results(job_id, "failedResults"), PUSH)
    if job.upsert_field:
        return upsert_outcomes(job, successful, failed)
    return bulk_outcomes(job, successful, failed)


def push_jobs(
    ctx: SyncContext,
    items: Sequence[OutboxItem],
    upsert_fields: Mapping[str, str],
    apply: Callable[[list[WriteOutcome]], None],
    keep_leased: Callable[[], None],
    *,
    rows_per_job: int = PUSH_ROWS,
) -> list[OutboxItem]:
    """Write the planned ``items`` through Bulk API 2.0 ingest jobs, one per object and operation (up to
    ``rows_per_job`` rows each): updates by Id, creates as upserts on the object's external id. Each job's
    per-record outcomes go to ``apply`` (the push path's own bookkeeping: links, hashes, error queue) in chunks.
    ``keep_leased`` extends the outbox leases while a job runs: the entries stay claimed until their results are
    applied, so a killed worker loses nothing and its retry, upserting on the same external ids, duplicates
    nothing ([R25]). Raises :class:`BulkDeferred` when the budget says bulk work must wait ([R27]).

    Returns the items left for sObject Collections: creates of objects without the external-id field (a plain
    insert re-sent after a crash would create the record again), and the writes of a job that failed as a whole."""
    by_key = {i.key: i for i in items}
    limits = BatchLimits(api_version=ctx.api_version, bulk_threshold=-1, bulk_max_rows=rows_per_job)
    plan = plan_push([_blank_as_null(i) for i in items], limits)
    if len(plan.steps) > 1:  # several writes of one record: keep their order through collections
        return list(items)
    left = [by_key[d.key] for d in plan.deferred]
    groups: dict[tuple[str, WriteOp], list[CoalescedWrite]] = {}
    for w in plan.steps[0].writes if plan.steps else ():
        groups.setdefault((w.object_type, w.operation), []).append(w)
    jobs: list[IngestJob] = []
    for (object_type, op), writes in groups.items():
        field_name = upsert_fields.get(object_type) if op is WriteOp.CREATE else None
        if op is WriteOp.CREATE and not field_name:
            left.extend(by_key[w.key] for w in writes)
            continue
        for i in range(0, len(writes), rows_per_job):
            jobs.append(IngestJob(object_type, op, tuple(writes[i : i + rows_per_job]), field_name))
    api = BulkIngest(ctx.client)
    for job in jobs:
        _check_budget(ctx, PUSH)
        keep_leased()
        outcomes = _run_ingest(ctx, api, job, keep_leased)
        if outcomes is None:
            left.extend(by_key[w.key] for w in job.writes)
            continue
        for i in range(0, len(outcomes), PUSH_APPLY_CHUNK):
            apply(outcomes[i : i + PUSH_APPLY_CHUNK])
    return left
