#!/usr/bin/env bash
# The whole test suite: static checks, the embedded (SQLite) run, then the scale-mode run against PostgreSQL and a
# real broker. The scale run is mandatory when CI=true and skipped (with a notice) elsewhere if the services are down.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONPATH=src

step() { printf '\n==> %s\n' "$*"; }

step "ruff"
.venv/bin/ruff check src tests bench
step "mypy"
.venv/bin/mypy src/loopline src/crmsandbox
step "migrations are up to date"
LOOPLINE_DATA_DIR=$(mktemp -d) $PY -m loopline makemigrations --check --dry-run >/dev/null

PG_URL=${LOOPLINE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/loopline}
BROKER_URL=${LOOPLINE_TEST_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//}

step "test suite, embedded mode (SQLite, database task backend)"
$PY -m pytest -q -n 2 --dist loadgroup "$@"

services_up() {
  $PY - "$PG_URL" "$BROKER_URL" <<'PYEOF'
import socket, sys
from urllib.parse import urlparse
for url in sys.argv[1:]:
    u = urlparse(url)
    socket.create_connection((u.hostname, u.port), timeout=3).close()
PYEOF
}

if services_up 2>/dev/null; then
  step "test suite, scale mode (PostgreSQL + Celery on $(echo "$BROKER_URL" | cut -d: -f1))"
  DATABASE_URL=$PG_URL CELERY_BROKER_URL=$BROKER_URL SECRET_KEY=test-only-secret-key-not-for-production \
    $PY -m pytest -q -n 2 --dist loadgroup "$@"
elif [ "${CI:-}" = "true" ]; then
  echo "PostgreSQL or the broker is not reachable; the scale-mode run is required in CI" >&2
  exit 1
else
  echo "(skipping the scale-mode run: PostgreSQL at $PG_URL or the broker at $BROKER_URL is not reachable)"
fi
