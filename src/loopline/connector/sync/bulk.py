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
"""

from __future__ import annotations

import csv
import io
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.db import transaction
from django.utils import timezone
from simple_salesforce.util import call_salesforce

from loopline.platform import tasks as platform_tasks
from loopline.platform.models import Job

from ..engine import CrmRecord, RunCounters
from ..engine.budget import ApiUsage, decide_budget
from ..engine.capture import select_fields
from ..engine.errors import ErrorCategory, classify
from ..engine.model import sobject_name
from ..models import BulkImportCheckpoint, Connector
from ..models import Watermark as WatermarkRow
from ..salesforce.client import CrmApiError, CrmClient
from . import budget, pull, related, runs
from .context import POLLED_OBJECTS, SyncContext

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
        timeout = self.client.config.timeout

        def fetch(sf) -> tuple[str, str]:
            response = call_salesforce(
                f"{sf.bulk2_url}query/{job_id}/results",
                "GET",
                sf.session,
                {**sf.headers, "Accept": "text/csv"},
                params=params,
                timeout=timeout,
            )
            following = response.headers.get("Sforce-Locator", "")
            return response.content.decode("utf-8"), "" if following in ("", "null") else following

        return self.client.call(fetch)


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


def _check_budget(ctx: SyncContext) -> None:
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
        raise BulkDeferred(f"bulk import deferred: {decision.reason}", decision.until)


def _limit_stop(ctx: SyncContext, exc: CrmApiError) -> BulkDeferred:
    until = budget.pause_for_limit(ctx.connector, exc.message)
    return BulkDeferred(f"bulk import stopped by the CRM's API limit until {until:%H:%M} UTC", until)


def _call(ctx: SyncContext, fn: Callable[[], Any]) -> Any:
    try:
        return _retrying(fn)
    except CrmApiError as exc:
        if classify(exc.code, exc.status, exc.message).category is ErrorCategory.LIMIT:
            raise _limit_stop(ctx, exc) from exc
        raise


def _wait_for_job(ctx: SyncContext, api: BulkQueries, job_id: str, job) -> dict:
    delay, deadline = 0.2, time.monotonic() + JOB_WAIT_SECONDS
    while True:
        info = _call(ctx, lambda: api.info(job_id))
        state = info.get("state")
        if state == "JobComplete":
            return info
        if state in ("Failed", "Aborted"):
            raise CrmApiError(
                "BULK_JOB_FAILED",
                f"Bulk query job {job_id} {state.lower()}: {info.get('errorMessage') or 'no details'}",
            )
        if time.monotonic() > deadline:
            raise CrmApiError(
                "BULK_JOB_TIMEOUT",
                f"Bulk query job {job_id} still {state} after {JOB_WAIT_SECONDS // 3600} h",
            )
        if job is not None:
            platform_tasks.heartbeat(job)
        time.sleep(delay)
        delay = min(2.0, delay * 1.5)


def _start_job(ctx: SyncContext, api: BulkQueries, cp: Checkpoint) -> None:
    fields = select_fields(cp.object_type, ctx.mappings)
    # No ORDER BY: the watermark was recorded before the job, so the order of the rows does not matter.
    soql = f"SELECT {', '.join(fields)} FROM {sobject_name(cp.object_type)}"
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
    objects: Sequence[str] = POLLED_OBJECTS,
    page_records: int | None = None,
    after_chunk: Callable[[Checkpoint], None] | None = None,
) -> RunCounters:
    """Import every live Lead and Contact through Bulk API 2.0, or resume the interrupted import. Returns the whole
    import's counters (earlier, interrupted runs included). ``after_chunk`` is called inside each chunk's
    transaction (tests and the benchmark interrupt the import there)."""
    ctx = SyncContext.load(connector, client)
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
    if (
        tuple(objects) == POLLED_OBJECTS
    ):  # then the existing contact roles, deals and campaign members ([R38], [R40])
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
