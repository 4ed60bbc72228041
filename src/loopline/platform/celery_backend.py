"""A ``django.tasks`` backend that runs tasks on Celery workers (scale mode).

How it works:

* ``enqueue`` writes a task-result row in the database (django-tasks-db's table: same shape, same admin, same
  pruning) and publishes a small Celery message — result id, task path, args, kwargs — **when the surrounding
  transaction commits**. A rolled-back transaction therefore leaves neither row nor message.
* One generic Celery task (``loopline.run_task`` in ``loopline.config.celery``) claims the row (READY → RUNNING),
  imports the ``django.tasks`` task by path, runs it and records SUCCESSFUL/FAILED with the return value or traceback.
  ``get_result`` reads the row, so results are retrievable from any process.
* Messages are acknowledged late (after the task ran) and rejected back to the queue when a worker process dies, so
  the broker hands a killed worker's task to another worker. A redelivered message may take over a RUNNING row; a
  duplicate message for a finished or running row is ignored, so a task completes once.
* ``run_after`` becomes the Celery ``eta``. Keep deferrals short (RabbitMQ closes a consumer that holds an unacked
  message longer than its ``consumer_timeout``, 30 minutes by default); long waits belong in due rows.
* If the broker is down at commit time the row stays READY; the scheduler's watchdog republishes READY rows that
  waited longer than ``LOOPLINE_CELERY_REDISPATCH_SECONDS``.
* ``priority`` is recorded on the row; Celery queues are FIFO here. Use separate queues for urgent work.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import socket
import uuid
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.db.models import Q
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskContext, TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

logger = logging.getLogger("loopline.celery")


def celery_queue(queue_name: str) -> str:
    """The broker queue for a django.tasks queue. ``LOOPLINE_CELERY_QUEUE_PREFIX`` lets several Loopline
    installations (or test runs) share one broker without taking each other's messages."""
    prefix = os.environ.get(
        "LOOPLINE_CELERY_QUEUE_PREFIX", getattr(settings, "LOOPLINE_CELERY_QUEUE_PREFIX", "")
    )
    return f"{prefix}{queue_name}"


def _worker_id() -> str:
    return f"celery:{socket.gethostname()}:{os.getpid()}"[:64]


class CeleryBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def enqueue(self, task, args, kwargs):
        from django_tasks_db.models import DBTaskResult

        self.validate_task(task)
        payload = normalize_json({"args": list(args), "kwargs": dict(kwargs)})
        row = DBTaskResult.objects.create(
            id=uuid.uuid4(),
            args_kwargs=payload,
            priority=task.priority,
            task_path=task.module_path,
            queue_name=task.queue_name,
            run_after=task.run_after,
            backend_name=self.alias,
        )
        transaction.on_commit(
            functools.partial(
                publish,
                str(row.id),
                task.module_path,
                payload["args"],
                payload["kwargs"],
                queue=task.queue_name,
                eta=task.run_after,
            ),
            using=row._state.db,
            robust=True,
        )
        result = row.task_result
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id):
        from django.core.exceptions import ValidationError
        from django_tasks_db.models import DBTaskResult

        try:
            return DBTaskResult.objects.get(id=result_id, backend_name=self.alias).task_result
        except (DBTaskResult.DoesNotExist, ValidationError, ValueError) as exc:
            raise TaskResultDoesNotExist(result_id) from exc

    def check(self, **kwargs):
        messages = list(super().check(**kwargs))
        if not getattr(settings, "CELERY_BROKER_URL", ""):
            messages.append(
                checks.Error(
                    "The Celery task backend needs CELERY_BROKER_URL (amqp://... or redis://...).",
                    id="loopline.E001",
                )
            )
        return messages


def publish(
    result_id: str | None,
    task_path: str,
    args: list,
    kwargs: dict,
    *,
    queue: str = "default",
    eta: dt.datetime | None = None,
) -> None:
    """Send the Celery message that makes a worker run the task."""
    from loopline.config.celery import RUN_TASK_NAME, app

    options: dict[str, Any] = {"queue": celery_queue(queue)}
    if eta is not None and eta > timezone.now():
        options["eta"] = eta
    app.send_task(RUN_TASK_NAME, args=[result_id, task_path, args, kwargs], **options)


