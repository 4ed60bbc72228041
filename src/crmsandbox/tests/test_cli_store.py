"""CLI commands, the storage layer used directly, ids, and the package boundary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from crmsandbox import ids
from crmsandbox.errors import RecordErrors
from crmsandbox.store import Store
from crmsandbox.tests.fixtures import run_cli

PKG = Path(__file__).resolve().parents[1]


def test_never_imports_loopline():
    offenders = []
    for p in PKG.rglob("*.py"):
        for line in p.read_text(encoding="utf-8").splitlines():
            if re.match(r"\s*(from|import)\s+loopline\b", line):
                offenders.append(f"{p}: {line.strip()}")
    assert offenders == []


def test_id_checksums():
    assert ids.to18("001000000000001") == "001000000000001AAA"
    assert ids.to18("00Q5e00000ABcDe") == ids.normalize("00Q5e00000ABcDe")
    full = ids.to18("00Q5e00000ABcDe")
    assert ids.normalize(full.lower()) == full  # 18-char ids are case-insensitive
    assert ids.normalize("short") is None and ids.normalize("00Q5e00000ABcD!") is None
    assert ids.make_id("00Q", 1) == "00Q000000000001EAA"
    assert len({ids.make_id("003", n) for n in range(1000)}) == 1000


@pytest.fixture(scope="module")
def org(tmp_path_factory):
    data = tmp_path_factory.mktemp("cli") / "org"
    out = run_cli("init", "--data", str(data), "--port", "9999")
    return data, json.loads(out.stdout)


def test_init_and_info(org):
    data, init_out = org
    info = json.loads(run_cli("info", "--data", str(data)).stdout)
    assert info["instance_url"] == info["login_url"] == "https://127.0.0.1:9999"
    assert Path(info["ca_file"]).exists()
    assert info["org_id"].startswith("00D") and len(info["org_id"]) == 18
    assert info["admin"]["username"] and info["admin"]["password"]
    assert info["integration_user"]["username"]
    assert info["default_app"]["consumer_key"] and info["default_app"]["consumer_secret"]
    assert init_out["org_id"] == info["org_id"]
    again = run_cli("init", "--data", str(data), check=False)
    assert again.returncode != 0
    missing = run_cli("info", "--data", str(data.parent / "nope"), check=False)
    assert missing.returncode != 0


def test_seed_counts(org):
    data, _ = org
    out = json.loads(run_cli("seed", "--data", str(data), "--leads", "500", "--contacts", "200", "--accounts",
                             "50", "--person-accounts", "20", "--opportunities", "30", "--campaigns", "5",
                             "--users", "2", "--seed", "1").stdout)
    assert out["counts"]["Lead"] == 500 and out["counts"]["PersonAccount"] == 20
    store = Store(str(data / "org.sqlite3"), json.loads((data / "config.json").read_text()))
    try:
        counts = store.counts()
        assert counts["Lead"] == 500 and counts["Account"] == 70 and counts["Contact"] == 220
        row = store.db.execute('SELECT COUNT(*) FROM "sobj_Account" WHERE "IsPersonAccount"=1 AND '
                               '"PersonContactId" IS NOT NULL').fetchone()
        assert row[0] == 20
        owners = store.db.execute('SELECT COUNT(DISTINCT "OwnerId") FROM "sobj_Lead"').fetchone()[0]
        assert owners > 3
    finally:
        store.close()


def test_faults_cli(org):
    data, _ = org
    out = json.loads(run_cli("faults", "--data", str(data), "--latency-ms", "20", "--jitter-ms", "5",
                             "--error-rate", "UNABLE_TO_LOCK_ROW=0.1", "--error-rate", "DROP=0.01",
                             "--daily-api-limit", "50", "--seed", "9").stdout)
    assert out["error_rates"] == {"UNABLE_TO_LOCK_ROW": 0.1, "DROP": 0.01} and out["daily_api_limit"] == 50
    out = json.loads(run_cli("faults", "--data", str(data), "--latency-ms", "0").stdout)
    assert out["error_rates"]["DROP"] == 0.01  # merges with what was set
    out = json.loads(run_cli("faults", "--data", str(data), "--reset").stdout)
    assert out["error_rates"] == {} and out["daily_api_limit"] is None


def test_store_directly(org):
    """The storage layer as the Bulk API / UI will use it."""
    data, _ = org
    cfg = json.loads((data / "config.json").read_text())
    store = Store(str(data / "org.sqlite3"), cfg)
    try:
        admin = store.principal_for_user(cfg["admin"]["user_id"])
        assert admin is not None and admin.view_all
        lid = store.create("Lead", {"LastName": "Direct", "Company": "D"}, admin, "unit")
        with pytest.raises(RecordErrors) as e:
            store.update("Lead", lid, {"Email": "bad"}, admin)
        assert e.value.errors[0].code == "INVALID_EMAIL_ADDRESS"
        rid, created = store.upsert("Lead", "External_Id__c", "E-1", {"LastName": "U", "Company": "U"}, admin)
        assert created
        assert store.upsert("Lead", "External_Id__c", "e-1", {"Title": "x"}, admin) == (rid, False)
        page = store.query("SELECT Id, Name FROM Lead WHERE Id = '" + lid + "'", admin)
        assert page["records"][0]["Name"] == "Direct"
        # a transaction rolls back as a whole
        with pytest.raises(RuntimeError), store.transaction():
            store.create("Lead", {"LastName": "Gone", "Company": "G"}, admin)
            raise RuntimeError
        assert store.find_by_field("Lead", "LastName", "Gone", admin) == []
        assert store.changes(0, 10, "Lead")[0]["client"] == "unit"
    finally:
        store.close()


def test_serve_port_override_updates_config(tmp_path):
    import os
    import ssl
    import subprocess
    import sys
    import time

    import httpx

    from crmsandbox.tests.fixtures import SRC, free_port

    data = tmp_path / "org"
    run_cli("init", "--data", str(data), "--port", "1")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "crmsandbox", "serve", "--data", str(data), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        info = json.loads(run_cli("info", "--data", str(data)).stdout)
        ctx = ssl.create_default_context(cafile=info["ca_file"])
        deadline = time.time() + 20
        while True:
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/services/data/", verify=ctx, timeout=2)
                break
            except httpx.HTTPError:
                assert time.time() < deadline
                time.sleep(0.1)
        assert r.status_code == 200
        info = json.loads(run_cli("info", "--data", str(data)).stdout)
        assert info["instance_url"] == f"https://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
