"""[M20]/[M21] A program worker killed with SIGKILL in the middle of a batch loses nothing and repeats nothing.

The real ``loopline programs worker`` runs in its own process (on an embedded SQLite data folder, and on the
PostgreSQL test database when the tests run in the scale profile); it is SIGKILLed while it holds a claimed batch
(checked: members claimed and not yet advanced), restarted, and every prospect must have been advanced through each
step exactly once: score +1 once, grade a third up once, one ledger row per step, tagged once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
from django.conf import settings

from loopline.platform.tests.conftest import (
    embedded_env,
    kill_group,
    loopline,
    run_python,
    sqlite_rows,
    wait_for,
)

PROSPECTS = 300
BATCH = 10
MEMBERS = "programs_programmember"
LEDGER = "programs_programsteplog"


def _worker(env):
    # A short lease so the killed worker's batch is claimed again soon after the restart.
    return loopline(
        "programs",
        "worker",
        "--batch-size",
        str(BATCH),
        "--lease",
        "3",
        "--idle",
        "0.1",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def embedded(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    env = embedded_env(folder)
    subprocess.run([sys.executable, "-m", "loopline", "migrate", "-v0"], env=env, check=True, timeout=300)

    def count(sql: str, params: tuple = ()) -> int:
        return sqlite_rows(folder, sql, params)[0][0]

    return env, count


@pytest.fixture
def postgresql(transactional_db):
    """The worker on the PostgreSQL test database (committed rows, emptied after the test)."""
    from django.db import connection

    db = connection.settings_dict
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    url = f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "CELERY_BROKER_URL"}
    env.update(
        {
            "DATABASE_URL": url,
            "SECRET_KEY": settings.SECRET_KEY,
            "LOOPLINE_TASK_BACKEND": "database",
            "PYTHONUNBUFFERED": "1",
        }
    )

    def count(sql: str, params: tuple = ()) -> int:
        with connection.cursor() as cursor:
            cursor.execute(sql.replace("?", "%s"), params)
            return cursor.fetchone()[0]

    return env, count


def _kill_mid_batch_then_finish(env: dict[str, str], count: Callable[..., int]) -> None:
    ids = json.loads(
        run_python(
            f"from loopline.automation.programs.tests import killdefs\nprint(killdefs.setup({PROSPECTS}))",
            env,
        ).splitlines()[-1]
    )
    assert ids["entered"] == PROSPECTS
    first = ids["first"]
    done_first = f"SELECT COUNT(*) FROM {LEDGER} WHERE step_id = ?"
    in_flight = (
        f"SELECT COUNT(*) FROM {MEMBERS} WHERE step_id = ? AND status = 'active' AND locked_until IS NOT NULL"
    )

    kills_mid_batch = 0
    for _attempt in range(6):
        before = count(done_first, (first,))
        if before >= PROSPECTS - 2 * BATCH:
            break  # too little left to kill in the middle of
        worker = _worker(env)
        try:
            wait_for(
                lambda b=before: count(done_first, (first,)) >= b + 2 * BATCH,
                timeout=180,
                interval=0.02,
                message="the worker to advance two more batches",
            )
        finally:
            kill_group(worker, signal.SIGKILL)  # like a power cut: no cleanup
        # Claimed (the claim commits first) but not advanced: the kill landed inside a batch's transaction.
        if count(in_flight, (first,)):
            kills_mid_batch += 1
            break
    assert kills_mid_batch, "no kill landed in the middle of a batch"
    assert count(done_first, (first,)) < PROSPECTS

    worker = _worker(env)
    try:
        wait_for(
            lambda: count(f"SELECT COUNT(*) FROM {MEMBERS} WHERE status = 'finished'") == PROSPECTS,
            timeout=300,
            interval=0.2,
            message="every prospect to finish the program after the restart",
        )
    finally:
        kill_group(worker, signal.SIGTERM)

    summary = json.loads(
        run_python(
            f"from loopline.automation.programs.tests import killdefs\n"
            f"print(killdefs.summary({ids['program']}))",
            env,
        ).splitlines()[-1]
    )
    assert summary["members"] == PROSPECTS
    assert summary["statuses"] == {"finished": PROSPECTS}
    assert summary["scores"] == {"1": PROSPECTS}  # set-based action: once, never twice, never lost
    assert summary["manual_thirds"] == {"1": PROSPECTS}  # per-prospect action: once each
    assert summary["grades"] == {"D+": PROSPECTS}
    assert summary["tagged"] == PROSPECTS
    ledger = summary["ledger"]  # one row per (step, prospect): the two action steps and the end
    assert ledger[str(first)] == ledger[str(ids["second"])] == PROSPECTS
    assert sorted(ledger.values()) == [PROSPECTS] * 3


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_mid_batch_then_restart_advances_everyone_exactly_once(embedded):
    _kill_mid_batch_then_finish(*embedded)


@pytest.mark.slow
@pytest.mark.scale
@pytest.mark.timeout(900)
@pytest.mark.skipif(settings.PROFILE != "scale", reason="needs DATABASE_URL=postgres://... (scale profile)")
def test_sigkill_mid_batch_on_postgresql(postgresql):
    _kill_mid_batch_then_finish(*postgresql)
