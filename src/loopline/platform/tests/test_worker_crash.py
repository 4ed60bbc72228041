"""A killed worker loses no task: kill -9 a worker mid-task, start another, the task completes exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection

from .conftest import embedded_env, kill_group, loopline, run_python, sqlite_rows, wait_for

TABLE = "django_tasks_database_dbtaskresult"


def _started(markers) -> list:
    return sorted(p.name for p in markers.iterdir() if p.name.startswith("started-"))


def test_embedded_worker_killed_mid_task_is_recovered(embedded_data_dir, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    env = embedded_env(
        embedded_data_dir, LOOPLINE_WORKER_HEARTBEAT_SECONDS="0.5", LOOPLINE_WORKER_STALE_SECONDS="5"
    )
    task_id = run_python(
        f"from loopline.platform.tests.taskdefs import blocking\nprint(blocking.enqueue({str(markers)!r}).id)",
        env,
    )
    first = loopline("worker", "--interval", "0.1", env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: _started(markers), message="the task to start on worker 1")
        status = sqlite_rows(
            embedded_data_dir, f"select status from {TABLE} where id = ?", (task_id.replace("-", ""),)
        )
        assert status == [("RUNNING",)]
    finally:
        kill_group(first, signal.SIGKILL)  # no cleanup, no graceful shutdown: like a power cut
    (markers / "release").write_text("")
    second = loopline("worker", "--interval", "0.1", env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: sqlite_rows(embedded_data_dir, f"select status from {TABLE}")[0][0] == "SUCCESSFUL",
            timeout=30,
            message="the task to be recovered and finished by worker 2",
        )
    finally:
        kill_group(second, signal.SIGTERM)
    ((status, worker_ids, value),) = sqlite_rows(
        embedded_data_dir, f"select status, worker_ids, return_value from {TABLE}"
    )
    assert status == "SUCCESSFUL"
    assert json.loads(value) == "finished"
    assert len(json.loads(worker_ids)) == 2, "claimed by the killed worker, then by the second one"
    assert len(_started(markers)) == 2, "at-least-once: the interrupted attempt ran again"
    assert (markers / "done").read_text().splitlines() == [(markers / "done").read_text().split()[0]], (
        "the task completed exactly once"
    )


def test_graceful_stop_lets_the_running_task_finish(embedded_data_dir, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    env = embedded_env(embedded_data_dir)
    run_python(
        f"from loopline.platform.tests.taskdefs import blocking\nblocking.enqueue({str(markers)!r})", env
    )
    worker = loopline("worker", "--interval", "0.1", env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: _started(markers), message="the task to start")
        os.killpg(worker.pid, signal.SIGTERM)
        time.sleep(0.3)
        assert worker.poll() is None, "the worker waits for its current task"
        (markers / "release").write_text("")
        assert worker.wait(timeout=20) == 0
    finally:
        kill_group(worker)
    assert sqlite_rows(embedded_data_dir, f"select status from {TABLE}") == [("SUCCESSFUL",)]
    assert sqlite_rows(embedded_data_dir, "select count(*) from platform_workerheartbeat") == [(0,)]


# --- Scale mode: Celery on RabbitMQ (or Redis) with PostgreSQL --------------------------------------------------------

scale_only = pytest.mark.skipif(
    not (settings.PROFILE == "scale" and settings.CELERY_BROKER_URL),
    reason="needs DATABASE_URL=postgres://... and CELERY_BROKER_URL (scale mode)",
)


def _scale_env(queue_prefix: str) -> dict[str, str]:
    db = connection.settings_dict
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    url = f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        {
            "DATABASE_URL": url,
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "LOOPLINE_TASK_BACKEND": "celery",
            "LOOPLINE_CELERY_QUEUE_PREFIX": queue_prefix,
            "SECRET_KEY": settings.SECRET_KEY,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def celery_backend(settings, monkeypatch):
    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    monkeypatch.setenv("LOOPLINE_CELERY_QUEUE_PREFIX", prefix)
    settings.TASKS = {
        "default": {"BACKEND": "loopline.platform.celery_backend.CeleryBackend", "QUEUES": ["default"]}
    }
    return prefix


@pytest.mark.scale
@scale_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kill", ["whole-worker", "pool-child"])
def test_celery_worker_killed_mid_task_is_redelivered(celery_backend, tmp_path, kill):
    from django_tasks_db.models import DBTaskResult

    from loopline.platform.tests.taskdefs import blocking

    markers = tmp_path / "markers"
    markers.mkdir()
    env = _scale_env(celery_backend)
    pool = ["--pool", "solo"] if kill == "whole-worker" else ["--pool", "prefork", "--concurrency", "1"]
    first = loopline("worker", *pool, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        result = blocking.enqueue(str(markers))
        wait_for(lambda: _started(markers), timeout=60, message="the task to start on the first worker")
        assert DBTaskResult.objects.get(id=result.id).status == "RUNNING"
        if kill == "whole-worker":
            kill_group(first, signal.SIGKILL)
            second = loopline("worker", *pool, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            child_pid = int(_started(markers)[0].split("-")[1])
            assert child_pid != first.pid
            os.kill(child_pid, signal.SIGKILL)  # the pool process dies; the worker rejects the message back
        wait_for(lambda: len(_started(markers)) == 2, timeout=60, message="the task to be redelivered")
        (markers / "release").write_text("")
        wait_for(
            lambda: DBTaskResult.objects.get(id=result.id).status == "SUCCESSFUL",
            timeout=60,
            message="the redelivered task to finish",
        )
    finally:
        for proc in (first, second):
            if proc is not None:
                kill_group(proc, signal.SIGKILL)
    row = DBTaskResult.objects.get(id=result.id)
    assert row.return_value == "finished"
    assert len(row.worker_ids) == 2
    assert len((markers / "done").read_text().splitlines()) == 1, "completed exactly once"
    assert blocking.get_result(result.id).status == "SUCCESSFUL"
