"""OAuth flows against a real server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce

from crmsandbox.tests.fixtures import JWT_GRANT, run_cli


def token_call(sandbox, **data):
    return httpx.post(sandbox.base + "/services/oauth2/token", data=data, verify=sandbox.verify)


def test_jwt_bearer_success_shape(sandbox):
    r = token_call(sandbox, grant_type=JWT_GRANT, assertion=sandbox.assertion(sandbox.integration))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json;charset=UTF-8"
    body = r.json()
    assert set(body) == {"access_token", "scope", "instance_url", "id", "token_type"}
    assert body["instance_url"] == sandbox.base
    assert body["token_type"] == "Bearer"
    org, user = body["id"].rsplit("/", 2)[-2:]
    assert org == sandbox.info["org_id"] and user.startswith("005") and len(user) == 18


def test_jwt_exp_as_numeric_string(sandbox):
    r = token_call(
        sandbox,
        grant_type=JWT_GRANT,
        assertion=sandbox.assertion(sandbox.admin, exp=str(int(time.time()) + 120)),
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("overrides", "error", "description"),
    [
        ({"aud": "https://login.salesforce.com"}, "invalid_grant", "audience is invalid"),
        ({"exp": int(time.time()) - 10}, "invalid_grant", "expired authorization code"),
        ({"iss": "not-a-consumer-key"}, "invalid_client_id", "client identifier invalid"),
        ({"sub": "nobody@example.com"}, "invalid_grant", "user hasn't approved this consumer"),
    ],
)
def test_jwt_errors(sandbox, overrides, error, description):
    sub = overrides.pop("sub", sandbox.admin)
    r = token_call(sandbox, grant_type=JWT_GRANT, assertion=sandbox.assertion(sub, **overrides))
    assert r.status_code == 400
    assert r.json() == {"error": error, "error_description": description}


def test_jwt_bad_signature(sandbox):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    a = jwt.encode(
        {
            "iss": sandbox.info["default_app"]["consumer_key"],
            "sub": sandbox.admin,
            "aud": sandbox.base,
            "exp": int(time.time()) + 60,
        },
        pem,
        algorithm="RS256",
    )
    r = token_call(sandbox, grant_type=JWT_GRANT, assertion=a)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    r = token_call(sandbox, grant_type=JWT_GRANT, assertion="not.a.jwt")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_password_flow_and_refresh(sandbox):
    app = sandbox.info["default_app"]
    r = token_call(
        sandbox,
        grant_type="password",
        client_id=app["consumer_key"],
        client_secret=app["consumer_secret"],
        username=sandbox.admin,
        password=sandbox.info["admin"]["password"],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert {
        "access_token",
        "refresh_token",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
        "signature",
    } <= set(body)
    # the token works with simple-salesforce
    sf = Salesforce(
        instance_url=body["instance_url"],
        session_id=body["access_token"],
        version="59.0",
        session=sandbox.session(),
    )
    assert sf.query("SELECT COUNT() FROM User")["totalSize"] >= 5
    r2 = token_call(
        sandbox,
        grant_type="refresh_token",
        client_id=app["consumer_key"],
        client_secret=app["consumer_secret"],
        refresh_token=body["refresh_token"],
    )
    assert r2.status_code == 200, r2.text
    assert r2.json()["access_token"] != body["access_token"]
    r3 = token_call(sandbox, grant_type="refresh_token", client_id=app["consumer_key"], refresh_token="bogus")
    assert r3.status_code == 400
    assert r3.json() == {"error": "invalid_grant", "error_description": "expired access/refresh token"}


def test_password_flow_errors(sandbox):
    app = sandbox.info["default_app"]
    r = token_call(
        sandbox,
        grant_type="password",
        client_id=app["consumer_key"],
        client_secret=app["consumer_secret"],
        username=sandbox.admin,
        password="wrong",
    )
    assert r.status_code == 400
    assert r.json() == {"error": "invalid_grant", "error_description": "authentication failure"}
    r = token_call(
        sandbox,
        grant_type="password",
        client_id="nope",
        client_secret="x",
        username=sandbox.admin,
        password="x",
    )
    assert r.json() == {"error": "invalid_client_id", "error_description": "client identifier invalid"}
    r = token_call(
        sandbox,
        grant_type="password",
        client_id=app["consumer_key"],
        client_secret="bad",
        username=sandbox.admin,
        password=sandbox.info["admin"]["password"],
    )
    assert r.json()["error"] == "invalid_client"
    r = token_call(sandbox, grant_type="authorization_code", code="x")
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def test_client_credentials_runs_as_integration_user(sandbox):
    app = sandbox.info["default_app"]
    r = token_call(
        sandbox,
        grant_type="client_credentials",
        client_id=app["consumer_key"],
        client_secret=app["consumer_secret"],
    )
    assert r.status_code == 200, r.text
    tok = r.json()["access_token"]
    u = httpx.get(
        sandbox.base + "/services/oauth2/userinfo",
        headers={"Authorization": f"Bearer {tok}"},
        verify=sandbox.verify,
    )
    assert u.status_code == 200
    assert u.json()["preferred_username"] == sandbox.integration
    ident = httpx.get(r.json()["id"], headers={"Authorization": f"Bearer {tok}"}, verify=sandbox.verify)
    assert ident.json()["username"] == sandbox.integration


def test_missing_and_bad_token_401(sandbox):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = httpx.get(sandbox.base + "/services/data/v59.0/sobjects", headers=headers, verify=sandbox.verify)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Token"
        assert r.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


def test_oauth_prefix_accepted(sandbox):
    r = httpx.get(
        sandbox.base + "/services/data/v59.0/limits",
        headers={"Authorization": f"OAuth {sandbox.token()}"},
        verify=sandbox.verify,
    )
    assert r.status_code == 200


def test_token_expiry_gives_401_list(sandbox):
    user = sandbox.info["users"][1]
    tok = sandbox.token(user, fresh=True)
    with httpx.Client(
        base_url=sandbox.base, verify=sandbox.verify, headers={"Authorization": f"Bearer {tok}"}
    ) as c:
        assert c.get("/services/data/v59.0/limits").status_code == 200
        assert sandbox.admin_post("expire-tokens", {"username": user}).json()["expired"] >= 1
        r = c.get("/services/data/v59.0/limits")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Token"
        assert r.json()[0]["errorCode"] == "INVALID_SESSION_ID"
    sandbox.token(user, fresh=True)


def test_configured_ttl(tmp_path):
    """Tokens expire after the org's session_ttl_seconds."""
    import json

    from crmsandbox.store import Store

    data = tmp_path / "org"
    run_cli("init", "--data", str(data), "--port", "1")
    cfg = json.loads((data / "config.json").read_text())
    cfg["session_ttl_seconds"] = 1
    store = Store(str(data / "org.sqlite3"), cfg)
    try:
        tok = store.issue_token(cfg["admin"]["user_id"], "k")
        assert store.token_info(tok) is not None
        time.sleep(1.1)
        assert store.token_info(tok) is None
    finally:
        store.close()


