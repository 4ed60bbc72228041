"""Loopline settings, read from the environment.

Two profiles:
- embedded (default): SQLite in ``LOOPLINE_DATA_DIR``, tasks in the same database, a generated secret key kept on disk.
- scale: ``DATABASE_URL=postgres://...`` plus ``CELERY_BROKER_URL``; ``SECRET_KEY`` must come from the environment.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent  # src/loopline
REPO_DIR = BASE_DIR.parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DATA_DIR = Path(os.environ.get("LOOPLINE_DATA_DIR", REPO_DIR / "data")).resolve()
DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
PROFILE = "scale" if DATABASE_URL and not DATABASE_URL.startswith("sqlite") else "embedded"
DEBUG = env_bool("LOOPLINE_DEBUG", False)
TESTING = "pytest" in sys.modules or env_bool("LOOPLINE_TESTING")


def _secret_key() -> str:
    key = os.environ.get("SECRET_KEY", "").strip()
    if key:
        return key
    if PROFILE == "scale":
        raise ImproperlyConfigured(
            "SECRET_KEY must be set in scale mode (DATABASE_URL is PostgreSQL). "
            "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    # Embedded mode: generate once, keep it next to the database so sessions and signed links survive restarts.
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
# Encrypts secrets at rest (connector private keys, API credentials). Defaults to a key derived from SECRET_KEY.
FIELD_ENCRYPTION_KEY = os.environ.get("LOOPLINE_FIELD_ENCRYPTION_KEY", "")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
PUBLIC_BASE_URL = os.environ.get("LOOPLINE_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_tasks_db",
    "loopline.platform",
    "loopline.accounts",
    "loopline.campaigns",
    "loopline.prospects",
    "loopline.api",
    "loopline.connector",
    "loopline.tracking",
    "loopline.forms",
    "loopline.emails",
    "loopline.qualification",
    "loopline.automation",
    "loopline.automation.programs",
    "loopline.notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "loopline.platform.middleware.RequestLogMiddleware",
    "loopline.tracking.middleware.TrackingHitFastPath",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "loopline.accounts.middleware.BusinessUnitMiddleware",
]

ROOT_URLCONF = "loopline.config.urls"
WSGI_APPLICATION = "loopline.config.wsgi.application"
ASGI_APPLICATION = "loopline.config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "loopline.accounts.context_processors.business_unit",
            ],
        },
    }
]

# --- Database -------------------------------------------------------------------------------------------------------
if PROFILE == "scale":
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("LOOPLINE_TEST_DB_NAME", "test_loopline")}
else:
    sqlite_path = Path(DATABASE_URL.removeprefix("sqlite:///")) if DATABASE_URL else DATA_DIR / "loopline.sqlite3"
    sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(sqlite_path),
            "OPTIONS": {
                # IMMEDIATE transactions avoid "database is locked" upgrades; WAL lets readers run beside the writer.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000; "
                    "PRAGMA foreign_keys=ON; PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY;"
                ),
            },
            "TEST": {"NAME": os.environ.get("LOOPLINE_TEST_SQLITE") or None},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["loopline.accounts.auth.EmailBackend"]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "accounts:login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The header's live notification badge polls once a second. Browser tests run against Django's threaded live server,
# which shares one SQLite connection between request threads, so they leave it out unless a test asks for it.
NOTIFICATIONS_LIVE_BADGE = env_bool("LOOPLINE_NOTIFICATIONS_LIVE_BADGE", default=not TESTING)

# Login throttling: failed attempts per (email, IP) inside the window before a lockout.
LOGIN_MAX_FAILURES = int(os.environ.get("LOOPLINE_LOGIN_MAX_FAILURES", "5"))
LOGIN_MAX_FAILURES_PER_IP = int(os.environ.get("LOOPLINE_LOGIN_MAX_FAILURES_PER_IP", "50"))
LOGIN_LOCKOUT_SECONDS = int(os.environ.get("LOOPLINE_LOGIN_LOCKOUT_SECONDS", "900"))
# Hours between the CRM connector's scheduled reconciliations (0 turns them off).
CONNECTOR_RECONCILE_HOURS = float(os.environ.get("LOOPLINE_CONNECTOR_RECONCILE_HOURS", "24"))
PASSWORD_RESET_MAX_PER_EMAIL = int(os.environ.get("LOOPLINE_PASSWORD_RESET_MAX_PER_EMAIL", "3"))
PASSWORD_RESET_MAX_PER_IP = int(os.environ.get("LOOPLINE_PASSWORD_RESET_MAX_PER_IP", "20"))

# --- Security -------------------------------------------------------------------------------------------------------
HTTPS = env_bool("LOOPLINE_HTTPS", PROFILE == "scale")
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = int(os.environ.get("LOOPLINE_SESSION_SECONDS", str(12 * 3600)))
SESSION_EXPIRE_AT_BROWSER_CLOSE = False
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
CSRF_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = HTTPS and env_bool("LOOPLINE_SSL_REDIRECT", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("LOOPLINE_BEHIND_PROXY") else None
SECURE_HSTS_SECONDS = 31536000 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- I18N / static ----------------------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
with contextlib.suppress(OSError):
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise expects it, even when serving from finders
STATICFILES_DIRS: list[Any] = [BASE_DIR / "static"]
NODE_MODULES_DIR = REPO_DIR / "node_modules"
if NODE_MODULES_DIR.exists():
    STATICFILES_DIRS.append(("vendor", NODE_MODULES_DIR))
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
MEDIA_ROOT = DATA_DIR / "media"

# --- Email -------------------------------------------------------------------------------------------------------------
# Django 6.1 mailers. The default SMTP target is the local catcher that `loopline run` starts in embedded mode.
MAILERS: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": os.environ.get("LOOPLINE_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend"),
        "OPTIONS": {
            "host": os.environ.get("EMAIL_HOST", "127.0.0.1"),
            "port": int(os.environ.get("EMAIL_PORT", "2525")),
            "username": os.environ.get("EMAIL_HOST_USER", ""),
            "password": os.environ.get("EMAIL_HOST_PASSWORD", ""),
            "use_tls": env_bool("EMAIL_USE_TLS"),
            "timeout": 20,
        },
    }
}
if not MAILERS["default"]["BACKEND"].endswith("smtp.EmailBackend"):
    MAILERS["default"]["OPTIONS"] = {}
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Loopline <no-reply@loopline.localhost>")

# --- Background work ---------------------------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
TASK_BACKEND = os.environ.get("LOOPLINE_TASK_BACKEND", "celery" if CELERY_BROKER_URL else "database")
if TASK_BACKEND == "celery":
    TASKS = {"default": {"BACKEND": "loopline.platform.celery_backend.CeleryBackend", "QUEUES": ["default"]}}
elif TASK_BACKEND == "immediate":
    TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
else:
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

# --- Logging -------------------------------------------------------------------------------------------------------------
LOG_FORMAT = os.environ.get("LOOPLINE_LOG_FORMAT", "console" if DEBUG else "json")
LOG_LEVEL = os.environ.get("LOOPLINE_LOG_LEVEL", "INFO")
LOGGING_CONFIG = None
from loopline.platform.logging import configure_logging  # noqa: E402

configure_logging(LOG_FORMAT, LOG_LEVEL)
