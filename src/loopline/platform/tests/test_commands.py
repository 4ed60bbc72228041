"""createadmin, demo-data and ``loopline run``."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from loopline.accounts.access import Access
from loopline.accounts.models import BusinessUnit, Membership, User
from loopline.campaigns.models import Campaign
from loopline.prospects.models import Activity, CustomField, Prospect, ProspectTag

from .conftest import embedded_env, kill_group, loopline, wait_for


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_createadmin_creates_then_updates(data_dir):
    out = run("createadmin", "--email", "Boss@Example.com", "--bu", "Acme")
    assert "Created administrator of business unit 'Acme'" in out
    password = out.split("password:")[1].strip()
    user = User.objects.get(email="boss@example.com")
    assert user.check_password(password)
    membership = Membership.objects.get(user=user)
    assert membership.bu.name == "Acme" and membership.role.key == "administrator"
    assert Access.for_user(user, membership.bu).is_admin

    out = run("createadmin", "--email", "boss@example.com", "--bu", "Acme")
    assert "Updated" in out and "(unchanged)" in out
    assert User.objects.get(email="boss@example.com").check_password(password)

    run(
        "createadmin", "--email", "boss@example.com", "--bu", "acme", "--password", "a-much-better-passphrase"
    )
    assert User.objects.get(email="boss@example.com").check_password("a-much-better-passphrase")
    assert BusinessUnit.objects.count() == 1 and Membership.objects.count() == 1


@pytest.mark.django_db
def test_createadmin_rejects_bad_input(data_dir):
    with pytest.raises(CommandError, match="not a valid email"):
        run("createadmin", "--email", "not-an-email")
    with pytest.raises(CommandError, match="Password rejected"):
        run("createadmin", "--email", "a@example.com", "--password", "short")
    run("createadmin", "--email", "a@example.com", "--bu", "One")
    run("createadmin", "--email", "b@example.com", "--bu", "Two")
    with pytest.raises(CommandError, match="--bu"):
        run("createadmin", "--email", "c@example.com")


@pytest.mark.django_db
def test_demo_data_is_complete_and_idempotent(data_dir):
    out = run("demo-data", "--prospects", "40")
    assert "40 prospects (40 new)" in out
    bu = BusinessUnit.objects.get(slug="demo")
    roles = dict(Membership.objects.filter(bu=bu).values_list("user__email", "role__key"))
    assert roles == {
        "admin@demo.loopline.test": "administrator",
        "marketing@demo.loopline.test": "marketing",
        "manager@demo.loopline.test": "sales_manager",
        "sales@demo.loopline.test": "sales",
    }
    creds = json.loads((data_dir / "demo_admin.json").read_text())
    assert (data_dir / "demo_admin.json").stat().st_mode & 0o777 == 0o600
    for email in roles:
        assert User.objects.get(email=email).check_password(creds["password"])
    assert creds["password"] in out

    sales = User.objects.get(email="sales@demo.loopline.test")
    assert Prospect.objects.filter(bu=bu, assigned_user=sales).count() > 0, (
        "the sales user has prospects to see"
    )
    assert Campaign.objects.filter(bu=bu).count() >= 3
    assert CustomField.objects.filter(bu=bu).count() >= 3
    assert ProspectTag.objects.filter(prospect__bu=bu).exists()
    assert Activity.objects.filter(bu=bu).count() > 40
    sample = Prospect.objects.filter(bu=bu).first()
    assert sample.first_name and sample.last_name and sample.company and sample.job_title and sample.email

    counts = (
        Prospect.objects.count(),
        Activity.objects.count(),
        Campaign.objects.count(),
        User.objects.count(),
    )
    out = run("demo-data", "--prospects", "40")
    assert "40 prospects (0 new)" in out and creds["password"] in out
    assert counts == (
        Prospect.objects.count(),
        Activity.objects.count(),
        Campaign.objects.count(),
        User.objects.count(),
    )
    run("demo-data", "--prospects", "45")
    assert Prospect.objects.filter(bu=bu).count() == 45, "asking for more completes the set"


@pytest.mark.django_db
def test_demo_password_is_restored_if_the_file_was_lost(data_dir):
    run("demo-data", "--prospects", "0")
    (data_dir / "demo_admin.json").unlink()
    out = run("demo-data", "--prospects", "0")
    password = json.loads((data_dir / "demo_admin.json").read_text())["password"]
    assert password in out
    assert User.objects.get(email="admin@demo.loopline.test").check_password(password)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _login_page_status(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=30) as response:
            return response.status
    except OSError:
        return None


def test_loopline_run_serves_and_stops_its_children(embedded_data_dir):
    port = free_port()
    env = embedded_env(embedded_data_dir)
    log = embedded_data_dir / "run.log"
    with open(log, "w") as fh:
        proc = loopline("run", "--port", str(port), "--no-demo", env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: "Loopline is running at" in log.read_text(),
            timeout=60,
            interval=0.2,
            message="the banner",
        )
        # The first request warms each web worker up (imports, templates): on a loaded machine it can take long.
        wait_for(lambda: _login_page_status(port) == 200, timeout=90, interval=1, message="the login page")
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]
        for expected in (b"granian", b"loopline\x00worker", b"loopline\x00scheduler"):
            assert any(expected in c for c in cmdlines), f"{expected!r} runs (web server, worker, scheduler)"
        wait_for(
            lambda: "Scheduler" in log.read_text() and "Worker" in log.read_text(),
            timeout=30,
            message="worker and scheduler to start",
        )
        worker_pid = next(
            pid for pid in children if b"loopline\x00worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        subprocess.run(["kill", "-9", worker_pid], check=True)
        wait_for(
            lambda: "restarted worker" in log.read_text(), timeout=30, message="the crashed worker to restart"
        )
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == len(cmdlines) and worker_pid not in children
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        for pid in children:
            assert subprocess.run(["kill", "-0", pid], capture_output=True).returncode != 0, (
                f"child {pid} stopped"
            )
        assert "Stopped." in log.read_text()
    finally:
        kill_group(proc)
