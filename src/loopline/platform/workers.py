"""Background workers: liveness heartbeats and recovery of tasks whose worker died.

django-tasks-db marks a task RUNNING when a worker claims it and never looks at it again: if that worker is killed
(OOM, kill -9, power loss) the task would stay RUNNING forever. Loopline's embedded worker therefore writes a
heartbeat row, and :func:`recover_orphaned_tasks` (run by every worker at start and periodically, and by the
scheduler's watchdog) puts RUNNING tasks of dead workers back to READY so another worker runs them again.

A worker is dead when its heartbeat is older than ``LOOPLINE_WORKER_STALE_SECONDS`` or, on the same host, when its
process no longer exists. Tasks run by a worker that never wrote a heartbeat (e.g. a bare ``db_worker``) are only
recovered after ``LOOPLINE_TASK_ORPHAN_SECONDS``. A task whose workers died ``LOOPLINE_TASK_MAX_DELIVERIES`` times is
marked FAILED (``WorkerLost``) instead of being retried forever.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from .models import WorkerHeartbeat

logger = logging.getLogger("loopline.workers")

HOSTNAME = socket.gethostname()[:255]


def _setting(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value:
        return float(value)
    return float(getattr(settings, name, default))


def heartbeat_seconds() -> float:
    return _setting("LOOPLINE_WORKER_HEARTBEAT_SECONDS", 10)


def stale_seconds() -> float:
    return _setting("LOOPLINE_WORKER_STALE_SECONDS", 60)


def orphan_seconds() -> float:
    return _setting("LOOPLINE_TASK_ORPHAN_SECONDS", 3600)


def max_deliveries() -> int:
    return int(_setting("LOOPLINE_TASK_MAX_DELIVERIES", 5))


def beat(worker_id: str, kind: str = "database", *, started_at: dt.datetime | None = None) -> None:
    now = timezone.now()
    updated = WorkerHeartbeat.objects.filter(worker_id=worker_id).update(seen_at=now)
    if not updated:
        WorkerHeartbeat.objects.update_or_create(
            worker_id=worker_id,
            defaults={
                "kind": kind,
                "hostname": HOSTNAME,
                "pid": os.getpid(),
                "started_at": started_at or now,
                "seen_at": now,
            },
        )


def forget(worker_id: str) -> None:
    WorkerHeartbeat.objects.filter(worker_id=worker_id).delete()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead(hb: WorkerHeartbeat, now: dt.datetime) -> bool:
    if hb.seen_at < now - dt.timedelta(seconds=stale_seconds()):
        return True
    return bool(hb.hostname == HOSTNAME and hb.pid and hb.pid != os.getpid() and not _pid_alive(hb.pid))


def recover_orphaned_tasks(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Re-queue (or give up on) RUNNING database-backend tasks whose worker is dead. Idempotent, cheap."""
    from django.tasks import task_backends
    from django.tasks.base import TaskResultStatus
    from django_tasks_db.backend import DatabaseBackend
    from django_tasks_db.models import DBTaskResult

    now = now or timezone.now()
    db_aliases = set()
    for alias in settings.TASKS:
        try:
            if isinstance(task_backends[alias], DatabaseBackend):
                db_aliases.add(alias)
        except Exception:  # noqa: S112 - a broken alias is reported by Django's checks, not here
            continue
    counts = {"requeued": 0, "failed": 0}
    if not db_aliases:
        return counts
    running = list(
        DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING, backend_name__in=db_aliases).only(
            "id", "worker_ids", "started_at", "task_path"
        )
    )
    if not running:
        return counts
    last_ids = {row.worker_ids[-1] for row in running if row.worker_ids}
    beats = WorkerHeartbeat.objects.in_bulk(list(last_ids))
    orphan_cutoff = now - dt.timedelta(seconds=orphan_seconds())
    limit = max_deliveries()
    for row in running:
        worker_id = row.worker_ids[-1] if row.worker_ids else None
        hb = beats.get(worker_id) if worker_id else None
        if hb is not None:
            dead = is_dead(hb, now)
        else:
            dead = row.started_at is None or row.started_at < orphan_cutoff
        if not dead:
            continue
        # Compare-and-set on (status, started_at): a live worker that re-claimed the row meanwhile is left alone.
        same = DBTaskResult.objects.filter(
            id=row.id, status=TaskResultStatus.RUNNING, started_at=row.started_at
        )
        if len(row.worker_ids) >= limit:
            changed = same.update(
                status=TaskResultStatus.FAILED,
                finished_at=now,
                return_value=None,
                exception_class_path="loopline.platform.tasks.WorkerLost",
                traceback=f"WorkerLost: the worker running this task died {len(row.worker_ids)} times; giving up.",
            )
            counts["failed"] += changed
            if changed:
                logger.error(
                    "task %s (%s) given up: its workers died %d times",
                    row.id,
                    row.task_path,
                    len(row.worker_ids),
                )
        else:
            changed = same.update(status=TaskResultStatus.READY)
            counts["requeued"] += changed
            if changed:
                logger.warning("task %s (%s) re-queued: worker %s is gone", row.id, row.task_path, worker_id)
    return counts


def prune_heartbeats(
    *, now: dt.datetime | None = None, older_than: dt.timedelta = dt.timedelta(days=1)
) -> int:
    now = now or timezone.now()
    deleted, _ = WorkerHeartbeat.objects.filter(seen_at__lt=now - older_than).delete()
    return deleted


class HeartbeatThread(threading.Thread):
    """Beats for a worker every few seconds and recovers orphaned tasks now and then, on its own DB connection."""

    def __init__(self, worker_id: str, kind: str = "database", *, recover_every: float = 15.0):
        super().__init__(name=f"heartbeat-{worker_id[:12]}", daemon=True)
        self.worker_id = worker_id
        self.kind = kind
        self.recover_every = recover_every
        self.stop_event = threading.Event()
        self.started_at = timezone.now()

    def run(self) -> None:
        interval = heartbeat_seconds()
        since_recover = 0.0
        try:
            while not self.stop_event.wait(interval):
                try:
                    close_old_connections()
                    beat(self.worker_id, self.kind, started_at=self.started_at)
                    since_recover += interval
                    if since_recover >= self.recover_every:
                        since_recover = 0.0
                        recover_orphaned_tasks()
                except Exception:
                    logger.exception("worker heartbeat failed")
        finally:
            connection.close()

    def stop(self) -> None:
        self.stop_event.set()
