"""``crmsandbox`` command line: init, serve, seed, apps add, info, faults."""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import click

from crmsandbox import ids as idlib
from crmsandbox.datadir import DEFAULT_CONFIG, DataDir, write_json_atomic

DOMAIN = "crmsandbox.local"


def _dd(path: str) -> DataDir:
    dd = DataDir(path)
    if not dd.exists():
        raise click.ClickException(f"{path} is not a crmsandbox data dir (run `crmsandbox init --data {path}`)")
    return dd


def _open_store(dd: DataDir):
    from crmsandbox.store import Store

    return Store(str(dd.db_file), dd.load_config())


def _password() -> str:
    return "Sbx-" + secrets.token_urlsafe(12)


@click.group()
def main() -> None:
    """A Salesforce-REST-compatible CRM sandbox server."""


LOOPLINE_FIELDS: list[dict[str, Any]] = [
    {"name": "Loopline_Score__c", "type": "double", "label": "Loopline Score"},
    {"name": "Loopline_Grade__c", "type": "string", "length": 3, "label": "Loopline Grade"},
    {"name": "Loopline_Campaign__c", "type": "string", "length": 255, "label": "Loopline Campaign"},
    # Loopline stamps the records it creates, so a retried create upserts instead of duplicating.
    {"name": "Loopline_Id__c", "type": "string", "length": 64, "label": "Loopline Id", "external_id": True,
     "unique": True},
]


def add_loopline_fields(cfg: dict[str, Any]) -> None:
    """Declare Loopline's custom fields on Lead and Contact (person accounts get them as ``__pc``)."""
    custom = cfg.setdefault("custom_fields", {})
    for obj in ("Lead", "Contact"):
        fields = custom.setdefault(obj, [])
        have = {f["name"].lower() for f in fields}
        fields.extend(dict(f) for f in LOOPLINE_FIELDS if f["name"].lower() not in have)


def init_org(path: str, port: int = 8443, host: str = "127.0.0.1",
             loopline_fields: bool = False) -> dict[str, Any]:
    """Create a new org in ``path`` (see ``crmsandbox init``); returns the config written."""
    from crmsandbox.certs import make_ca_and_server_cert, make_rsa_keypair_with_cert
    from crmsandbox.store import Store

    dd = DataDir(path)
    if dd.exists():
        raise click.ClickException(f"{path} already holds an org")
    dd.path.mkdir(parents=True, exist_ok=True)
    org_id = idlib.make_id("00D", secrets.randbelow(62**6) + 62**5)
    cfg: dict[str, Any] = json.loads(json.dumps(DEFAULT_CONFIG))
    cfg.update({"org_id": org_id, "port": port, "host": host})
    if loopline_fields:
        add_loopline_fields(cfg)
    hosts = ("127.0.0.1", "localhost") if host in ("127.0.0.1", "localhost") else (host, "127.0.0.1", "localhost")
    make_ca_and_server_cert(dd.ca_file, dd.ca_key, dd.cert_file, dd.key_file, hosts)
    make_rsa_keypair_with_cert(dd.app_key_file, dd.app_cert_file, "crmsandbox default app")
    dd.save_config(cfg)
    store = Store(str(dd.db_file), cfg)
    try:
        store.bulk_insert("Organization", [{"Name": cfg["org_name"], "IsSandbox": 1,
                                            "OrganizationType": "Enterprise Edition", "InstanceName": "SBX1"}])
        store.db.execute('UPDATE "sobj_Organization" SET "Id"=?', (org_id,))
        store.create_profile("System Administrator", True)
        store.create_profile("B2BMA Integration User", True)
        store.create_profile("Standard User", False)
        store.create_profile("Marketing User", False)
        admin_pw = _password()
        admin = store.create_user(f"admin@{DOMAIN}", admin_pw, first_name="Ada", last_name="Admin",
                                  email=f"admin@{DOMAIN}", profile="System Administrator")
        cfg["admin_user_id"] = admin
        store.config["admin_user_id"] = admin
        integ_pw = _password()
        integ = store.create_user(f"integration@{DOMAIN}", integ_pw, first_name="B2BMA", last_name="Integration",
                                  email=f"integration@{DOMAIN}", profile="B2BMA Integration User")
        users = []
        for i, (first, last) in enumerate((("Sam", "Seller"), ("Rita", "Rep"), ("Mark", "Marketer")), start=1):
            pw = _password()
            uname = f"user{i}@{DOMAIN}"
            store.create_user(uname, pw, first_name=first, last_name=last, email=uname,
                              profile="Marketing User" if last == "Marketer" else "Standard User")
            users.append({"username": uname, "password": pw})
        store.create("Group", {"Name": "Unassigned Leads", "Type": "Queue", "DeveloperName": "Unassigned_Leads"},
                     None, system=True)
        app = store.add_app("Default App", dd.app_cert_file.read_text(), integ)
        cfg.update({
            "admin": {"username": f"admin@{DOMAIN}", "password": admin_pw, "user_id": admin},
            "integration_user": {"username": f"integration@{DOMAIN}", "password": integ_pw, "user_id": integ},
            "users": users,
            "default_app": {**app, "private_key_file": str(dd.app_key_file.resolve()),
                            "cert_file": str(dd.app_cert_file.resolve())},
        })
    finally:
        store.close()
    dd.save_config(cfg)
    return cfg


