"""Task helpers: enqueue on commit, retries with backoff, job progress, recovery of a dead worker's tasks."""

from __future__ import annotations

import datetime as dt
import itertools
import time

import pytest
from django.db import transaction
from django.tasks.base import TaskResultStatus
from django.utils import timezone
from django_tasks_db.management.commands.db_worker import Worker
from django_tasks_db.models import DBTaskResult

from loopline.platform import tasks as task_helpers
from loopline.platform.models import Job, WorkerHeartbeat
from loopline.platform.scheduler import watchdog
from loopline.platform.tests import taskdefs
from loopline.platform.workers import beat, recover_orphaned_tasks

DB_TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
IMMEDIATE = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}


@pytest.fixture
def db_tasks(settings):
    settings.TASKS = DB_TASKS


@pytest.fixture(autouse=True)
def reset_calls():
    taskdefs.CALLS.clear()


def drain(timeout: float = 10.0) -> None:
    """Run due tasks in this process until none is READY (waiting out short run_after delays)."""
    worker = Worker(
        queue_names=["default"],
        interval=0,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="test-worker",
        excluded_queue_names=[],
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = DBTaskResult.objects.ready().first()
        if row is None:
            if not DBTaskResult.objects.filter(status=TaskResultStatus.READY).exists():
                return
            time.sleep(0.01)
            continue
        row.claim(worker.worker_id)
        worker.run_task(row)
    raise AssertionError("tasks still pending")


# --- enqueue on commit -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_enqueue_on_commit_enqueues_after_commit(db_tasks, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        task_helpers.enqueue_on_commit(taskdefs.noop, 1, x="y")
        assert not DBTaskResult.objects.exists(), "nothing enqueued before the commit"
    assert len(callbacks) == 1
    row = DBTaskResult.objects.get()
    assert row.args_kwargs == {"args": [1], "kwargs": {"x": "y"}}


@pytest.mark.django_db
def test_rolled_back_transaction_enqueues_nothing(db_tasks, django_capture_on_commit_callbacks):
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(ZeroDivisionError),
        transaction.atomic(),
    ):
        task_helpers.enqueue_on_commit(taskdefs.noop, 1)
        1 / 0
    assert callbacks == []
    assert not DBTaskResult.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_enqueues_nothing_for_real(db_tasks):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        task_helpers.enqueue_on_commit(taskdefs.noop, 1)
        1 / 0
    assert not DBTaskResult.objects.exists()
    with transaction.atomic():
        task_helpers.enqueue_on_commit(taskdefs.noop, 2)
    assert DBTaskResult.objects.count() == 1


@pytest.mark.django_db
def test_enqueue_on_commit_rejects_objects(db_tasks, bu):
    with pytest.raises(TypeError, match="pass ids, not objects"):
        task_helpers.enqueue_on_commit(taskdefs.noop, bu)


# --- retries ------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_task_fails_twice_then_succeeds_with_backoff(db_tasks):
    first = taskdefs.flaky.enqueue("k", 2)
    drain()
    rows = list(DBTaskResult.objects.order_by("enqueued_at"))
    assert [r.status for r in rows] == ["FAILED", "FAILED", "SUCCESSFUL"]
    assert str(rows[0].id) == first.id
    assert [r.args_kwargs["kwargs"].get(task_helpers.ATTEMPT_KWARG, 1) for r in rows] == [1, 2, 3]
    # Each retry waits: it was deferred with run_after after the failure.
    for failed, retry in itertools.pairwise(rows):
        assert retry.run_after > failed.enqueued_at
        assert "ConnectionError" in failed.exception_class_path
    assert rows[-1].return_value == {"calls": 3, "attempt": 3}


@pytest.mark.django_db
def test_retries_give_up_after_the_limit(db_tasks):
    taskdefs.always_fails.enqueue("g")
    drain()
    assert list(DBTaskResult.objects.values_list("status", flat=True)) == ["FAILED", "FAILED"]
    assert taskdefs.CALLS["g"] == 2


@pytest.mark.django_db
def test_give_up_on_is_not_retried(db_tasks):
    taskdefs.bad_input.enqueue("v")
    drain()
    assert DBTaskResult.objects.get().status == "FAILED"
    assert taskdefs.CALLS["v"] == 1


@pytest.mark.django_db
def test_retry_exception_sets_the_delay(db_tasks):
    taskdefs.asks_retry.enqueue("r")
    rows_before = timezone.now()
    drain()
    rows = list(DBTaskResult.objects.order_by("enqueued_at"))
    assert [r.status for r in rows] == ["FAILED", "SUCCESSFUL"]
    assert rows[1].run_after < rows_before + dt.timedelta(seconds=5), "Retry(delay=0.01) beat backoff=100"


def test_immediate_backend_retries_in_line(settings):
    settings.TASKS = IMMEDIATE
    result = taskdefs.flaky.enqueue("i", 2)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"calls": 3, "attempt": 3}