def test_apps_add_with_own_certificate(sandbox, tmp_path):
    from crmsandbox.certs import make_rsa_keypair_with_cert

    make_rsa_keypair_with_cert(tmp_path / "k.pem", tmp_path / "c.pem", "mine")
    out = run_cli(
        "apps", "add", "--data", str(sandbox.data), "--name", "Mine", "--cert", str(tmp_path / "c.pem")
    )
    import json

    creds = json.loads(out.stdout)
    assert set(creds) == {"consumer_key", "consumer_secret"}
    a = jwt.encode(
        {
            "iss": creds["consumer_key"],
            "sub": sandbox.admin,
            "aud": sandbox.base,
            "exp": int(time.time()) + 60,
        },
        Path(tmp_path / "k.pem").read_text(),
        algorithm="RS256",
    )
    r = token_call(sandbox, grant_type=JWT_GRANT, assertion=a)
    assert r.status_code == 200, r.text
    # the default app's key does not sign for this app
    wrong = jwt.encode(
        {
            "iss": creds["consumer_key"],
            "sub": sandbox.admin,
            "aud": sandbox.base,
            "exp": int(time.time()) + 60,
        },
        Path(sandbox.info["default_app"]["private_key_file"]).read_text(),
        algorithm="RS256",
    )
    assert token_call(sandbox, grant_type=JWT_GRANT, assertion=wrong).json()["error"] == "invalid_grant"
