"""The Celery task backend: rows and messages commit together; duplicates and redeliveries are handled."""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid

import pytest
from django.db import transaction
from django.tasks.exceptions import TaskResultDoesNotExist
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from loopline.platform import celery_backend
from loopline.platform.tests import taskdefs

from .conftest import kill_group, loopline, wait_for
from .test_worker_crash import _scale_env, scale_only

CELERY_TASKS = {
    "default": {"BACKEND": "loopline.platform.celery_backend.CeleryBackend", "QUEUES": ["default"]}
}


@pytest.fixture
def published(settings, monkeypatch):
    settings.TASKS = CELERY_TASKS
    settings.CELERY_BROKER_URL = settings.CELERY_BROKER_URL or "memory://"
    sent: list[tuple] = []
    monkeypatch.setattr(celery_backend, "publish", lambda *args, **kwargs: sent.append((args, kwargs)))
    taskdefs.CALLS.clear()
    return sent


@pytest.mark.django_db
def test_message_is_published_on_commit_only(published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        result = taskdefs.noop.enqueue(7, a="b")
        assert published == []
    assert published == [
        ((result.id, result.task.module_path, [7], {"a": "b"}), {"queue": "default", "eta": None}),
    ]
    assert taskdefs.noop.get_result(result.id).status == "READY"


@pytest.mark.django_db
def test_rolled_back_enqueue_leaves_neither_row_nor_message(published, django_capture_on_commit_callbacks):
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(ZeroDivisionError),
        transaction.atomic(),
    ):
        taskdefs.noop.enqueue()
        1 / 0
    assert published == [] and not DBTaskResult.objects.exists()


@pytest.mark.django_db
def test_execute_runs_once_and_ignores_duplicates(published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        result = taskdefs.flaky.enqueue("x", 0)
    ((args, _),) = published
    celery_backend.execute(*args)
    row = DBTaskResult.objects.get(id=result.id)
    assert row.status == "SUCCESSFUL" and row.return_value == {"calls": 1, "attempt": 1}
    celery_backend.execute(*args)  # a duplicate delivery
    celery_backend.execute(*args, redelivered=True)
    assert taskdefs.CALLS["x"] == 1
    assert taskdefs.flaky.get_result(result.id).return_value == {"calls": 1, "attempt": 1}


@pytest.mark.django_db
def test_running_row_is_taken_over_only_by_a_redelivery(published):
    result = taskdefs.flaky.enqueue("y", 0)
    row = DBTaskResult.objects.get(id=result.id)
    row.claim("celery:lost-host:1")
    args = (result.id, row.task_path, ["y", 0], {})
    celery_backend.execute(*args)  # a plain duplicate: someone is running it
    assert "y" not in taskdefs.CALLS
    celery_backend.execute(*args, redelivered=True)  # the broker says its worker was lost
    row.refresh_from_db()
    assert row.status == "SUCCESSFUL" and len(row.worker_ids) == 2


@pytest.mark.django_db
def test_poison_task_gives_up(published, settings):
    settings.LOOPLINE_TASK_MAX_DELIVERIES = 2
    result = taskdefs.noop.enqueue()
    row = DBTaskResult.objects.get(id=result.id)
    row.claim("w1")
    row.claim("w2")
    celery_backend.execute(result.id, row.task_path, [], {}, redelivered=True)
    row.refresh_from_db()
    assert row.status == "FAILED" and row.exception_class_path.endswith("WorkerLost")


@pytest.mark.django_db
def test_failure_is_recorded_and_retry_enqueued(published):
    result = taskdefs.flaky.enqueue("z", 1)
    celery_backend.execute(result.id, result.task.module_path, ["z", 1], {})
    rows = list(DBTaskResult.objects.order_by("enqueued_at"))
    assert [r.status for r in rows] == ["FAILED", "READY"]
    assert rows[1].run_after > timezone.now() - dt.timedelta(seconds=1)
    assert "ConnectionError" in taskdefs.flaky.get_result(result.id).errors[0].traceback


@pytest.mark.django_db
def test_stalled_rows_are_republished_once_per_window(published):
    result = taskdefs.noop.enqueue()
    published.clear()
    assert celery_backend.republish_stalled() == 0, "a fresh row is left to its message"
    DBTaskResult.objects.filter(id=result.id).update(enqueued_at=timezone.now() - dt.timedelta(hours=1))
    assert celery_backend.republish_stalled() == 1
    assert celery_backend.republish_stalled() == 0
    assert len(published) == 1


@pytest.mark.django_db
def test_unknown_result(published):
    with pytest.raises(TaskResultDoesNotExist):
        taskdefs.noop.get_result(str(uuid.uuid4()))


@pytest.mark.scale
@scale_only
@pytest.mark.django_db(transaction=True)
def test_tasks_run_on_a_real_celery_worker_with_retries_and_eta(settings, monkeypatch, tmp_path):
    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    monkeypatch.setenv("LOOPLINE_CELERY_QUEUE_PREFIX", prefix)
    settings.TASKS = CELERY_TASKS
    worker = loopline(
        "worker",
        "--pool",
        "solo",
        env=_scale_env(prefix),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        flaky = taskdefs.flaky.enqueue("celery", 2)
        later = taskdefs.noop.using(run_after=timezone.now() + dt.timedelta(seconds=2)).enqueue()

        def finished():
            rows = list(DBTaskResult.objects.filter(task_path=flaky.task.module_path).order_by("enqueued_at"))
            return len(rows) == 3 and rows[-1].status == "SUCCESSFUL" and rows

        rows = wait_for(finished, timeout=60, message="the flaky task to succeed on its third attempt")
        assert [r.status for r in rows] == ["FAILED", "FAILED", "SUCCESSFUL"]
        assert rows[-1].return_value == {"calls": 3, "attempt": 3}
        wait_for(
            lambda: taskdefs.noop.get_result(later.id).status == "SUCCESSFUL", timeout=30, message="eta task"
        )
        assert taskdefs.noop.get_result(later.id).started_at >= later.task.run_after
    finally:
        kill_group(worker)
