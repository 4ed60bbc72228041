"""Shared set-up for benchmarks: a throw-away data dir and database (SQLite, or a PostgreSQL database created and
dropped here), Django configured against it and migrated. Progress goes to stderr; one JSON line to stdout."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SRC = Path(__file__).resolve().parent.parent / "src"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def print_figures(result: dict, keys) -> None:
    """The one JSON line: details first, then the issue's keys in its order (closing the line)."""
    import json

    ordered = {k: v for k, v in result.items() if k not in keys}
    ordered.update({k: result.get(k) for k in keys})
    print(json.dumps(ordered), flush=True)


def start_crm_sandbox(*, leads: int, contacts: int = 0):
    """A crmsandbox subprocess seeded with leads/contacts, the external-id field creates upsert on ([R25]) and a
    daily API limit no benchmark reaches."""
    from loopline.connector.tests.sandbox import SandboxProcess

    loopline_id = {"name": "Loopline_Id__c", "type": "string", "length": 64, "external_id": True, "unique": True}
    return SandboxProcess.start(leads=leads, contacts=contacts, config={
        "daily_api_limit": 5_000_000, "custom_fields": {"Lead": [loopline_id], "Contact": [loopline_id]}})


def connected_bu(crm, name: str):
    """A business unit named ``name`` with an admin and its connector verified against the sandbox ``crm`` (still
    paused, as a new connector is). Returns ``(bu, access, connector)``."""
    from loopline.accounts import services as accounts
    from loopline.accounts.access import Access
    from loopline.connector import keys, services
    from loopline.platform import crypto

    bu = accounts.create_business_unit(name, postal_address=f"1 {name} St")
    user = accounts.create_user(f"admin-{uuid.uuid4().hex[:6]}@bench.test", password="x" * 20, first_name="Admin")
    accounts.set_membership(bu, user, "administrator")
    access = Access.for_user(user, bu)
    connector = services.create_connector(access)
    private_pem, cert_pem = keys.generate_key_pair(name.lower())
    consumer_key = crm.add_app(f"loopline-{name.lower()}-{uuid.uuid4().hex[:6]}", cert_pem)
    connector.private_key, connector.certificate = crypto.encrypt(private_pem), cert_pem
    connector.save()
    services.update_connection(access, connector, {"login_url": crm.login_url, "consumer_key": consumer_key,
                                                   "username": crm.integration_username, "ca_file": crm.ca_file})
    ok, message = services.verify_connection(access, connector)
    assert ok, message
    connector.refresh_from_db()
    return bu, access, connector


@contextlib.contextmanager
def bench_environment(database_url: str | None, *, prefix: str):
    """Yield ``vendor`` ("sqlite" | "postgresql") with Django set up on a fresh, migrated database; clean up after."""
    tmp = tempfile.mkdtemp(prefix=f"{prefix}-")
    os.environ["LOOPLINE_DATA_DIR"] = tmp
    Path(tmp, "static").mkdir()  # STATIC_ROOT, so whitenoise does not warn
    os.environ.setdefault("LOOPLINE_LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopline.config.settings")
    os.environ.pop("LOOPLINE_TASK_BACKEND", None)
    admin_url = None
    db_name = None
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        import psycopg

        admin_url = database_url
        db_name = f"{prefix.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        parts = urlsplit(database_url)
        os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{db_name}"))
        os.environ.setdefault("SECRET_KEY", "bench-" + uuid.uuid4().hex)
        log(f"created PostgreSQL database {db_name}")
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
    try:
        sys.path.insert(0, str(SRC))
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        log("migrating")
        call_command("migrate", verbosity=0)
        yield connection.vendor
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if admin_url and db_name:
            import psycopg

            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            log(f"dropped {db_name}")
        shutil.rmtree(tmp, ignore_errors=True)


def measure_part(run, database_url: str | None, prospects: int, *, prefix: str) -> dict:
    """Run one part of bench/automation.py: inside the caller's environment when Django is already set up (the
    combined script), otherwise in a throw-away one of its own."""
    import django.apps

    if django.apps.apps.ready:
        return run(prospects)
    with bench_environment(database_url, prefix=prefix):
        return run(prospects)


def part_main(measure, description: str) -> None:
    """Command line of a bench part: ``--prospects N [--database-url URL]``, one JSON line."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--prospects", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=None, help="PostgreSQL server URL (default: a SQLite file)")
    args = parser.parse_args()
    figures = measure(args.database_url, args.prospects)
    print(json.dumps({"prospects": args.prospects, **figures}))
