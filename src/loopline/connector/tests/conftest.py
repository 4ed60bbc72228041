"""Connector sync tests run against a real ``crmsandbox`` over HTTPS (a subprocess; never imported)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from .sandbox import SandboxProcess


@dataclass
class CrmApp:
    consumer_key: str
    private_pem: str
    cert_pem: str


# The external id creates upsert on ([R25]); the demo sandbox declares it with ``crmsandbox init --loopline-fields``.
LOOPLINE_ID = {"name": "Loopline_Id__c", "type": "string", "length": 64, "external_id": True, "unique": True}


@pytest.fixture(scope="session")
def crm():
    sandbox = SandboxProcess.start(config={
        "custom_fields": {
            "Lead": [{"name": "Region__c", "type": "picklist", "values": ["EMEA", "AMER"], "restricted": True},
                     LOOPLINE_ID],
            "Contact": [LOOPLINE_ID]},
        "validation_rules": {"Lead": [{"name": "WebsiteFormat", "field": "Website", "condition": "regex",
                                       "pattern": "https?://.+", "message": "Website must start with http"}]},
    })
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="session")
def crm_app(crm) -> CrmApp:
    from loopline.connector import keys

    private_pem, cert_pem = keys.generate_key_pair("Loopline tests")
    return CrmApp(crm.add_app("loopline-tests", cert_pem), private_pem, cert_pem)


@pytest.fixture(autouse=True)
def _reset_faults(request):
    yield
    if "crm" in request.fixturenames:
        crm = request.getfixturevalue("crm")
        crm.faults(reset=True, reset_usage=True)


def register_app(crm, name: str) -> CrmApp:
    """A JWT connected app (fresh key pair) registered in ``crm`` — for modules that start a sandbox of their own."""
    from loopline.connector import keys

    private_pem, cert_pem = keys.generate_key_pair(name)
    return CrmApp(crm.add_app(name.lower().replace(" ", "-"), cert_pem), private_pem, cert_pem)


def make_connector(access, crm, crm_app, *, resume: bool = True, **settings):
    from loopline.connector import services
    from loopline.platform import crypto

    connector = services.create_connector(access)
    connector.private_key = crypto.encrypt(crm_app.private_pem)
    connector.certificate = crm_app.cert_pem
    connector.save()
    services.update_connection(access, connector, {
        "login_url": crm.login_url, "consumer_key": crm_app.consumer_key, "username": crm.integration_username,
        "ca_file": crm.ca_file})
    if settings:
        services.update_settings(access, connector, settings)
    ok, message = services.verify_connection(access, connector)
    assert ok, message
    if resume:
        services.resume(access, connector)
    connector.refresh_from_db()
    return connector


@pytest.fixture
def connector(admin_access, crm, crm_app):
    return make_connector(admin_access, crm, crm_app)


@pytest.fixture
def unique():
    """A unique suffix: the sandbox is shared by the whole session."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def sandbox_connector(admin_access, crm):
    """The admin's connector with *its own* certificate registered in the sandbox as a new connected app, and the
    connection details filled in — not verified, still paused (the setup wizard's starting point)."""
    from loopline.connector import services

    connector = services.create_connector(admin_access)
    consumer_key = crm.add_app(f"loopline-{uuid.uuid4().hex[:12]}", connector.certificate)
    services.update_connection(admin_access, connector, {
        "login_url": crm.login_url, "consumer_key": consumer_key, "username": crm.integration_username,
        "api_version": "59.0", "ca_file": crm.ca_file,
    })
    connector.refresh_from_db()
    return connector
