"""Fixtures: a real ``crmsandbox serve`` subprocess over HTTPS, and clients for it."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import requests
from simple_salesforce import Salesforce

SRC = str(Path(__file__).resolve().parents[2])
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "crmsandbox", *args],
        capture_output=True,
        text=True,
        env=env,
        check=check,
        timeout=120,
    )


@dataclass
class Sandbox:
    data: Path
    port: int
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    config: dict[str, Any]
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> str:
        return self.info["ca_file"]

    @property
    def verify(self) -> ssl.SSLContext:
        """An SSL context trusting the sandbox CA (for httpx)."""
        if "_ctx" not in self.__dict__:
            self.__dict__["_ctx"] = ssl.create_default_context(cafile=self.ca)
        return self.__dict__["_ctx"]

    @property
    def admin(self) -> str:
        return self.info["admin"]["username"]

    @property
    def integration(self) -> str:
        return self.info["integration_user"]["username"]

    def assertion(self, sub: str, **overrides: Any) -> str:
        claims = {
            "iss": self.info["default_app"]["consumer_key"],
            "sub": sub,
            "aud": self.base,
            "exp": int(time.time()) + 300,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        key = Path(self.info["default_app"]["private_key_file"]).read_text()
        return jwt.encode(claims, key, algorithm="RS256")

    def token(self, username: str | None = None, fresh: bool = False) -> str:
        username = username or self.admin
        if fresh or username not in self._tokens:
            r = httpx.post(
                self.base + "/services/oauth2/token",
                verify=self.verify,
                data={"grant_type": JWT_GRANT, "assertion": self.assertion(username)},
            )
            assert r.status_code == 200, r.text
            self._tokens[username] = r.json()["access_token"]
        return self._tokens[username]

    def session(self) -> requests.Session:
        s = requests.Session()
        s.verify = self.ca
        s.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override session.verify
        return s

    def sf(self, username: str | None = None, **kw: Any) -> Salesforce:
        return Salesforce(
            instance_url=self.base,
            session_id=self.token(username),
            version="59.0",
            session=self.session(),
            **kw,
        )

    def http(self, username: str | None = None, token: str | None = None) -> httpx.Client:
        tok = token or self.token(username)
        return httpx.Client(
            base_url=self.base, verify=self.verify, timeout=30, headers={"Authorization": f"Bearer {tok}"}
        )

    def admin_post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        with self.http() as c:
            return c.post("/_sandbox/" + path, json=body)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_sandbox(tmp: Path) -> Sandbox:
    data = tmp / "org"
    port = free_port()
    run_cli("init", "--data", str(data), "--port", str(port))
    cfg_path = data / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["custom_fields"]["Lead"].append(
        {"name": "Region__c", "type": "picklist", "values": ["EMEA", "AMER", "APAC"], "restricted": True})
    cfg["custom_fields"]["Contact"].append({"name": "Score__c", "type": "number"})
    cfg["validation_rules"] = {"Lead": [
        {"name": "PhoneWhenWorking", "field": "Phone", "condition": "required_if_status",
         "status": "Working - Contacted", "message": "Phone is required when working a lead"},
        {"name": "WebsiteFormat", "field": "Website", "condition": "regex", "pattern": r"https?://.+",
         "message": "Website must start with http"},
    ]}
    cfg_path.write_text(json.dumps(cfg, indent=2))
    info = json.loads(run_cli("info", "--data", str(data)).stdout)
    config = json.loads((data / "config.json").read_text())
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmsandbox", "serve", "--data", str(data)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    sb = Sandbox(data, port, proc, info, config)
    deadline = time.time() + 20
    while True:
        try:
            if httpx.get(sb.base + "/services/data/", verify=sb.verify, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            sb.stop()
            raise RuntimeError("sandbox did not start:\n" + (tmp / "server.log").read_text())
        time.sleep(0.1)
    return sb


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    sb = start_sandbox(tmp_path_factory.mktemp("sandbox"))
    yield sb
    sb.stop()


@pytest.fixture(scope="module")
def own_sandbox(tmp_path_factory: pytest.TempPathFactory):
    """A private server for tests that change org-wide state (faults, limits)."""
    sb = start_sandbox(tmp_path_factory.mktemp("own_sandbox"))
    yield sb
    sb.stop()


@pytest.fixture(scope="session")
def sf(sandbox: Sandbox) -> Salesforce:
    return sandbox.sf()


@pytest.fixture(scope="session")
def admin_http(sandbox: Sandbox):
    with sandbox.http() as c:
        yield c


def unique(prefix: str = "x") -> str:
    unique.n += 1  # type: ignore[attr-defined]
    return f"{prefix}{os.getpid()}-{unique.n}-{time.time_ns() % 10**9}"  # type: ignore[attr-defined]


unique.n = 0  # type: ignore[attr-defined]
