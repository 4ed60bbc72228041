"""Settings profiles, /healthz and /metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

from django.test import Client

SRC = Path(__file__).resolve().parents[3]


def _settings_probe(env: dict, code: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SECRET_KEY", "CELERY_BROKER_URL"}}
    full_env.update(env, PYTHONPATH=str(SRC), DJANGO_SETTINGS_MODULE="loopline.config.settings")
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=60)


def test_scale_mode_refuses_to_start_without_secret_key(tmp_path):
    r = _settings_probe(
        {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x", "LOOPLINE_DATA_DIR": str(tmp_path)},
        "from django.conf import settings; settings.SECRET_KEY",
    )
    assert r.returncode != 0
    assert "SECRET_KEY must be set in scale mode" in r.stderr


def test_embedded_mode_generates_and_keeps_a_secret_key(tmp_path):
    code = "from django.conf import settings; print(settings.SECRET_KEY, settings.PROFILE)"
    first = _settings_probe({"LOOPLINE_DATA_DIR": str(tmp_path)}, code)
    second = _settings_probe({"LOOPLINE_DATA_DIR": str(tmp_path)}, code)
    assert first.returncode == 0, first.stderr
    key, profile = first.stdout.split()
    assert profile == "embedded" and len(key) >= 50
    assert second.stdout == first.stdout
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_scale_profile_security_settings(tmp_path):
    code = (
        "import json; from django.conf import settings as s; print(json.dumps({"
        "'profile': s.PROFILE, 'secure': s.SESSION_COOKIE_SECURE, 'hsts': s.SECURE_HSTS_SECONDS, "
        "'engine': s.DATABASES['default']['ENGINE'], 'tasks': s.TASKS['default']['BACKEND']}))"
    )
    r = _settings_probe(
        {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x", "SECRET_KEY": "k" * 50,
         "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//", "LOOPLINE_DATA_DIR": str(tmp_path)},
        code,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"profile": "scale", "secure": True, "hsts": 31536000,
                   "engine": "django.db.backends.postgresql", "tasks": "loopline.platform.celery_backend.CeleryBackend"}


def test_healthz_reports_database_ok(db):
    r = Client().get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok"}
    assert "no-cache" in r["Cache-Control"]


def test_metrics_exposes_prometheus_text(db):
    c = Client()
    c.get("/healthz")
    r = c.get("/metrics")
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/plain")
    assert b"loopline_http_requests_total" in r.content


def test_every_response_carries_a_request_id_and_security_headers(db):
    r = Client().get("/healthz", HTTP_X_REQUEST_ID="abc123")
    assert r["X-Request-Id"] == "abc123"
    assert r["X-Content-Type-Options"] == "nosniff"
    assert r["Referrer-Policy"] == "same-origin"
