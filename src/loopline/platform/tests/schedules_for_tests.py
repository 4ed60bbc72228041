"""Imported by scheduler subprocesses in tests (``loopline scheduler --import ...``): a fast catch-up schedule."""

import datetime as dt

from loopline.platform.scheduler import register_schedule, schedules, unregister_schedule
from loopline.platform.tests.taskdefs import noop

# Only this schedule runs in the test database, so the built-ins and other apps' schedules add no noise.
for schedule in schedules():
    unregister_schedule(schedule.name)
register_schedule(
    "test.every_second", every=dt.timedelta(seconds=1), task=noop, pass_slot=True, catch_up=True
)