@main.command()
@click.option("--data", "data", required=True, type=click.Path(file_okay=False), help="data directory")
@click.option("--port", default=8443, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--loopline-fields", is_flag=True, help="declare Loopline_Score__c, Loopline_Grade__c, "
              "Loopline_Campaign__c and the Loopline_Id__c external id on Lead and Contact (and __pc on person "
              "accounts)")
def init(data: str, port: int, host: str, loopline_fields: bool) -> None:
    """Create a new org: users, default connected app, CA + server certificate."""
    init_org(data, port, host, loopline_fields)
    click.echo(json.dumps(_info(DataDir(data)), indent=2))


@main.command()
@click.option("--data", "data", required=True, type=click.Path(file_okay=False))
@click.option("--host", default=None, help="bind address (default: the org's, 127.0.0.1)")
@click.option("--port", default=None, type=int, help="port (default: the org's; updates it)")
@click.option("--log-level", default="warning", show_default=True)
def serve(data: str, host: str | None, port: int | None, log_level: str) -> None:
    """Serve the org over HTTPS."""
    import uvicorn

    from crmsandbox.server import SandboxServer

    dd = _dd(data)
    cfg = dd.load_config()
    if port is not None and port != cfg.get("port"):
        cfg["port"] = port
        dd.save_config(cfg)
    if host is not None and host != cfg.get("host"):
        cfg["host"] = host
        dd.save_config(cfg)
    app = SandboxServer(data)
    try:
        import uvloop  # noqa: F401
        loop = "uvloop"
    except ImportError:  # pragma: no cover
        loop = "asyncio"
    uvicorn.run(app, host=cfg.get("host", "127.0.0.1"), port=int(cfg["port"]), ssl_certfile=str(dd.cert_file),
                ssl_keyfile=str(dd.key_file), loop=loop, http="httptools", log_level=log_level,
                access_log=False, lifespan="on", timeout_keep_alive=30,
                timeout_graceful_shutdown=1)


