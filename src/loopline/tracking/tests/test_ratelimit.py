"""Shared rate limits: the state lives in the database, so every server process sees the same counts."""

from __future__ import annotations

import pytest
from django.db import DatabaseError

from loopline.tracking import ratelimit
from loopline.tracking.models import RateWindow

pytestmark = pytest.mark.django_db


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_two_processes_share_one_limit():
    clock = Clock()
    # Two limiter instances stand for two server processes: only the database is shared.
    a, b = ratelimit.SharedRateLimiter(clock=clock), ratelimit.SharedRateLimiter(clock=clock)
    results = [lim.allow("form:1:10.0.0.1", rate=10 / 60, burst=10) for lim in (a, b) * 8]
    assert results.count(True) == 10
    assert results[10:] == [False] * 6
    # Another key has its own allowance.
    assert a.allow("form:1:10.0.0.2", rate=10 / 60, burst=10)


def test_sliding_window_refills_gradually():
    clock = Clock(6000.0)  # start of a 60 s window
    lim = ratelimit.SharedRateLimiter(clock=clock)
    assert sum(lim.allow("k", rate=1, burst=60) for _ in range(70)) == 60
    clock.now += 60  # next window: the whole previous window still overlaps
    assert not lim.allow("k", rate=1, burst=60)
    assert RateWindow.objects.get(window_no=101).used == 0  # refused requests do not count
    clock.now += 30  # half of it has slid out: about half the allowance is back
    granted = sum(lim.allow("k", rate=1, burst=60) for _ in range(60))
    assert 29 <= granted <= 31


def test_busy_keys_lease_allowance_in_chunks():
    clock = Clock()
    lim = ratelimit.SharedRateLimiter(clock=clock)
    assert ratelimit.SharedRateLimiter.lease_size(10_000) == 100
    assert all(lim.allow("hit:1.2.3.4", rate=1000, burst=10_000) for _ in range(1000))
    assert lim.round_trips == 10  # one database round trip per 100 requests
    other = ratelimit.SharedRateLimiter(clock=clock)
    assert other.allow("hit:1.2.3.4", rate=1000, burst=10_000)
    assert RateWindow.objects.get().used == 1100  # the other process sees what the first claimed


def test_limit_holds_across_processes_with_leases():
    clock = Clock()
    limiters = [ratelimit.SharedRateLimiter(clock=clock) for _ in range(4)]
    granted = sum(limiters[i % 4].allow("hit:x", rate=500, burst=5000) for i in range(8000))
    # At most one lease (1% of the limit) of slack per process.
    assert 5000 - 4 * 50 <= granted <= 5000


def test_database_failure_falls_back_to_the_process_limit(monkeypatch):
    lim = ratelimit.SharedRateLimiter()

    def broken(*args, **kwargs):
        raise DatabaseError("down")

    monkeypatch.setattr(lim, "_claim", broken)
    assert sum(lim.allow("k", rate=1, burst=3) for _ in range(5)) == 3


def test_zero_or_negative_limits_refuse():
    lim = ratelimit.SharedRateLimiter()
    assert not lim.allow("k", rate=0, burst=10)
    assert not lim.allow("k", rate=1, burst=0)


def test_sweep_deletes_expired_counters():
    clock = Clock()
    lim = ratelimit.SharedRateLimiter(clock=clock)
    lim.allow("a", rate=1, burst=10)
    assert RateWindow.objects.count() == 1
    assert ratelimit.sweep(now=clock.now) == 0
    assert ratelimit.sweep(now=clock.now + 100) == 1


def test_file_store_is_shared_by_processes_of_one_host(settings, tmp_path):
    """Embedded mode keeps counters in a SQLite file of their own; a second process sees the same counts."""
    import subprocess
    import sys

    settings.TRACKING_RATELIMIT_STORE = "file"
    settings.TRACKING_RATELIMIT_FILE = str(tmp_path / "ratelimit.sqlite3")
    lim = ratelimit.SharedRateLimiter(clock=Clock())
    assert sum(lim.allow("form:9:10.0.0.9", rate=5 / 60, burst=5) for _ in range(3)) == 3
    # Another OS process claims from the same file with the same (frozen) clock.
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'src'); import django; django.setup();"
        "from loopline.tracking import ratelimit as r;"
        f"s = r.FileStore(Path({str(tmp_path / 'ratelimit.sqlite3')!r}));"
        f"print(s.claim('form:9:10.0.0.9|60', {1_000_000 // 60}, 1, 0)[1])"
    )
    # Importing ratelimit needs Django settings (models); run it the way the app does.
    env = {"DJANGO_SETTINGS_MODULE": "loopline.config.settings", "SECRET_KEY": "x",
           "LOOPLINE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=_repo(),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "4"  # 3 claimed here + 1 there
    assert sum(lim.allow("form:9:10.0.0.9", rate=5 / 60, burst=5) for _ in range(3)) == 1
    assert ratelimit.sweep(now=2_000_000) == 1
    assert not RateWindow.objects.exists()  # nothing went to the main database


def _repo():
    from pathlib import Path

    return str(Path(__file__).resolve().parents[4])
