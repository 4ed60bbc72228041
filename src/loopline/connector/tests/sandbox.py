"""Drive a real ``crmsandbox`` as a subprocess over HTTPS (tests and the benchmark).

Loopline never imports ``crmsandbox`` (ARCHITECTURE.md): this module only runs its command line and speaks HTTPS to
its admin endpoints, exactly as an operator would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[4]
SRC = ROOT / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, timeout: float = 600) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "crmsandbox", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"crmsandbox {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


@dataclass
class SandboxProcess:
    data: Path
    port: int
    proc: subprocess.Popen | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _admin_token: str = ""

    @classmethod
    def start(cls, data: Path | None = None, *, leads: int = 0, contacts: int = 0,
              config: dict[str, Any] | None = None) -> SandboxProcess:
        """``config`` is merged into the org's ``config.json`` before serving (custom fields, validation rules,
        daily API limit)."""
        data = Path(data or tempfile.mkdtemp(prefix="loopline-crmsandbox-"))
        port = free_port()
        cli("init", "--data", str(data), "--port", str(port))
        if config:
            path = data / "config.json"
            current = json.loads(path.read_text())
            for key, value in config.items():
                if isinstance(value, dict) and isinstance(current.get(key), dict):
                    for sub, sub_value in value.items():
                        if isinstance(sub_value, list) and isinstance(current[key].get(sub), list):
                            current[key][sub] = current[key][sub] + sub_value
                        else:
                            current[key][sub] = sub_value
                else:
                    current[key] = value
            path.write_text(json.dumps(current, indent=2))
        if leads or contacts:
            cli("seed", "--data", str(data), "--leads", str(leads), "--contacts", str(contacts), "--accounts",
                "0" if not contacts else str(max(1, contacts // 10)), timeout=3600)
        sandbox = cls(data, port)
        sandbox.serve()
        return sandbox

    def serve(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        log = open(self.data / "serve.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crmsandbox", "serve", "--data", str(self.data), "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        self.info = json.loads(cli("info", "--data", str(self.data)))
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                requests.get(self.info["instance_url"] + "/services/data/", verify=self.ca_file, timeout=2)
                return
            except requests.RequestException:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"crmsandbox serve exited: {(self.data / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.2)
        raise RuntimeError("crmsandbox did not start in time")

    @property
    def ca_file(self) -> str:
        return self.info["ca_file"]

    @property
    def login_url(self) -> str:
        return self.info["login_url"]

    @property
    def instance_url(self) -> str:
        return self.info["instance_url"]

    @property
    def integration_username(self) -> str:
        return self.info["integration_user"]["username"]

    def add_app(self, name: str, cert_pem: str) -> str:
        path = self.data / f"{name}.pem"
        path.write_text(cert_pem)
        return json.loads(cli("apps", "add", "--data", str(self.data), "--name", name, "--cert", str(path)))[
            "consumer_key"]

    # --- admin and API access as the sandbox admin (the "CRM user" in tests) ---------------------------------------
    def _session(self) -> requests.Session:
        s = requests.Session()
        s.verify = self.ca_file
        s.trust_env = False
        return s

    def admin_token(self, fresh: bool = False) -> str:
        if fresh or not self._admin_token:
            import jwt

            app = self.info["default_app"]
            assertion = jwt.encode(
                {"iss": app["consumer_key"], "sub": self.info["admin"]["username"], "aud": self.login_url,
                 "exp": int(time.time()) + 300},
                Path(app["private_key_file"]).read_text(), algorithm="RS256")
            r = self._session().post(self.login_url + "/services/oauth2/token", data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}, timeout=30)
            r.raise_for_status()
            self._admin_token = r.json()["access_token"]
        return self._admin_token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """``path`` relative to the instance (``/_sandbox/...``) or to ``/services/data/v59.0/``."""
        url = path if path.startswith("/_sandbox") or path.startswith("/services") else f"/services/data/v59.0/{path}"
        for attempt in range(8):
            r = self._session().request(method, self.instance_url + url, timeout=60,
                                        headers={"Authorization": f"Bearer {self.admin_token()}"}, **kwargs)
            if r.status_code == 401:
                self.admin_token(fresh=True)
                continue
            if r.status_code in (500, 503) or (r.status_code == 400 and "UNABLE_TO_LOCK_ROW" in r.text):
                time.sleep(0.05 * (attempt + 1))  # the admin's own calls also see injected faults
                continue
            if r.status_code >= 400:
                raise RuntimeError(f"{method} {url}: {r.status_code} {r.text[:500]}")
            return r.json() if r.content else None
        raise RuntimeError(f"{method} {url}: still failing")

    def create(self, sobject: str, **values: Any) -> str:
        return self.request("POST", f"sobjects/{sobject}/", json=values)["id"]

    def update(self, sobject: str, record_id: str, **values: Any) -> None:
        self.request("PATCH", f"sobjects/{sobject}/{record_id}", json=values)

    def delete(self, sobject: str, record_id: str) -> None:
        self.request("DELETE", f"sobjects/{sobject}/{record_id}")

    def get(self, sobject: str, record_id: str) -> dict:
        return self.request("GET", f"sobjects/{sobject}/{record_id}")

    def query(self, soql: str) -> list[dict]:
        return self.request("GET", "query", params={"q": soql})["records"]

    def faults(self, **settings: Any) -> dict:
        return self.request("POST", "/_sandbox/faults", json=settings)

    def usage(self) -> dict:
        return self.request("GET", "/_sandbox/usage")

    def stop(self, remove: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if remove:
            shutil.rmtree(self.data, ignore_errors=True)
