"""``loopline worker``: run background tasks with the worker that matches the task backend.

Embedded (``LOOPLINE_TASK_BACKEND=database``): django-tasks-db's worker, plus a heartbeat so tasks of a killed
worker are re-queued. Scale (``CELERY_BROKER_URL`` set): a Celery worker consuming the task queues.
"""

from __future__ import annotations

import os
import socket

from django.core.management.base import BaseCommand, CommandError
from django.utils.crypto import get_random_string


class Command(BaseCommand):
    help = "Run a background worker for the configured task backend (database or Celery)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--queues", default="default", help="Comma-separated queue names (default: default)."
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="Celery: worker processes (default: CPU count). Database: ignored (run more workers).",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="Database: seconds between polls when idle (default: 1).",
        )
        parser.add_argument(
            "--max-tasks",
            type=int,
            default=None,
            help="Database: exit after this many tasks. Celery: recycle each pool process after this many.",
        )
        parser.add_argument("--batch", action="store_true", help="Database: run what is due, then exit.")
        parser.add_argument("--worker-id", default=None, help="Unique worker id (default: generated).")
        parser.add_argument(
            "--pool", default=None, help="Celery: pool implementation (prefork, threads, solo)."
        )

    def handle(self, *args, **opts):
        from django.tasks import task_backends
        from django_tasks_db.backend import DatabaseBackend

        from loopline.platform.celery_backend import CeleryBackend

        backend = task_backends["default"]
        if isinstance(backend, CeleryBackend):
            self.run_celery(opts)
        elif isinstance(backend, DatabaseBackend):
            self.run_database(opts)
        else:
            raise CommandError(
                f"The task backend {type(backend).__name__} runs tasks in-process; there is nothing for a worker to do."
            )

    def run_database(self, opts):
        from django_tasks_db.management.commands.db_worker import Worker

        from loopline.platform.workers import HeartbeatThread, beat, forget, recover_orphaned_tasks

        worker_id = opts["worker_id"] or f"{socket.gethostname()[:30]}-{os.getpid()}-{get_random_string(8)}"
        worker = Worker(
            queue_names=opts["queues"].split(","),
            interval=opts["interval"],
            batch=opts["batch"],
            backend_name="default",
            startup_delay=False,
            max_tasks=opts["max_tasks"],
            worker_id=worker_id,
            excluded_queue_names=[],
        )
        beat(worker_id)
        counts = recover_orphaned_tasks()
        if any(counts.values()):
            self.stderr.write(f"Recovered tasks of dead workers: {counts}")
        thread = HeartbeatThread(worker_id)
        thread.start()
        self.stdout.write(f"Worker {worker_id} processing queues {opts['queues']} (database backend)")
        self.stdout.flush()
        try:
            worker.configure_signals()
            worker.run()
        finally:
            thread.stop()
            thread.join(timeout=5)
            try:
                forget(worker_id)
            except Exception as exc:
                self.stderr.write(f"Could not remove the worker's heartbeat: {exc}")

    def run_celery(self, opts):
        from loopline.config.celery import app
        from loopline.platform.celery_backend import celery_queue

        queues = ",".join(celery_queue(q.strip()) for q in opts["queues"].split(",") if q.strip())
        name = opts["worker_id"] or f"loopline-{os.getpid()}@%h"
        argv = [
            "worker",
            "-Q",
            queues,
            "-n",
            name,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
        if opts["concurrency"]:
            argv += ["--concurrency", str(opts["concurrency"])]
        if opts["pool"]:
            argv += ["--pool", opts["pool"]]
        if opts["max_tasks"]:
            argv += ["--max-tasks-per-child", str(opts["max_tasks"])]
        app.worker_main(argv)
