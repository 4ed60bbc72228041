"""Periodic schedules, fired by a single active scheduler.

Apps register schedules in code, in ``AppConfig.ready()``::

    from loopline.platform.scheduler import register_schedule
    register_schedule("connector.poll_changes", every=timedelta(minutes=1), task=poll_changes)

``task`` is either a ``django.tasks`` Task (enqueued; the work runs on a worker) or a plain callable (run inside the
scheduler process; only for quick housekeeping such as the watchdog).

Slots are aligned to the epoch: a 1-hour schedule fires once per clock hour. Any number of ``loopline scheduler``
processes may run; they compete for a lease row (``SchedulerLease``) and only the holder of an unexpired lease fires.
The holder renews the lease while alive; if it dies, another scheduler takes over once the lease expires. Each fired
slot is recorded in ``ScheduleRun`` with a compare-and-set in the same transaction that enqueues the task, so a slot
fires at most once even if two schedulers ever overlap, and a restarted scheduler fires a slot it has not yet fired.
Slots missed while no scheduler ran are coalesced into one run.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import Q
from django.tasks import Task
from django.utils import timezone

from .models import SchedulerLease, ScheduleRun

logger = logging.getLogger("loopline.scheduler")

LEASE_NAME = "scheduler"
MAX_CATCH_UP = 100
EPOCH = dt.datetime(2000, 1, 3, tzinfo=dt.UTC)  # a Monday, so weekly schedules start on Mondays


@dataclass(frozen=True)
class Schedule:
    name: str
    every: dt.timedelta
    target: Task | Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    offset: dt.timedelta = dt.timedelta(0)
    pass_slot: bool = False
    catch_up: bool = False

    def slot(self, now: dt.datetime) -> dt.datetime:
        """The start of the slot ``now`` falls in."""
        base = EPOCH + self.offset
        n = (now - base) // self.every
        return base + n * self.every

    @property
    def is_task(self) -> bool:
        return isinstance(self.target, Task)


_registry: dict[str, Schedule] = {}


def register_schedule(
    name: str,
    *,
    every: dt.timedelta,
    task: Task | Callable[..., Any],
    args: tuple = (),
    kwargs: dict | None = None,
    offset: dt.timedelta = dt.timedelta(0),
    pass_slot: bool = False,
    catch_up: bool = False,
) -> Schedule:
    """Register (or replace) a periodic schedule. ``every`` must be at least one second.

    ``pass_slot=True`` adds ``slot="<ISO start of the slot>"`` to the call: a natural idempotency key.
    ``catch_up=True`` fires every slot missed while no scheduler ran (at most ``MAX_CATCH_UP``), oldest first;
    by default missed slots are coalesced into one run.
    """
    if every < dt.timedelta(seconds=1):
        raise ValueError("A schedule runs at most once a second")
    if len(name) > 100:
        raise ValueError("Schedule names have at most 100 characters")
    schedule = Schedule(
        name=name,
        every=every,
        target=task,
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        offset=offset,
        pass_slot=pass_slot,
        catch_up=catch_up,
    )
    _registry[name] = schedule
    return schedule


def unregister_schedule(name: str) -> None:
    _registry.pop(name, None)


def schedules() -> list[Schedule]:
    return sorted(_registry.values(), key=lambda s: s.name)


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:100]


class Scheduler:
    """One scheduler instance. ``tick()`` does one round; ``run()`` loops until ``stop()``."""

    def __init__(
        self,
        *,
        holder: str | None = None,
        lease_seconds: float = 30.0,
        tick_seconds: float = 1.0,
        registry: dict[str, Schedule] | None = None,
        lease_name: str = LEASE_NAME,
    ):
        self.holder = holder or default_holder()
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.tick_seconds = tick_seconds
        self.registry = registry if registry is not None else _registry
        self.lease_name = lease_name
        self.lease_expires_at: dt.datetime | None = None
        self._stop = threading.Event()

    # --- lease ---------------------------------------------------------------------------------------------------
    def holds_lease(self, now: dt.datetime) -> bool:
        return self.lease_expires_at is not None and self.lease_expires_at > now

    def acquire_or_renew(self, now: dt.datetime) -> bool:
        """Take the lease if free or expired, or extend it if ours. Returns whether we hold it now."""
        expires = now + self.lease
        current = SchedulerLease.objects.filter(name=self.lease_name).values("holder", "expires_at").first()
        if current is None:
            try:
                with transaction.atomic():
                    SchedulerLease.objects.create(
                        name=self.lease_name, holder=self.holder, expires_at=expires
                    )
            except IntegrityError:
                self.lease_expires_at = None
                return False
            self._took_lease()
            self.lease_expires_at = expires
            return True
        if current["holder"] != self.holder and current["expires_at"] > now:
            self.lease_expires_at = None  # someone else holds it: stand by
            return False
        taken = (
            SchedulerLease.objects.filter(name=self.lease_name)
            .filter(Q(holder=self.holder) | Q(expires_at__lte=now))
            .update(holder=self.holder, expires_at=expires)
        )
        if taken:
            if current["holder"] != self.holder:
                self._took_lease(previous=current["holder"])
            self.lease_expires_at = expires
        else:
            self.lease_expires_at = None
        return bool(taken)

    def _took_lease(self, previous: str | None = None) -> None:
        logger.info(
            "scheduler %s is now active%s", self.holder, f" (took over from {previous})" if previous else ""
        )

    def release(self) -> None:
        """Give the lease up at once (clean shutdown), so a standby scheduler takes over without waiting."""
        SchedulerLease.objects.filter(name=self.lease_name, holder=self.holder).update(
            expires_at=timezone.now()
        )
        self.lease_expires_at = None

    # --- firing --------------------------------------------------------------------------------------------------
    def due(self, now: dt.datetime) -> list[tuple[Schedule, dt.datetime]]:
        items = list(self.registry.values())
        last = dict(
            ScheduleRun.objects.filter(name__in=[s.name for s in items]).values_list("name", "last_run_at")
        )
        result = []
        for schedule in items:
            slot = schedule.slot(now)
            previous = last.get(schedule.name)
            if previous is None or previous >= slot:
                if previous is None:
                    result.append((schedule, slot))
                continue
            if schedule.catch_up:
                missed = [previous + k * schedule.every for k in range(1, MAX_CATCH_UP + 1)]
                missed = [m for m in missed if m < slot]
                result.extend((schedule, m) for m in missed)
            result.append((schedule, slot))
        return result

    def fire(self, schedule: Schedule, slot: dt.datetime, now: dt.datetime) -> bool:
        """Record the slot and dispatch the schedule, at most once per slot across all schedulers."""
        with transaction.atomic():
            # Fence: a scheduler that lost its lease while paused must not fire.
            if not SchedulerLease.objects.filter(
                name=self.lease_name, holder=self.holder, expires_at__gt=now
            ).exists():
                self.lease_expires_at = None
                return False
            run = ScheduleRun.objects.select_for_update().filter(name=schedule.name).first()
            if run is None:
                try:
                    with transaction.atomic():
                        ScheduleRun.objects.create(name=schedule.name, last_run_at=slot)
                except IntegrityError:
                    return False
            else:
                if run.last_run_at >= slot:
                    return False
                # Compare-and-set, so a slot fires once even where row locks are not available.
                moved = ScheduleRun.objects.filter(name=schedule.name, last_run_at=run.last_run_at).update(
                    last_run_at=slot
                )
                if not moved:
                    return False
            kwargs = {**schedule.kwargs, "slot": slot.isoformat()} if schedule.pass_slot else schedule.kwargs
            target = schedule.target
            if isinstance(target, Task):
                # Enqueued in the same transaction: the slot and the task row commit (or roll back) together.
                target.enqueue(*schedule.args, **kwargs)
        if not isinstance(target, Task):
            try:
                target(*schedule.args, **kwargs)
            except Exception:
                logger.exception("schedule %s failed", schedule.name)
        logger.info("schedule %s fired for slot %s", schedule.name, slot.isoformat())
        return True

    def tick(self, now: dt.datetime | None = None) -> list[str]:
        """One round: keep the lease, fire what is due. Returns the names fired."""
        now = now or timezone.now()
        expires = self.lease_expires_at
        must_renew = expires is None or expires <= now or (expires - now) < self.lease * 2 / 3
        if must_renew and not self.acquire_or_renew(now):
            return []
        fired = []
        for schedule, slot in self.due(now):
            if self.fire(schedule, slot, now):
                fired.append(schedule.name)
        return fired

    def run(self) -> None:
        logger.info("scheduler %s started with %d schedule(s)", self.holder, len(self.registry))
        try:
            while not self._stop.is_set():
                try:
                    close_old_connections()
                    self.tick()
                except Exception:
                    logger.exception("scheduler tick failed")
                self._stop.wait(self.tick_seconds)
        finally:
            try:
                self.release()
            except Exception:
                logger.exception("could not release the scheduler lease")
            logger.info("scheduler %s stopped", self.holder)

    def stop(self) -> None:
        self._stop.set()


# --- Built-in schedules ---------------------------------------------------------------------------------------------


def watchdog() -> dict[str, int]:
    """Housekeeping that must not depend on workers being healthy: recover tasks of dead workers, fail stalled jobs,
    republish lost Celery messages."""
    from .celery_backend import recover_lost_running, republish_stalled
    from .tasks import fail_stalled_jobs
    from .workers import prune_heartbeats, recover_orphaned_tasks

    counts = recover_orphaned_tasks()
    counts["stalled_jobs"] = fail_stalled_jobs()
    counts["republished"] = republish_stalled()
    counts["lost_running"] = recover_lost_running()
    counts["pruned_heartbeats"] = prune_heartbeats()
    if any(counts.values()):
        logger.warning("watchdog: %s", counts)
    return counts


def register_builtin_schedules() -> None:
    from .tasks import prune_finished_tasks

    register_schedule("platform.watchdog", every=dt.timedelta(seconds=30), task=watchdog)
    register_schedule(
        "platform.prune_finished_tasks",
        every=dt.timedelta(hours=1),
        task=prune_finished_tasks,
        offset=dt.timedelta(minutes=7),
    )
