"""Background tasks of the tracking app (thin: they call the ingester)."""

from __future__ import annotations

import time

from django.tasks import task


@task
def ingest_tracking_hits(max_seconds: float = 20.0) -> int:
    """Safety net when no ``loopline tracking-ingest`` process runs: drain staged hits for up to ``max_seconds``.

    Safe alongside the ingester process: each batch commits hits and their deletion (or watermark) atomically."""
    from .ingest import ingest_pending

    deadline = time.monotonic() + max_seconds
    total = 0
    while time.monotonic() < deadline:
        r = ingest_pending()
        if not r.hits:
            break
        total += r.hits
    return total


@task
def sweep_rate_limits() -> int:
    """Delete expired shared rate-limit counters."""
    from .ratelimit import sweep

    return sweep()


@task
def resolve_visitor_hostnames() -> int:
    """Reverse-DNS names of new visitors, for the company guess on visitor pages."""
    from .services import resolve_visitor_hostnames as resolve

    return resolve()
