#!/usr/bin/env bash
# Installs everything Loopline needs into ./.venv and ./node_modules. Idempotent; safe to re-run.
# Usage: scripts/bootstrap.sh [--browser]   (--browser also installs Debian's chromium for UI tests)
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.9.30
want_browser=0
[ "${1:-}" = "--browser" ] && want_browser=1

find_python() {
  for candidate in "$(command -v pyenv >/dev/null 2>&1 && pyenv which python3.13 2>/dev/null || true)" \
                   "$HOME/.pyenv/versions/3.13.0/bin/python3.13" python3.13 python3.12; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1; then command -v "$candidate"; return 0; fi
  done
  echo "Python 3.13 (or 3.12) is required; install it (e.g. pyenv install 3.13) and re-run." >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(find_python)
  echo "==> creating .venv with $py"
  "$py" -m venv .venv
fi
if ! .venv/bin/python -m uv --version 2>/dev/null | grep -q "$UV_VERSION"; then
  echo "==> installing uv $UV_VERSION"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
echo "==> installing Python dependencies (uv.lock)"
UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never .venv/bin/python -m uv sync --frozen --quiet \
  --python .venv/bin/python --group dev

if [ -f package-lock.json ]; then
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "==> installing front-end packages (package-lock.json)"
    npm ci --no-audit --no-fund --loglevel=error
  fi
fi

if [ "$want_browser" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Debian's chromium for browser tests"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "!! could not install chromium; browser tests will be skipped" >&2
  else
    echo "!! not root: install chromium yourself (sudo apt-get install chromium); browser tests will be skipped" >&2
  fi
fi