@main.command()
@click.option("--data", "data", required=True, type=click.Path(file_okay=False))
@click.option("--leads", default=0, type=int)
@click.option("--contacts", default=0, type=int)
@click.option("--accounts", default=0, type=int)
@click.option("--person-accounts", default=0, type=int)
@click.option("--opportunities", default=0, type=int)
@click.option("--campaigns", default=0, type=int)
@click.option("--users", default=0, type=int)
@click.option("--seed", "seed", default=0, type=int, help="random seed (deterministic data)")
def seed(data: str, leads: int, contacts: int, accounts: int, person_accounts: int, opportunities: int,
         campaigns: int, users: int, seed: int) -> None:
    """Generate fake records (prints JSON counts and records/s)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from crmsandbox.seed import Seeder

    dd = _dd(data)
    store = _open_store(dd)
    total = leads + contacts + accounts + person_accounts + opportunities + campaigns + users
    t0 = time.perf_counter()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      transient=True, disable=not sys.stderr.isatty(), console=None) as prog:
            task = prog.add_task("seeding", total=total)

            def progress(obj: str, n: int) -> None:
                prog.update(task, advance=n, description=f"seeding {obj}")

            counts = Seeder(store, seed).run(leads=leads, contacts=contacts, accounts=accounts,
                                             person_accounts=person_accounts, opportunities=opportunities,
                                             campaigns=campaigns, users=users, progress=progress)
        if users:
            counts["User"] = users
    finally:
        store.close()
    dt = time.perf_counter() - t0
    click.echo(json.dumps({"counts": counts, "seconds": round(dt, 3),
                           "records_per_second": round(total / dt) if dt > 0 else None}))


@main.group()
def apps() -> None:
    """Connected apps."""


@apps.command("add")
@click.option("--data", "data", required=True, type=click.Path(file_okay=False))
@click.option("--name", required=True)
@click.option("--cert", "cert", required=True, type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate (or public key) used to verify JWT bearer assertions")
@click.option("--run-as", "run_as", default=None, help="username for the client-credentials flow "
              "(default: the integration user)")
def apps_add(data: str, name: str, cert: str, run_as: str | None) -> None:
    """Register a connected app; prints {"consumer_key", "consumer_secret"}."""
    from crmsandbox.certs import public_key_from_pem

    dd = _dd(data)
    pem = Path(cert).read_text()
    try:
        public_key_from_pem(pem)
    except ValueError as e:
        raise click.ClickException(f"not a PEM certificate or public key: {e}") from None
    store = _open_store(dd)
    try:
        cfg = dd.load_config()
        uid = store.user_by_username(run_as) if run_as else cfg.get("integration_user", {}).get("user_id")
        if run_as and uid is None:
            raise click.ClickException(f"no user {run_as}")
        out = store.add_app(name, pem, uid)
    finally:
        store.close()
    click.echo(json.dumps(out))


def _info(dd: DataDir) -> dict[str, Any]:
    cfg = dd.load_config()
    url = dd.base_url(cfg)
    app = cfg.get("default_app", {})
    return {
        "instance_url": url,
        "login_url": url,
        "ca_file": str(dd.ca_file.resolve()),
        "org_id": cfg.get("org_id"),
        "admin": {"username": cfg["admin"]["username"], "password": cfg["admin"]["password"]},
        "integration_user": {"username": cfg["integration_user"]["username"]},
        "default_app": {"consumer_key": app.get("consumer_key"), "consumer_secret": app.get("consumer_secret"),
                        "private_key_file": app.get("private_key_file"), "cert_file": app.get("cert_file")},
        "users": [u["username"] for u in cfg.get("users", [])],
    }


@main.command()
@click.option("--data", "data", required=True, type=click.Path(file_okay=False))
def info(data: str) -> None:
    """Print connection details as JSON."""
    click.echo(json.dumps(_info(_dd(data)), indent=2))


@main.command()
@click.option("--data", "data", required=True, type=click.Path(file_okay=False))
@click.option("--latency-ms", type=float, default=None)
@click.option("--jitter-ms", type=float, default=None)
@click.option("--error-rate", "error_rates", multiple=True, help="CODE=FRACTION (repeatable); codes: "
              "UNABLE_TO_LOCK_ROW, SERVER_UNAVAILABLE, 500, DROP, TIMEOUT, REQUEST_LIMIT_EXCEEDED")
@click.option("--daily-api-limit", type=int, default=None)
@click.option("--seed", "seed", type=int, default=None, help="random seed for the fault draws")
@click.option("--timeout-seconds", type=float, default=None, help="how long TIMEOUT hangs (default 60)")
@click.option("--oauth/--no-oauth", "oauth", default=None, help="also inject faults into OAuth")
@click.option("--reset", is_flag=True, help="clear all faults first")
def faults(data: str, latency_ms: float | None, jitter_ms: float | None, error_rates: tuple[str, ...],
           daily_api_limit: int | None, seed: int | None, timeout_seconds: float | None, oauth: bool | None,
           reset: bool) -> None:
    """Set fault and latency injection (a running server picks it up within a second)."""
    from crmsandbox.faults import FaultConfigError, Faults, parse_rates

    dd = _dd(data)
    current: dict[str, Any] = {}
    if dd.faults_file.exists() and not reset:
        current = json.loads(dd.faults_file.read_text() or "{}")
    try:
        if latency_ms is not None:
            current["latency_ms"] = latency_ms
        if jitter_ms is not None:
            current["jitter_ms"] = jitter_ms
        if error_rates:
            rates = dict(current.get("error_rates") or {})
            rates.update(parse_rates(list(error_rates)))
            current["error_rates"] = {k: v for k, v in rates.items() if v}
        if daily_api_limit is not None:
            current["daily_api_limit"] = daily_api_limit
        if seed is not None:
            current["seed"] = seed
        if timeout_seconds is not None:
            current["timeout_seconds"] = timeout_seconds
        if oauth is not None:
            current["apply_to_oauth"] = oauth
        f = Faults.from_dict(current)
    except FaultConfigError as e:
        raise click.ClickException(str(e)) from None
    write_json_atomic(dd.faults_file, f.to_dict())
    click.echo(json.dumps(f.to_dict()))


#: org settings ``crmsandbox config --set`` may change (others are managed by init/serve/apps)
SETTABLE = {
    "loopline_send_url": "URL the web UI's 'Send to Loopline' button POSTs {\"id\", \"object\"} to",
    "loopline_send_token": "bearer token sent with it (Authorization: Bearer ...)",
    "session_ttl_seconds": "access token lifetime",
    "daily_api_limit": "daily API allowance",
    "org_name": "organisation name",
    "ui_page_size": "records per page in the web UI lists",
    "loopline_fields": "true: declare the Loopline custom fields (as init --loopline-fields)",
}


def _parse_setting(raw: str) -> tuple[str, Any]:
    key, sep, value = raw.partition("=")
    key = key.strip()
    if not sep or not key:
        raise click.BadParameter(f"expected key=value, got {raw!r}")
    if key not in SETTABLE:
        raise click.BadParameter(f"unknown setting {key!r}; settable: {', '.join(sorted(SETTABLE))}")
    if key in ("session_ttl_seconds", "daily_api_limit", "ui_page_size"):
        try:
            return key, int(value)
        except ValueError:
            raise click.BadParameter(f"{key} must be an integer") from None
    if key == "loopline_fields":
        return key, value.strip().lower() in ("1", "true", "yes", "on")
    return key, value


@main.command("config")
@click.option("--data", "data", required=True, type=click.Path(file_okay=False))
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="set an org setting (repeatable): " + ", ".join(sorted(SETTABLE)))
@click.option("--unset", "unset", multiple=True, metavar="KEY", help="remove a setting (repeatable)")
def config_cmd(data: str, settings: tuple[str, ...], unset: tuple[str, ...]) -> None:
    """Show or change org settings in config.json (secrets are masked in the output). The web UI reads
    loopline_send_url/loopline_send_token on every use; other settings apply after restarting ``serve``."""
    dd = _dd(data)
    cfg = json.loads(dd.config_file.read_text())
    parsed = [_parse_setting(s) for s in settings]
    for key, value in parsed:
        if key == "loopline_fields":
            if value:
                add_loopline_fields(cfg)
            continue
        cfg[key] = value
    for key in unset:
        if key not in SETTABLE:
            raise click.BadParameter(f"unknown setting {key!r}")
        cfg.pop(key, None)
    if parsed or unset:
        dd.save_config(cfg)
    shown = {k: cfg.get(k) for k in SETTABLE if k in cfg}
    if shown.get("loopline_send_token"):
        shown["loopline_send_token"] = "***"
    click.echo(json.dumps(shown, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
