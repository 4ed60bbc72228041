"""Loopline's helpers around Django's ``django.tasks`` API.

Rules for tasks (see ARCHITECTURE.md):

* **Pass ids, not objects.** Arguments are stored as JSON and the task may run minutes later on another machine:
  ``recalculate_score.enqueue(prospect_id=p.pk)``, then load fresh rows inside the task. :func:`enqueue_on_commit`
  refuses arguments that are not plain JSON so the mistake shows at the call site.
* **Enqueue on commit.** A task enqueued inside a transaction that then rolls back must not run:
  ``enqueue_on_commit(send_welcome, prospect_id=p.pk)``.
* **Be idempotent.** Every backend Loopline uses delivers *at least once*: a worker killed mid-task has its task run
  again by another worker. Write tasks so a second run does no harm (check state first, use unique constraints,
  upserts, send ledgers). Keep tasks short; long waits are rows with a due time (:mod:`loopline.platform.queues`).
* **Retry transient failures** with :func:`loopline_task` (``@loopline_task(retries=5, backoff=10)``): a failed
  attempt is recorded as FAILED and a fresh attempt is enqueued after an exponential, jittered delay.
* **Show progress of long jobs** with the ``Job`` helpers below (import, export, rescoring, initial sync).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import transaction
from django.db.models import F
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, DEFAULT_TASK_QUEUE_NAME, Task, task
from django.utils import timezone
from django.utils.json import normalize_json

from .models import Job
from .queues import backoff_delay

logger = logging.getLogger("loopline.tasks")

ATTEMPT_KWARG = "_loopline_attempt"
_current_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("loopline_task_attempt", default=1)


class Retry(Exception):
    """Raise from a :func:`loopline_task` to ask for another attempt, optionally after a given delay (seconds)."""

    def __init__(self, reason: str = "", *, delay: float | None = None):
        super().__init__(reason or "retry requested")
        self.delay = delay


class WorkerLost(Exception):
    """The task's worker died too many times while running it (a poison task?)."""


# --- Enqueueing ---------------------------------------------------------------------------------------------------


def ensure_jsonable(args: tuple | list, kwargs: dict) -> tuple[Any, Any]:
    """Return JSON-normalised args/kwargs or raise a TypeError that tells the caller to pass ids."""
    try:
        norm_args, norm_kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        json.dumps([norm_args, norm_kwargs])
    except (TypeError, ValueError) as exc:
        raise TypeError(f"Task arguments must be plain JSON values (pass ids, not objects): {exc}") from None
    return norm_args, norm_kwargs


def enqueue_on_commit(task_obj: Task, *args: Any, **kwargs: Any) -> None:
    """Enqueue ``task_obj`` with these arguments once the current transaction commits (at once if none is open).

    Nothing is enqueued if the transaction rolls back. The arguments are checked now, not at commit time.
    """
    ensure_jsonable(args, kwargs)
    transaction.on_commit(functools.partial(task_obj.enqueue, *args, **kwargs))


def current_attempt() -> int:
    """The attempt number (1-based) of the :func:`loopline_task` running in this thread."""
    return _current_attempt.get()


# --- Retrying tasks -----------------------------------------------------------------------------------------------


def loopline_task(
    function: Callable | None = None,
    *,
    retries: int = 3,
    backoff: float = 5.0,
    backoff_cap: float = 600.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    give_up_on: tuple[type[BaseException], ...] = (),
    priority: int = 0,
    queue_name: str = DEFAULT_TASK_QUEUE_NAME,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    takes_context: bool = False,
):
    """Like ``@django.tasks.task`` but retries failures up to ``retries`` more times with jittered backoff.

    Attempt n+1 waits about ``backoff * 2**(n-1)`` seconds (at most ``backoff_cap``). On backends that support
    ``run_after`` (the database and Celery backends) the retry is a new enqueued task, so the worker is free in the
    meantime and a crash loses nothing; on the immediate backend (tests) the retry runs at once, in-line.
    Exceptions in ``give_up_on`` (and anything not in ``retry_on``) fail the task at once. ``raise Retry(delay=s)``
    asks for a retry after ``s`` seconds (e.g. a rate limit's Retry-After).

    Keep ``backoff_cap`` well under your broker's delivery timeout (RabbitMQ's ``consumer_timeout`` is 30 minutes);
    longer waits belong in a due row.
    """

    def decorate(func: Callable) -> Task:
        holder: dict[str, Task] = {}

        @functools.wraps(func)
        def runner(*args, **kwargs):
            attempt = int(kwargs.pop(ATTEMPT_KWARG, 1))
            while True:
                token = _current_attempt.set(attempt)
                try:
                    return func(*args, **kwargs)
                except give_up_on:
                    raise
                except (*retry_on, Retry) as exc:
                    if attempt > retries:
                        logger.warning(
                            "task %s gave up after %d attempts: %r", func.__qualname__, attempt, exc
                        )
                        raise
                    delay = (
                        exc.delay
                        if isinstance(exc, Retry) and exc.delay is not None
                        else backoff_delay(attempt, base=backoff, cap=backoff_cap)
                    )
                    task_obj = holder["task"]
                    backend_obj = task_obj.get_backend()
                    if not backend_obj.supports_defer:
                        logger.info(
                            "task %s attempt %d failed (%r); retrying in-line",
                            func.__qualname__,
                            attempt,
                            exc,
                        )
                        attempt += 1
                        continue
                    retry_args = args[1:] if takes_context else args
                    run_after = timezone.now() + dt.timedelta(seconds=delay)
                    result = task_obj.using(run_after=run_after).enqueue(
                        *retry_args, **{**kwargs, ATTEMPT_KWARG: attempt + 1}
                    )
                    logger.info(
                        "task %s attempt %d failed (%r); attempt %d enqueued as %s to run after %.1fs",
                        func.__qualname__,
                        attempt,
                        exc,
                        attempt + 1,
                        result.id,
                        delay,
                    )
                    raise
                finally:
                    _current_attempt.reset(token)

        task_obj = task(  # type: ignore[call-overload]
            runner, priority=priority, queue_name=queue_name, backend=backend, takes_context=takes_context
        )
        holder["task"] = task_obj
        return task_obj

    if function is not None:
        return decorate(function)
    return decorate


