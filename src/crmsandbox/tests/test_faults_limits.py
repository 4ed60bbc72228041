"""Fault/latency injection and the daily API limit (on a private server: they are org-wide)."""

from __future__ import annotations

import time

import httpx
import pytest
from simple_salesforce.exceptions import SalesforceRefusedRequest

from crmsandbox.tests.fixtures import JWT_GRANT, run_cli

V = "/services/data/v59.0"


@pytest.fixture
def sb(own_sandbox):
    yield own_sandbox
    own_sandbox.admin_post("faults", {"reset": True, "reset_usage": True})


def statuses(sb, n):
    out = []
    with sb.http() as c:
        for _ in range(n):
            try:
                out.append(c.get(V + "/limits").status_code)
            except httpx.TransportError:
                out.append("dropped")
    return out


def test_error_injection_is_deterministic(sb):
    cfg = {"seed": 7, "error_rates": {"UNABLE_TO_LOCK_ROW": 0.3, "SERVER_UNAVAILABLE": 0.2}}
    assert sb.admin_post("faults", cfg).status_code == 200
    first = statuses(sb, 40)
    sb.admin_post("faults", cfg)  # same seed again → same draws
    second = statuses(sb, 40)
    assert first == second
    assert {200, 400, 503} == set(first)


def test_fault_bodies_and_scope(sb):
    sb.admin_post("faults", {"error_rates": {"UNABLE_TO_LOCK_ROW": 1}})
    with sb.http() as c:
        r = c.get(V + "/limits")
        assert r.status_code == 400 and r.json()[0]["errorCode"] == "UNABLE_TO_LOCK_ROW"
        assert c.get("/_sandbox/faults").status_code == 200  # admin endpoints are exempt
    tok = httpx.post(sb.base + "/services/oauth2/token", verify=sb.verify,
                     data={"grant_type": JWT_GRANT, "assertion": sb.assertion(sb.admin)})
    assert tok.status_code == 200  # OAuth is exempt unless apply_to_oauth
    sb.admin_post("faults", {"error_rates": {"SERVER_UNAVAILABLE": 1}})
    r = httpx.get(sb.base + V + "/limits", verify=sb.verify, headers={"Authorization": f"Bearer {sb.token()}"})
    assert r.status_code == 503 and r.json()[0]["errorCode"] == "SERVER_UNAVAILABLE"
    sb.admin_post("faults", {"error_rates": {"500": 1}})
    r = httpx.get(sb.base + V + "/limits", verify=sb.verify, headers={"Authorization": f"Bearer {sb.token()}"})
    assert r.status_code == 500 and r.text == "Internal Server Error"
    sb.admin_post("faults", {"error_rates": {"SERVER_UNAVAILABLE": 1}, "apply_to_oauth": True})
    tok = httpx.post(sb.base + "/services/oauth2/token", verify=sb.verify,
                     data={"grant_type": JWT_GRANT, "assertion": sb.assertion(sb.admin)})
    assert tok.status_code == 503


def test_drop_and_timeout(sb):
    sb.admin_post("faults", {"error_rates": {"DROP": 1}})
    with pytest.raises(httpx.TransportError):
        httpx.get(sb.base + V + "/limits", verify=sb.verify, headers={"Authorization": f"Bearer {sb.token()}"})
    sb.admin_post("faults", {"error_rates": {"TIMEOUT": 1}, "timeout_seconds": 5})
    t0 = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        httpx.get(sb.base + V + "/limits", verify=sb.verify, timeout=0.5,
                  headers={"Authorization": f"Bearer {sb.token()}"})
    assert time.monotonic() - t0 < 3
    sb.admin_post("faults", {"reset": True})
    assert statuses(sb, 1) == [200]  # the server is still fine


def test_lost_response_processes_the_request_then_drops_the_answer(sb):
    headers = {"Authorization": f"Bearer {sb.token()}"}
    sb.admin_post("faults", {"error_rates": {"LOST_RESPONSE": 1}})
    with pytest.raises(httpx.TransportError):
        httpx.post(sb.base + V + "/sobjects/Lead", verify=sb.verify, headers=headers,
                   json={"LastName": "LostAnswer", "Company": "Faults Inc"})
    sb.admin_post("faults", {"reset": True})
    r = httpx.get(sb.base + V + "/query", verify=sb.verify, headers=headers,
                  params={"q": "SELECT Id FROM Lead WHERE LastName = 'LostAnswer'"})
    assert r.json()["totalSize"] == 1  # the write happened although the client never heard back


def test_latency(sb):
    sb.admin_post("faults", {"latency_ms": 150, "jitter_ms": 50, "seed": 1})
    with sb.http() as c:
        c.get(V + "/limits")
        t0 = time.monotonic()
        c.get(V + "/limits")
        assert 0.15 <= time.monotonic() - t0 < 1.0


def test_bad_fault_config(sb):
    r = sb.admin_post("faults", {"error_rates": {"NOPE": 0.1}})
    assert r.status_code == 400
    r = sb.admin_post("faults", {"error_rates": {"DROP": 0.9, "500": 0.9}})
    assert r.status_code == 400


def test_cli_faults_picked_up_by_running_server(sb):
    run_cli("faults", "--data", str(sb.data), "--error-rate", "SERVER_UNAVAILABLE=1", "--seed", "3")
    deadline = time.time() + 5
    while statuses(sb, 1) != [503]:
        assert time.time() < deadline
        time.sleep(0.2)
    run_cli("faults", "--data", str(sb.data), "--reset")
    deadline = time.time() + 5
    while statuses(sb, 1) != [200]:
        assert time.time() < deadline
        time.sleep(0.2)
    bad = run_cli("faults", "--data", str(sb.data), "--error-rate", "BOGUS=1", check=False)
    assert bad.returncode != 0


def test_daily_limit_exhaustion(sb):
    sb.admin_post("faults", {"daily_api_limit": 5, "reset_usage": True})
    sf = sb.sf()
    for _ in range(5):
        sf.limits()
    assert sf.api_usage["api-usage"].used == 5 and sf.api_usage["api-usage"].total == 5
    with sb.http() as c:
        r = c.get(V + "/limits")
        assert r.status_code == 403
        assert r.json() == [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
        assert r.headers["sforce-limit-info"] == "api-usage=5/5"
    with pytest.raises(SalesforceRefusedRequest):
        sf.query("SELECT Id FROM Lead")
    sb.admin_post("faults", {"daily_api_limit": 100})
    limits = sf.limits()
    assert limits["DailyApiRequests"] == {"Max": 100, "Remaining": 94}
