"""Org additions the connector and the demo need: Profile on User, ``init --loopline-fields``, ``config``."""

from __future__ import annotations

import json

from crmsandbox.datadir import DataDir
from crmsandbox.store import Store
from crmsandbox.tests.fixtures import run_cli


def test_users_with_profile_names(sandbox, sf):
    rows = sf.query_all("SELECT Id, Username, Email, FirstName, LastName, IsActive, Profile.Name FROM User")["records"]
    profiles = {r["Username"]: r["Profile"]["Name"] for r in rows}
    assert profiles[sandbox.admin] == "System Administrator"
    assert profiles[sandbox.integration] == "B2BMA Integration User"
    assert profiles["user1@crmsandbox.local"] == "Standard User"
    assert profiles["user3@crmsandbox.local"] == "Marketing User"
    assert rows[0]["Profile"]["attributes"]["type"] == "Profile"
    names = {r["Name"] for r in sf.query("SELECT Id, Name FROM Profile")["records"]}
    assert names >= {"System Administrator", "Standard User", "B2BMA Integration User", "Marketing User"}
    assert all(r["Id"].startswith("00e") for r in sf.query("SELECT Id FROM Profile")["records"])


def test_init_loopline_fields_and_config_command(tmp_path):
    data = tmp_path / "org"
    run_cli("init", "--data", str(data), "--port", "1", "--loopline-fields")
    store = Store(str(DataDir(data).db_file), DataDir(data).load_config())
    try:
        for obj, suffix in (("Lead", "__c"), ("Contact", "__c"), ("Account", "__pc")):
            o = store.registry.objects[obj]
            score = o.fields[f"Loopline_Score{suffix}"]
            grade = o.fields[f"Loopline_Grade{suffix}"]
            camp = o.fields[f"Loopline_Campaign{suffix}"]
            assert (score.type, grade.type, grade.length, camp.type, camp.length) == (
                "double", "string", 3, "string", 255)
        lid = store.create("Lead", {"LastName": "L", "Company": "C", "Loopline_Score__c": 87.5,
                                    "Loopline_Grade__c": "A+"}, None)
        assert store.get("Lead", lid, None)["Loopline_Score__c"] == 87.5
    finally:
        store.close()
    out = json.loads(run_cli("config", "--data", str(data), "--set", "loopline_send_url=http://x/hook",
                             "--set", "loopline_send_token=t0k").stdout)
    assert out["loopline_send_url"] == "http://x/hook" and out["loopline_send_token"] == "***"
    assert out["daily_api_limit"] == 15000
    cfg = json.loads((data / "config.json").read_text())
    assert cfg["loopline_send_token"] == "t0k"
    bad = run_cli("config", "--data", str(data), "--set", "port=1", check=False)
    assert bad.returncode != 0 and "unknown setting" in bad.stderr
    # the option also exists for an org created without it
    plain = tmp_path / "plain"
    run_cli("init", "--data", str(plain), "--port", "1")
    run_cli("config", "--data", str(plain), "--set", "loopline_fields=true")
    names = [f["name"] for f in json.loads((plain / "config.json").read_text())["custom_fields"]["Contact"]]
    assert "Loopline_Campaign__c" in names
