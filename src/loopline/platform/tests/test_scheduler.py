"""The scheduler: one active instance (lease), each slot fired once, handover when the holder dies."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import signal
import subprocess
import time

import pytest
from django.db import transaction
from django_tasks_db.models import DBTaskResult

from loopline.platform.models import SchedulerLease, ScheduleRun
from loopline.platform.scheduler import Schedule, Scheduler, register_schedule, schedules, unregister_schedule
from loopline.platform.tests.taskdefs import noop

from .conftest import embedded_env, kill_group, loopline, sqlite_rows, wait_for

T0 = dt.datetime(2026, 3, 2, 9, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def db_tasks(settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}


def make_registry(**options) -> dict[str, Schedule]:
    schedule = Schedule(
        name="test.minutely", every=dt.timedelta(minutes=1), target=noop, pass_slot=True, **options
    )
    return {schedule.name: schedule}


def fired_slots() -> list[str]:
    rows = DBTaskResult.objects.filter(task_path__endswith="taskdefs.noop").order_by("enqueued_at", "id")
    return [row.args_kwargs["kwargs"]["slot"] for row in rows]


def test_slots_are_aligned_to_the_clock():
    s = Schedule(name="x", every=dt.timedelta(hours=1), target=noop)
    assert s.slot(T0 + dt.timedelta(minutes=59, seconds=59)) == T0
    assert s.slot(T0 + dt.timedelta(hours=1)) == T0 + dt.timedelta(hours=1)
    offset = Schedule(name="y", every=dt.timedelta(hours=1), target=noop, offset=dt.timedelta(minutes=7))
    assert offset.slot(T0 + dt.timedelta(minutes=6)) == T0 - dt.timedelta(minutes=53)


def test_register_schedule_validates_and_replaces():
    with pytest.raises(ValueError):
        register_schedule("too.fast", every=dt.timedelta(milliseconds=10), task=noop)
    register_schedule("test.tmp", every=dt.timedelta(minutes=5), task=noop)
    register_schedule("test.tmp", every=dt.timedelta(minutes=10), task=noop)
    try:
        assert [s.every for s in schedules() if s.name == "test.tmp"] == [dt.timedelta(minutes=10)]
    finally:
        unregister_schedule("test.tmp")
    names = {s.name for s in schedules()}
    assert {"platform.watchdog", "platform.prune_finished_tasks"} <= names


@pytest.mark.django_db
def test_only_the_lease_holder_fires_and_each_slot_fires_once(db_tasks):
    registry = make_registry()
    a = Scheduler(holder="A", lease_seconds=30, registry=registry)
    b = Scheduler(holder="B", lease_seconds=30, registry=registry)
    assert a.tick(T0) == ["test.minutely"]
    assert b.tick(T0 + dt.timedelta(seconds=1)) == []  # standby
    assert a.tick(T0 + dt.timedelta(seconds=20)) == []  # same slot: nothing new
    assert b.tick(T0 + dt.timedelta(seconds=25)) == []
    assert a.tick(T0 + dt.timedelta(seconds=61)) == ["test.minutely"]
    assert b.tick(T0 + dt.timedelta(seconds=62)) == []
    assert fired_slots() == [T0.isoformat(), (T0 + dt.timedelta(minutes=1)).isoformat()]
    assert SchedulerLease.objects.get().holder == "A"


@pytest.mark.django_db
def test_lease_expiry_hands_over_without_repeating_or_skipping(db_tasks):
    registry = make_registry(catch_up=True)
    a = Scheduler(holder="A", lease_seconds=30, registry=registry)
    b = Scheduler(holder="B", lease_seconds=30, registry=registry)
    assert a.tick(T0 + dt.timedelta(seconds=5)) == ["test.minutely"]
    # A dies silently after renewing at 0:05. B cannot take over before the lease expires at 0:35...
    assert b.tick(T0 + dt.timedelta(seconds=34)) == []
    # ...and takes over after; by then (2:10) two more slots are due: 1:00 and 2:00, each fired once.
    assert b.tick(T0 + dt.timedelta(minutes=2, seconds=10)) == ["test.minutely", "test.minutely"]
    assert SchedulerLease.objects.get().holder == "B"
    # A wakes up (a long GC pause, a frozen VM): its lease is gone, so it stands by and fires nothing.
    assert a.tick(T0 + dt.timedelta(minutes=2, seconds=11)) == []
    assert b.tick(T0 + dt.timedelta(minutes=3, seconds=1)) == ["test.minutely"]
    assert fired_slots() == [(T0 + dt.timedelta(minutes=m)).isoformat() for m in range(4)]
    assert ScheduleRun.objects.get(name="test.minutely").last_run_at == T0 + dt.timedelta(minutes=3)


@pytest.mark.django_db
def test_a_fenced_scheduler_never_fires_even_if_it_thinks_it_holds_the_lease(db_tasks):
    registry = make_registry()
    a = Scheduler(holder="A", lease_seconds=30, registry=registry)
    b = Scheduler(holder="B", lease_seconds=30, registry=registry)
    a.tick(T0)
    SchedulerLease.objects.update(expires_at=T0)  # A's lease ran out
    assert b.tick(T0 + dt.timedelta(seconds=61)) == ["test.minutely"]
    # A still believes its lease is valid (cached) and tries the next slot directly.
    a.lease_expires_at = T0 + dt.timedelta(hours=1)
    assert (
        a.fire(registry["test.minutely"], T0 + dt.timedelta(minutes=2), T0 + dt.timedelta(minutes=2)) is False
    )
    assert len(fired_slots()) == 2


@pytest.mark.django_db
def test_missed_slots_are_coalesced_by_default(db_tasks):
    a = Scheduler(holder="A", lease_seconds=30, registry=make_registry())
    a.tick(T0)
    assert a.tick(T0 + dt.timedelta(minutes=10, seconds=3)) == ["test.minutely"]
    assert fired_slots() == [T0.isoformat(), (T0 + dt.timedelta(minutes=10)).isoformat()]


@pytest.mark.django_db
def test_firing_is_atomic_with_the_enqueue(db_tasks, monkeypatch):
    registry = make_registry()
    a = Scheduler(holder="A", registry=registry)

    def broken_enqueue(*args, **kwargs):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(type(noop), "enqueue", broken_enqueue)
    with pytest.raises(RuntimeError):
        a.tick(T0)
    assert not ScheduleRun.objects.exists(), "a slot whose task was not enqueued is not recorded as fired"
    monkeypatch.undo()
    assert a.tick(T0 + dt.timedelta(seconds=1)) == ["test.minutely"]


@pytest.mark.django_db
def test_clean_release_lets_a_standby_take_over_at_once(db_tasks):
    registry = make_registry()
    a = Scheduler(holder="A", registry=registry)
    b = Scheduler(holder="B", registry=registry)
    a.tick()
    a.release()
    with transaction.atomic():
        assert b.acquire_or_renew(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))


def test_two_scheduler_processes_fire_each_slot_exactly_once(embedded_data_dir):
    """Two real scheduler processes on one database; the active one is killed with SIGKILL midway."""
    env = embedded_env(embedded_data_dir)
    args = [
        "scheduler",
        "--tick",
        "0.1",
        "--lease-seconds",
        "1.5",
        "--import",
        "loopline.platform.tests.schedules_for_tests",
    ]
    procs = [
        loopline(*args, env=env, stdout=subprocess.DEVNULL),
        loopline(*args, env=env, stdout=subprocess.DEVNULL),
    ]

    def holder_pid():
        rows = sqlite_rows(embedded_data_dir, "select holder from platform_schedulerlease")
        return int(rows[0][0].split(":")[1]) if rows else None

    def slots():
        rows = sqlite_rows(
            embedded_data_dir,
            "select args_kwargs from django_tasks_database_dbtaskresult where task_path like '%taskdefs.noop'",
        )
        return [json.loads(r[0])["kwargs"]["slot"] for r in rows]

    try:
        wait_for(lambda: len(slots()) >= 3, timeout=30, message="three slots fired")
        active = holder_pid()
        victim = next(p for p in procs if p.pid == active)
        kill_group(victim, signal.SIGKILL)
        before = len(slots())
        wait_for(lambda: len(slots()) >= before + 4, timeout=30, message="the standby to take over")
        survivor = next(p for p in procs if p is not victim)
        assert holder_pid() == survivor.pid
    finally:
        for proc in procs:
            kill_group(proc, signal.SIGTERM)
    fired = sorted(dt.datetime.fromisoformat(s) for s in slots())
    assert len(fired) == len(set(fired)), "no slot fired twice"
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(fired)}
    assert gaps == {1.0}, "no slot skipped, even across the SIGKILL handover (catch_up schedule)"


def test_scheduler_once_and_list(embedded_data_dir):
    env = embedded_env(embedded_data_dir)
    out = subprocess.run(
        [*loopline_cmd(), "scheduler", "--list"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "platform.watchdog" in out and "platform.prune_finished_tasks" in out
    start = time.monotonic()
    out = subprocess.run(
        [*loopline_cmd(), "scheduler", "--once"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "platform.watchdog" in out and time.monotonic() - start < 30


def loopline_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "loopline"]
