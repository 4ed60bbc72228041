"""The data directory layout and the org configuration file (``config.json``).

Layout::

    DIR/config.json        org settings: org_id, host, port, session_ttl_seconds, daily_api_limit,
                           custom_fields, validation_rules, admin/integration credentials, default app
    DIR/faults.json        fault and latency injection (written by ``crmsandbox faults`` / the admin endpoint)
    DIR/org.sqlite3        the records (SQLite, WAL)
    DIR/ca.pem, ca.key     the sandbox's own certificate authority (clients trust ca.pem)
    DIR/server.pem, server.key   the HTTPS certificate for 127.0.0.1 / localhost
    DIR/default_app.key, default_app.pem   key pair of the default connected app (JWT bearer)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_CONFIG: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 8443,
    "session_ttl_seconds": 7200,
    "daily_api_limit": 15000,
    "org_name": "Sandbox Org",
    "custom_fields": {
        "Lead": [
            {"name": "External_Id__c", "type": "string", "length": 64, "external_id": True, "unique": True},
        ],
        "Contact": [
            {"name": "External_Id__c", "type": "string", "length": 64, "external_id": True, "unique": True},
        ],
        "Account": [
            {"name": "External_Id__c", "type": "string", "length": 64, "external_id": True, "unique": True},
        ],
    },
    "validation_rules": {},
}


class DataDir:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    config_file = property(lambda self: self.path / "config.json")
    faults_file = property(lambda self: self.path / "faults.json")
    db_file = property(lambda self: self.path / "org.sqlite3")
    ca_file = property(lambda self: self.path / "ca.pem")
    ca_key = property(lambda self: self.path / "ca.key")
    cert_file = property(lambda self: self.path / "server.pem")
    key_file = property(lambda self: self.path / "server.key")
    app_key_file = property(lambda self: self.path / "default_app.key")
    app_cert_file = property(lambda self: self.path / "default_app.pem")
    server_state_file = property(lambda self: self.path / "server.json")

    def exists(self) -> bool:
        return self.config_file.exists()

    def load_config(self) -> dict[str, Any]:
        with open(self.config_file, encoding="utf-8") as f:
            cfg = json.load(f)
        for k, v in DEFAULT_CONFIG.items():
            cfg.setdefault(k, v)
        return cfg

    def save_config(self, cfg: dict[str, Any]) -> None:
        write_json_atomic(self.config_file, cfg)

    def base_url(self, cfg: dict[str, Any] | None = None) -> str:
        cfg = cfg or self.load_config()
        host = cfg.get("host", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - bound to every interface: clients use loopback
            host = "127.0.0.1"
        return f"https://{host}:{cfg['port']}"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