def execute(
    result_id: str | None, task_path: str, args: list, kwargs: dict, *, redelivered: bool = False
) -> None:
    """Run one task inside a Celery worker. Called by ``loopline.run_task``."""
    from django.utils.module_loading import import_string
    from django_tasks_db.models import DBTaskResult, get_date_max

    from .workers import max_deliveries

    if result_id is None:  # a message without a stored row: just run it
        import_string(task_path).call(*args, **kwargs)
        return
    worker_id = _worker_id()
    now = timezone.now()
    with transaction.atomic():
        row = DBTaskResult.objects.select_for_update().filter(id=result_id).first()
        if row is None:
            logger.warning("task result %s (%s) not found (pruned?); message dropped", result_id, task_path)
            return
        if row.status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED):
            logger.info("task %s already finished (%s); duplicate message ignored", result_id, row.status)
            return
        if row.status == TaskResultStatus.RUNNING and not redelivered:
            logger.info("task %s is running elsewhere; duplicate message ignored", result_id)
            return
        if row.run_after != get_date_max() and row.run_after > now + dt.timedelta(seconds=1):
            # An early copy (republished by the watchdog): put it back with its due time.
            transaction.on_commit(
                functools.partial(
                    publish, result_id, row.task_path, args, kwargs, queue=row.queue_name, eta=row.run_after
                )
            )
            return
        if row.status == TaskResultStatus.RUNNING and len(row.worker_ids) >= max_deliveries():
            row.status = TaskResultStatus.FAILED
            row.finished_at = now
            row.exception_class_path = "loopline.platform.tasks.WorkerLost"
            row.traceback = (
                f"WorkerLost: the worker running this task died {len(row.worker_ids)} times; giving up."
            )
            row.save(update_fields=["status", "finished_at", "exception_class_path", "traceback"])
            logger.error("task %s given up: its workers died %d times", result_id, len(row.worker_ids))
            return
        if row.status == TaskResultStatus.RUNNING:
            logger.warning(
                "task %s redelivered: its previous worker %s was lost; running it again",
                result_id,
                row.worker_ids[-1] if row.worker_ids else "?",
            )
        row.claim(worker_id)
    _run_claimed(row)


def _run_claimed(row) -> None:
    try:
        task = row.task
        task_result = row.task_result
        backend_type = type(task.get_backend())
        task_started.send(sender=backend_type, task_result=task_result)
        if task.takes_context:
            value = task.call(TaskContext(task_result=task_result), *task_result.args, **task_result.kwargs)
        else:
            value = task.call(*task_result.args, **task_result.kwargs)
        row.set_successful(normalize_json(value))
        task_finished.send(sender=backend_type, task_result=row.task_result)
    except (KeyboardInterrupt, SystemExit):
        # The worker is being shut down hard: leave the row RUNNING and the message unacknowledged; it comes back.
        raise
    except BaseException as exc:
        row.set_failed(exc)
        logger.exception("task %s (%s) failed", row.id, row.task_path)
        with contextlib.suppress(ImportError, SuspiciousOperation):
            task_finished.send(sender=type(row.task.get_backend()), task_result=row.task_result)


def _celery_aliases() -> set[str]:
    from django.tasks import task_backends

    aliases = set()
    for alias in settings.TASKS:
        try:
            if isinstance(task_backends[alias], CeleryBackend):
                aliases.add(alias)
        except Exception:  # noqa: S112 - a broken alias is reported by Django's checks
            continue
    return aliases


def republish_stalled(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Watchdog: publish again READY rows of Celery backends that waited too long (lost message, broker outage).

    ``enqueued_at`` is moved to now when a row is republished, so each row is republished at most once per window.
    A duplicate message is harmless: the worker ignores it if the row is already running or finished.
    """
    from django_tasks_db.models import DBTaskResult, get_date_max

    aliases = _celery_aliases()
    if not aliases:
        return 0
    now = now or timezone.now()
    window = dt.timedelta(
        seconds=float(
            os.environ.get(
                "LOOPLINE_CELERY_REDISPATCH_SECONDS",
                getattr(settings, "LOOPLINE_CELERY_REDISPATCH_SECONDS", 900),
            )
        )
    )
    cutoff = now - window
    rows = list(
        DBTaskResult.objects.filter(
            status=TaskResultStatus.READY, backend_name__in=aliases, enqueued_at__lt=cutoff
        )
        .filter(Q(run_after=get_date_max()) | Q(run_after__lt=cutoff))
        .order_by("enqueued_at")[:limit]
    )
    count = 0
    for row in rows:
        if DBTaskResult.objects.filter(id=row.id, status=TaskResultStatus.READY).update(enqueued_at=now):
            try:
                publish(
                    str(row.id),
                    row.task_path,
                    row.args_kwargs["args"],
                    row.args_kwargs["kwargs"],
                    queue=row.queue_name,
                )
            except Exception:
                logger.exception("republishing task %s failed; will try again later", row.id)
                DBTaskResult.objects.filter(id=row.id).update(enqueued_at=row.enqueued_at)
                break
            count += 1
    if count:
        logger.warning("republished %d task(s) whose message was lost or delayed", count)
    return count


def recover_lost_running(*, now: dt.datetime | None = None) -> int:
    """Watchdog: Celery rows RUNNING for longer than ``LOOPLINE_TASK_ORPHAN_SECONDS`` whose message the broker never
    redelivered (e.g. the broker itself lost it) go back to READY and are republished."""
    from django_tasks_db.models import DBTaskResult

    from .workers import orphan_seconds

    aliases = _celery_aliases()
    if not aliases:
        return 0
    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=orphan_seconds())
    count = 0
    for row in DBTaskResult.objects.filter(
        status=TaskResultStatus.RUNNING, backend_name__in=aliases, started_at__lt=cutoff
    )[:200]:
        if DBTaskResult.objects.filter(
            id=row.id, status=TaskResultStatus.RUNNING, started_at=row.started_at
        ).update(status=TaskResultStatus.READY, enqueued_at=now):
            publish(
                str(row.id),
                row.task_path,
                row.args_kwargs["args"],
                row.args_kwargs["kwargs"],
                queue=row.queue_name,
            )
            count += 1
    return count
