"""The Celery application for scale mode.

Celery carries only one task, ``loopline.run_task``: it runs a ``django.tasks`` task by its stored result id (see
``loopline.platform.celery_backend``). Application code never defines Celery tasks; it uses ``django.tasks``.

Start workers with ``loopline worker`` (it picks Celery when ``CELERY_BROKER_URL`` is set), or directly:
``celery -A loopline.config.celery worker -Q default``.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopline.config.settings")

RUN_TASK_NAME = "loopline.run_task"

app = Celery("loopline")
# Settings named CELERY_* in Django settings configure Celery (CELERY_BROKER_URL, CELERY_TASK_ACKS_LATE...).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    # Defaults that make "a killed worker loses no task" true; Django settings may not override them away.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="default",
    task_ignore_result=True,  # results live in the database row, not in a Celery result backend
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    # Redis only: an unacknowledged message is redelivered after this long; keep it above the longest task.
    broker_transport_options={
        "visibility_timeout": int(os.environ.get("LOOPLINE_CELERY_VISIBILITY_TIMEOUT", "3600"))
    },
)


@app.task(name=RUN_TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_task(self, result_id: str | None, task_path: str, args: list, kwargs: dict):
    from loopline.platform.celery_backend import execute

    delivery = self.request.delivery_info or {}
    return execute(result_id, task_path, args, kwargs, redelivered=bool(delivery.get("redelivered")))
