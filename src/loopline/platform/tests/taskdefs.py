"""Tasks and schedules used by the platform tests (importable by worker and scheduler subprocesses)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.tasks import task

from loopline.platform.tasks import Retry, current_attempt, loopline_task

CALLS: dict[str, int] = {}


@loopline_task(retries=3, backoff=0.01, backoff_cap=0.05)
def flaky(key: str, fail_times: int) -> dict:
    """Fails ``fail_times`` times, then succeeds."""
    CALLS[key] = CALLS.get(key, 0) + 1
    if CALLS[key] <= fail_times:
        raise ConnectionError(f"transient failure {CALLS[key]}")
    return {"calls": CALLS[key], "attempt": current_attempt()}


@loopline_task(retries=1, backoff=0.01)
def always_fails(key: str) -> None:
    CALLS[key] = CALLS.get(key, 0) + 1
    raise ConnectionError("down")


@loopline_task(retries=5, give_up_on=(ValueError,), backoff=0.01)
def bad_input(key: str) -> None:
    CALLS[key] = CALLS.get(key, 0) + 1
    raise ValueError("never retried")


@loopline_task(retries=2, backoff=100)
def asks_retry(key: str) -> str:
    CALLS[key] = CALLS.get(key, 0) + 1
    if CALLS[key] == 1:
        raise Retry("rate limited", delay=0.01)
    return "ok"


@task
def noop(*args, **kwargs) -> None:
    return None


@task
def blocking(marker_dir: str) -> str:
    """Records that it started, waits until ``release`` exists, then records completion (one line per completion)."""
    folder = Path(marker_dir)
    (folder / f"started-{os.getpid()}-{time.monotonic_ns()}").write_text("")
    deadline = time.monotonic() + 120
    while not (folder / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
    with open(folder / "done", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return "finished"
