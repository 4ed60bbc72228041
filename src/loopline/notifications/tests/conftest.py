from __future__ import annotations

import pytest


@pytest.fixture
def mailoutbox(settings):
    from django.core import mail

    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend", "OPTIONS": {}}}
    mail.outbox = []
    return mail.outbox


@pytest.fixture
def immediate_tasks(settings):
    """Run enqueued tasks at once (the test database backend has no worker running)."""
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
