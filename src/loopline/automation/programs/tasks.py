"""Program background work (thin: the engine is ``runner``)."""

from __future__ import annotations

import datetime as dt

from loopline.platform.tasks import loopline_task

TICK_EVERY = dt.timedelta(seconds=5)
TICK_BUDGET_SECONDS = 4.0  # below TICK_EVERY, so ticks never pile up on a busy worker


@loopline_task(retries=0)
def programs_tick() -> dict[str, int]:
    """Move due prospects of every running program, for up to ``TICK_BUDGET_SECONDS`` (the next tick continues)."""
    from .runner import run_due

    return run_due(time_budget=TICK_BUDGET_SECONDS)


def register_schedules() -> None:
    from loopline.platform.scheduler import register_schedule

    register_schedule("programs.tick", every=TICK_EVERY, task=programs_tick)
