"""Sync run records ([R29]): counters per run; a run that did nothing says why. Idle poll runs are folded into the
previous idle run of the same kind so a quiet connector does not write a row every few seconds."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.utils import timezone

from ..engine import RunCounters
from ..models import Connector, SyncRun
from . import budget

logger = logging.getLogger("loopline.connector.sync")


@dataclass
class RunRecorder:
    connector: Connector
    kind: str
    counters: RunCounters = field(default_factory=RunCounters)
    api_calls: int = 0
    run: SyncRun | None = None


def _idle(counters: RunCounters) -> bool:
    return counters.did_nothing and counters.fetched == 0 and not counters.skipped and not counters.unchanged


@contextmanager
def sync_run(connector: Connector, kind: str, *, client=None) -> Iterator[RunRecorder]:
    """Record one run. The API calls made through ``client`` during the run are counted and persisted ([R27])."""
    recorder = RunRecorder(connector, kind)
    calls_before = client.usage.calls if client is not None else 0
    started = timezone.now()
    error: BaseException | None = None
    try:
        yield recorder
    except BaseException as exc:
        error = exc
        raise
    finally:
        calls = (client.usage.calls - calls_before) if client is not None else recorder.api_calls
        recorder.api_calls = calls
        if client is not None:
            budget.record_calls(connector, calls, client.usage.used, client.usage.max, kind=kind)
        counters = recorder.counters
        if error is not None and not counters.note:
            counters.note = f"stopped by an error: {error}"[:200]
        summary = counters.summary()
        now = timezone.now()
        previous = SyncRun.objects.filter(connector=connector, kind=kind).order_by("-started_at", "-id").first()
        if (error is None and _idle(counters) and previous is not None
                and _idle(RunCounters.from_dict(previous.counters or {}))):
            idle_polls = int((previous.counters or {}).get("idle_runs", 1)) + 1
            data = {**counters.as_dict(), "idle_runs": idle_polls,
                    "note": counters.note or f"no changes since {previous.started_at:%H:%M:%S} UTC"}
            SyncRun.objects.filter(pk=previous.pk).update(
                finished_at=now, counters=data, api_calls=previous.api_calls + calls,
                note=f"nothing to do: {data['note']} ({idle_polls} runs)"[:300])
            recorder.run = previous
        else:
            recorder.run = SyncRun.objects.create(
                connector=connector, kind=kind, finished_at=now, counters=counters.as_dict(), api_calls=calls,
                note=summary[:300])
            SyncRun.objects.filter(pk=recorder.run.pk).update(started_at=started)
        if not _idle(counters) or error is not None:
            logger.info("connector %s %s run: %s (%s API calls)", connector.pk, kind, summary, calls, extra={"connector": connector.pk, "kind": kind, "summary": summary,
                                                     "api_calls": calls, "error": str(error or "")})
