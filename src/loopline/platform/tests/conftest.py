"""Helpers for tests that start real worker, scheduler and web processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRUBBED = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "LOOPLINE_TASK_BACKEND",
    "LOOPLINE_TEST_SQLITE",
    "DJANGO_SETTINGS_MODULE",
)


def embedded_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess running Loopline embedded on its own SQLite file in ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED and not k.startswith("PYTEST_")}
    env.update(
        {
            "LOOPLINE_DATA_DIR": str(data_dir),
            "LOOPLINE_TASK_BACKEND": "database",
            "LOOPLINE_LOG_FORMAT": "console",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


def loopline(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    """Start ``loopline <args>`` in its own session, so a test can kill it and all its children."""
    return subprocess.Popen(
        [sys.executable, "-m", "loopline", *args], env=env, start_new_session=True, **kwargs
    )


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory) -> Path:
    """An embedded data folder migrated once per session; tests copy it."""
    folder = tmp_path_factory.mktemp("loopline-template")
    subprocess.run(
        [sys.executable, "-m", "loopline", "migrate", "-v0"],
        env=embedded_env(folder),
        check=True,
        timeout=120,
    )
    return folder


@pytest.fixture
def embedded_data_dir(tmp_path, migrated_template) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(migrated_template, folder)
    return folder


def sqlite_rows(data_dir: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(data_dir / "loopline.sqlite3", timeout=20)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def run_python(code: str, env: dict[str, str]) -> str:
    """Run Django code in a subprocess with the given environment; returns its stdout."""
    prelude = "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'loopline.config.settings'); django.setup()\n"
    out = subprocess.run(
        [sys.executable, "-c", prelude + code],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()
