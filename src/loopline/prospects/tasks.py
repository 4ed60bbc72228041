"""Background tasks of the prospects app. Thin: they call services / the import engine with ids."""

from __future__ import annotations

from django.tasks import task


@task
def run_import(job_id: int) -> str:
    """Run a configured import Job. Idempotent: a job already started or finished is left alone."""
    from . import importing

    job = importing.run_job(job_id)
    return job.status if job is not None else "missing"