# --- Job progress -----------------------------------------------------------------------------------------------------

JobRef = Job | int


def _job_id(job: JobRef) -> int:
    return job if isinstance(job, int) else job.pk


def create_job(
    bu, kind: str, *, title: str = "", total: int = 0, params: dict | None = None, created_by=None
) -> Job:
    """A QUEUED job, created by the request that enqueues the work (pass ``job.pk`` to the task)."""
    return Job.objects.create(
        bu=bu,
        kind=kind,
        title=title[:200],
        total=total,
        params=params or {},
        created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
    )


def start_job(job: JobRef, *, total: int | None = None) -> Job:
    """Mark the job RUNNING (called by the task). Safe to call again on a retried attempt."""
    now = timezone.now()
    fields: dict[str, Any] = {"status": Job.Status.RUNNING, "heartbeat_at": now, "error": ""}
    if total is not None:
        fields["total"] = total
    Job.objects.filter(pk=_job_id(job), started_at__isnull=True).update(started_at=now)
    Job.objects.filter(pk=_job_id(job)).exclude(status=Job.Status.CANCELLED).update(**fields)
    return Job.objects.get(pk=_job_id(job))


def advance(job: JobRef, n: int = 1, *, failed: int = 0, total: int | None = None) -> None:
    """Count ``n`` more items done (and ``failed`` failed); also a heartbeat. Call once per batch, not per row."""
    fields: dict[str, Any] = {"heartbeat_at": timezone.now()}
    if n:
        fields["done"] = F("done") + n
    if failed:
        fields["failed"] = F("failed") + failed
    if total is not None:
        fields["total"] = total
    Job.objects.filter(pk=_job_id(job)).update(**fields)
    if isinstance(job, Job):
        job.done += n
        job.failed += failed
        if total is not None:
            job.total = total
        job.heartbeat_at = fields["heartbeat_at"]


def heartbeat(job: JobRef) -> None:
    """Tell the watchdog the job is alive (advance() does this too). Jobs silent too long are marked failed."""
    Job.objects.filter(pk=_job_id(job)).update(heartbeat_at=timezone.now())


def is_cancelled(job: JobRef) -> bool:
    return Job.objects.filter(pk=_job_id(job), status=Job.Status.CANCELLED).exists()


def finish_job(job: JobRef, *, result: dict | None = None) -> Job:
    """Mark the job SUCCEEDED with an optional result summary (counts, file name...)."""
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": Job.Status.SUCCEEDED,
        "finished_at": now,
        "heartbeat_at": now,
        "error": "",
    }
    if result is not None:
        fields["result"] = normalize_json(result)
    Job.objects.filter(pk=_job_id(job)).exclude(status=Job.Status.CANCELLED).update(**fields)
    return Job.objects.get(pk=_job_id(job))


def fail_job(job: JobRef, error: BaseException | str) -> Job:
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    now = timezone.now()
    Job.objects.filter(pk=_job_id(job)).exclude(status=Job.Status.CANCELLED).update(
        status=Job.Status.FAILED, error=message[:5000], finished_at=now, heartbeat_at=now
    )
    return Job.objects.get(pk=_job_id(job))


@contextmanager
def running_job(job: JobRef, *, total: int | None = None) -> Iterator[Job]:
    """``with running_job(job_id, total=n) as job: ... advance(job, k) ...`` — starts, then finishes or fails it.

    The job is marked failed only when the exception escapes the last attempt; a :class:`Retry` leaves it RUNNING.
    """
    started = start_job(job, total=total)
    try:
        yield started
    except Retry:
        raise
    except Exception as exc:
        fail_job(started, exc)
        raise
    else:
        current = Job.objects.get(pk=started.pk)
        if not current.is_finished:
            finish_job(started)


def fail_stalled_jobs(*, stale_after: dt.timedelta | None = None, now: dt.datetime | None = None) -> int:
    """Watchdog: a RUNNING job whose heartbeat stopped (its worker died) is marked FAILED, so nobody waits forever."""
    from .workers import _setting

    now = now or timezone.now()
    stale_after = stale_after or dt.timedelta(seconds=_setting("LOOPLINE_JOB_STALE_SECONDS", 600))
    cutoff = now - stale_after
    return Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=cutoff).update(
        status=Job.Status.FAILED,
        finished_at=now,
        error=f"The job stopped reporting progress (no heartbeat for {int(stale_after.total_seconds())}s); "
        "its worker probably stopped. Start it again.",
    )


# --- Built-in tasks ---------------------------------------------------------------------------------------------------


@task
def prune_finished_tasks(days: int = 7, failed_days: int = 30) -> int:
    """Delete stored task results that finished long ago (successes after ``days``, failures after ``failed_days``)."""
    from django.db.models import Q
    from django.tasks.base import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    now = timezone.now()
    deleted, _ = DBTaskResult.objects.filter(
        Q(status=TaskResultStatus.SUCCESSFUL, finished_at__lt=now - dt.timedelta(days=days))
        | Q(status=TaskResultStatus.FAILED, finished_at__lt=now - dt.timedelta(days=failed_days))
    ).delete()
    if deleted:
        logger.info("pruned %d finished task results", deleted)
    return deleted