def test_backoff_grows_and_is_jittered():
    from loopline.platform.queues import backoff_delay

    samples = [backoff_delay(1, base=1) for _ in range(200)]
    assert all(0.5 <= s <= 1.0 for s in samples) and len(set(samples)) > 100
    assert all(4 <= backoff_delay(4, base=1) <= 8 for _ in range(50))
    assert backoff_delay(50, base=1, cap=600) <= 600
    assert backoff_delay(10_000, base=1, cap=60) <= 60


# --- dead worker recovery -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_running_task_of_a_dead_worker_is_requeued(db_tasks):
    result = taskdefs.noop.enqueue()
    row = DBTaskResult.objects.get(id=result.id)
    beat("dead-worker")
    WorkerHeartbeat.objects.filter(worker_id="dead-worker").update(
        seen_at=timezone.now() - dt.timedelta(minutes=5)
    )
    row.claim("dead-worker")
    alive = taskdefs.noop.enqueue()
    alive_row = DBTaskResult.objects.get(id=alive.id)
    beat("live-worker")
    alive_row.claim("live-worker")

    assert recover_orphaned_tasks() == {"requeued": 1, "failed": 0}
    assert DBTaskResult.objects.get(id=result.id).status == "READY"
    assert DBTaskResult.objects.get(id=alive.id).status == "RUNNING"
    assert recover_orphaned_tasks() == {"requeued": 0, "failed": 0}, "idempotent"


@pytest.mark.django_db
def test_worker_on_this_host_whose_process_is_gone_is_dead_at_once(db_tasks):
    result = taskdefs.noop.enqueue()
    beat("gone")
    WorkerHeartbeat.objects.filter(worker_id="gone").update(pid=2**22 + 12345)  # no such process
    DBTaskResult.objects.get(id=result.id).claim("gone")
    assert recover_orphaned_tasks()["requeued"] == 1


@pytest.mark.django_db
def test_poison_task_is_failed_after_too_many_lost_workers(db_tasks, settings):
    settings.LOOPLINE_TASK_MAX_DELIVERIES = 3
    result = taskdefs.noop.enqueue()
    row = DBTaskResult.objects.get(id=result.id)
    for n in range(3):
        beat(f"w{n}")
        WorkerHeartbeat.objects.filter(worker_id=f"w{n}").update(
            seen_at=timezone.now() - dt.timedelta(hours=1)
        )
        row.refresh_from_db()
        row.claim(f"w{n}")
        counts = recover_orphaned_tasks()
    assert counts == {"requeued": 0, "failed": 1}
    row.refresh_from_db()
    assert row.status == "FAILED" and row.exception_class_path.endswith("WorkerLost")


@pytest.mark.django_db
def test_task_of_unknown_worker_is_only_recovered_after_a_long_time(db_tasks):
    result = taskdefs.noop.enqueue()
    row = DBTaskResult.objects.get(id=result.id)
    row.claim("db_worker-without-heartbeat")
    assert recover_orphaned_tasks()["requeued"] == 0
    DBTaskResult.objects.filter(id=row.id).update(started_at=timezone.now() - dt.timedelta(hours=2))
    assert recover_orphaned_tasks()["requeued"] == 1


@pytest.mark.django_db
def test_prune_finished_tasks(db_tasks):
    old = taskdefs.noop.enqueue()
    new = taskdefs.noop.enqueue()
    drain()
    DBTaskResult.objects.filter(id=old.id).update(finished_at=timezone.now() - dt.timedelta(days=8))
    assert task_helpers.prune_finished_tasks.call() == 1
    assert list(DBTaskResult.objects.values_list("id", flat=True)) == [DBTaskResult.objects.get(id=new.id).id]


# --- jobs -----------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_job_progress_helpers(bu, admin_user):
    job = task_helpers.create_job(bu, "import", title="Import contacts.csv", created_by=admin_user)
    assert job.status == Job.Status.QUEUED
    with task_helpers.running_job(job.pk, total=10) as running:
        assert running.status == Job.Status.RUNNING and running.started_at
        task_helpers.advance(running, 4)
        task_helpers.advance(running.pk, 5, failed=1)
        assert Job.objects.get(pk=job.pk).percent == 100
    job.refresh_from_db()
    assert (job.status, job.done, job.failed, job.total) == (Job.Status.SUCCEEDED, 9, 1, 10)
    assert job.finished_at and job.heartbeat_at


@pytest.mark.django_db
def test_job_failure_is_recorded(bu):
    job = task_helpers.create_job(bu, "rescore")
    with pytest.raises(RuntimeError), task_helpers.running_job(job):
        raise RuntimeError("boom")
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "boom" in job.error


@pytest.mark.django_db
def test_watchdog_fails_jobs_whose_heartbeat_stopped(bu, db_tasks):
    stalled = task_helpers.start_job(task_helpers.create_job(bu, "sync"))
    alive = task_helpers.start_job(task_helpers.create_job(bu, "sync"))
    Job.objects.filter(pk=stalled.pk).update(heartbeat_at=timezone.now() - dt.timedelta(hours=1))
    counts = watchdog()
    assert counts["stalled_jobs"] == 1
    stalled.refresh_from_db()
    alive.refresh_from_db()
    assert stalled.status == Job.Status.FAILED and "stopped reporting progress" in stalled.error
    assert alive.status == Job.Status.RUNNING
