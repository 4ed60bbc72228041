"""Thin task wrappers: a send runs as tasks that any number of workers (database or Celery) may run at once."""

from __future__ import annotations

from django.tasks import task

from loopline.platform.tasks import loopline_task


@loopline_task(retries=3, backoff=10)
def start_send(send_id: int) -> int:
    from . import services

    return services.start_send(send_id)


@loopline_task(retries=5, backoff=10)
def process_send(send_id: int) -> int:
    from . import services

    progress = services.process_send(send_id, max_seconds=600)
    return progress.sent


@task
def start_due_sends() -> int:
    from . import services

    return services.start_due_sends()
