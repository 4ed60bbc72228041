"""The sync loop.

Embedded mode (``loopline run`` starts ``loopline connector worker`` as a supervised child): one long-running loop
per process polls each active connector when its adaptive interval is due and drains the outbox continuously
(every 0.25 s when idle). This meets the latency targets without a task per poll (CRM → Loopline: poll interval
5 s when busy, at most 10 s when idle → p50 ≈ 5 s; Loopline → CRM: ≤ 0.25 s wait + one composite call) and costs no
API calls while idle except the polls (≤ 360 an hour at the 10 s idle interval).

Scale mode (Celery): the scheduler fires ``connector.sync_tick`` every 2 seconds; the task polls the connectors that
are due and drains their outboxes. Several workers may run ticks at once: a poll is claimed with a compare-and-set on
the watermark row's ``last_poll_at`` and outbox rows are claimed with leases (``SKIP LOCKED``), so no two workers do
the same work.

Either way the state is rows (watermarks, outbox leases, links): a worker killed with -9 loses nothing; the next one
replays at most one chunk, which is idempotent ([R25]).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import defaultdict, deque

from django.db import close_old_connections
from django.db.models import Q
from django.utils import timezone

from ..engine.errors import ErrorCategory, classify
from ..models import Connector
from ..models import Watermark as WatermarkRow
from ..salesforce.auth import AuthError
from ..salesforce.client import CrmApiError
from . import budget, pull, push, related
from .context import POLLED_OBJECTS

logger = logging.getLogger("loopline.connector.worker")

MAX_DRAIN_BATCHES = 200
TRANSIENT_BACKOFF = 5.0  # after a failure that may pass by itself (the scheduled path's single retry delay)
PUSH_THREADS = 4


def claim_poll(connector: Connector, min_interval: float, now: dt.datetime | None = None) -> bool:
    """Compare-and-set on the first watermark row: only one process polls a connector per interval."""
    now = now or timezone.now()
    for object_type in POLLED_OBJECTS:
        WatermarkRow.objects.get_or_create(connector=connector, object_type=object_type)
    cutoff = now - dt.timedelta(seconds=max(0.0, min_interval - 0.05))
    return bool(WatermarkRow.objects.filter(connector=connector, object_type=POLLED_OBJECTS[0]).filter(
        Q(last_poll_at__isnull=True) | Q(last_poll_at__lte=cutoff)).update(last_poll_at=now))


def handle_crm_failure(connector: Connector, exc: Exception, what: str) -> float:
    """Turn a failed poll/drain into state: auth → status error; limit → paused_until; else back off. Returns the
    seconds to wait before trying this connector again."""
    if isinstance(exc, AuthError):
        push.mark_auth_error(connector, exc)
        return 60.0
    code = getattr(exc, "code", "") or type(exc).__name__
    info = classify(code, getattr(exc, "status", None), str(exc))
    if info.category is ErrorCategory.AUTH:
        push.mark_auth_error(connector, exc)
        return 60.0
    if info.category is ErrorCategory.LIMIT:
        budget.pause_for_limit(connector, str(exc))
        return 60.0
    WatermarkRow.objects.filter(connector=connector).update(last_error=f"{what}: {exc}"[:500])
    logger.warning("connector %s %s failed: %s", connector.pk, what, exc)
    return TRANSIENT_BACKOFF


class ConnectorWorker:
    def __init__(self, connector_ids: list[int] | None = None, *, idle_sleep: float = 0.25):
        self.connector_ids = connector_ids
        self.idle_sleep = idle_sleep
        self.stop_event = threading.Event()
        self.next_poll: dict[int, float] = {}
        self.recent: dict[int, deque[int]] = defaultdict(lambda: deque(maxlen=8))
        # Per connector and direction: a failed push must not hold up polling, nor a failed poll the push.
        self.not_before: dict[tuple[int, str], float] = {}
        self.failures: dict[tuple[int, str], int] = defaultdict(int)

    def connectors(self) -> list[Connector]:
        qs = Connector.objects.select_related("bu").filter(status=Connector.Status.ACTIVE)
        if self.connector_ids:
            qs = qs.filter(pk__in=self.connector_ids)
        return list(qs)

    def _failed(self, connector: Connector, exc: Exception, what: str) -> None:
        delay = handle_crm_failure(connector, exc, what)
        key = (connector.pk, what)
        if delay == TRANSIENT_BACKOFF:
            # One 503 or lock error is usually gone a second later: 1, 2, 4 … 30 s while failures repeat.
            self.failures[key] += 1
            delay = min(30.0, 2.0 ** (self.failures[key] - 1))
        self.not_before[key] = time.monotonic() + delay

    def _ok(self, connector: Connector, what: str) -> None:
        self.failures.pop((connector.pk, what), None)

    def _waiting(self, connector: Connector, what: str) -> bool:
        return self.not_before.get((connector.pk, what), 0) > time.monotonic()

    def run_once(self) -> dict[str, int]:
        """One pass over the active connectors: poll the due ones, drain every outbox. Returns work done."""
        done = {"polled": 0, "pulled": 0, "pushed": 0}
        for connector in self.connectors():
            if budget.blocked(connector):
                continue
            if time.monotonic() >= self.next_poll.get(connector.pk, 0) and not self._waiting(connector, "poll"):
                self._poll(connector, done)
            if not self._waiting(connector, "push"):
                self._push(connector, done)
        return done

    def _poll(self, connector: Connector, done: dict[str, int]) -> None:
        interval = pull.next_interval(connector, list(self.recent[connector.pk]))
        try:
            counters = pull.poll(connector)
        except (CrmApiError, AuthError) as exc:
            self._failed(connector, exc, "poll")
            return
        self._ok(connector, "poll")
        fetched = counters.fetched - counters.skipped.get("already_seen", 0)
        self.recent[connector.pk].append(fetched)
        done["polled"] += 1
        done["pulled"] += fetched
        self.next_poll[connector.pk] = time.monotonic() + pull.next_interval(
            connector, list(self.recent[connector.pk])) if fetched == 0 else time.monotonic() + min(
            interval, float(pull.ctx_settings(connector)["poll_interval_seconds"]))

    def _push(self, connector: Connector, done: dict[str, int]) -> None:
        try:
            if push.backlog(connector) > push.BATCH:  # a big backlog: several drains at once
                done["pushed"] += push.drain_parallel(connector, threads=PUSH_THREADS)
        except (CrmApiError, AuthError) as exc:
            self._failed(connector, exc, "push")
            return
        for _ in range(MAX_DRAIN_BATCHES):
            try:
                counters = push.drain(connector)
            except (CrmApiError, AuthError) as exc:
                self._failed(connector, exc, "push")
                return
            self._ok(connector, "push")
            if counters.note == "the outbox is empty":
                break
            done["pushed"] += counters.created + counters.updated
            # A steady stream of Loopline changes must not starve polling: CRM changes wait at most one poll.
            if budget.blocked(connector) or time.monotonic() >= self.next_poll.get(connector.pk, 0):
                break
        # [R38] campaign members, [R39] email tasks — unless the CRM just failed (backing off) or the budget says no
        if not budget.blocked(connector) and not self._waiting(connector, "push"):
            try:
                done["pushed"] += sum(related.push(connector).values())
            except (CrmApiError, AuthError) as exc:
                self._failed(connector, exc, "push")

    def run(self) -> None:
        logger.info("connector worker started")
        while not self.stop_event.is_set():
            close_old_connections()
            try:
                work = self.run_once()
            except Exception:
                logger.exception("connector worker pass failed")
                work = {}
                self.stop_event.wait(2.0)
            if not any(work.values()):
                self.stop_event.wait(self.idle_sleep)
        logger.info("connector worker stopped")

    def stop(self) -> None:
        self.stop_event.set()


def sync_tick() -> dict[str, int]:
    """Scale mode: poll due connectors (CAS-claimed) and drain their outboxes once."""
    totals = {"polled": 0, "pushed": 0}
    for connector in Connector.objects.select_related("bu").filter(status=Connector.Status.ACTIVE):
        if budget.blocked(connector):
            continue
        settings = pull.ctx_settings(connector)
        if claim_poll(connector, float(settings["poll_interval_seconds"])):
            try:
                pull.poll(connector)
                totals["polled"] += 1
            except (CrmApiError, AuthError) as exc:
                handle_crm_failure(connector, exc, "poll")
                continue
        for _ in range(20):
            try:
                counters = push.drain(connector)
            except (CrmApiError, AuthError) as exc:
                handle_crm_failure(connector, exc, "push")
                break
            if counters.note == "the outbox is empty":
                break
            totals["pushed"] += counters.created + counters.updated
        if not budget.blocked(connector):  # [R38] campaign members, [R39] email tasks
            try:
                totals["pushed"] += sum(related.push(connector).values())
            except (CrmApiError, AuthError) as exc:
                handle_crm_failure(connector, exc, "push")
    return totals
