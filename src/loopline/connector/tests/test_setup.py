"""Connector lifecycle rules [R1], [R2], [R4], [R5], [R6] at the service level."""

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from loopline.connector import mapping, services
from loopline.connector.engine import SyncBehaviour
from loopline.connector.models import Connector
from loopline.platform import crypto
from loopline.platform.models import AuditLog


def test_one_connector_per_bu_created_paused_with_encrypted_key(admin_access):
    connector = services.create_connector(admin_access)
    assert connector.status == Connector.Status.PAUSED  # [R2]
    assert connector.version == 2  # [R5]
    assert "PRIVATE KEY" not in connector.private_key  # [R6] encrypted at rest
    assert crypto.decrypt(connector.private_key).startswith("-----BEGIN PRIVATE KEY-----")
    assert connector.certificate.startswith("-----BEGIN CERTIFICATE-----")
    with pytest.raises(ValidationError, match="only one"):  # [R1]
        services.create_connector(admin_access)


def test_only_administrators_manage_the_connector(marketing_access, admin_access):  # [R5]
    with pytest.raises(PermissionDenied):
        services.create_connector(marketing_access)
    connector = services.create_connector(admin_access)
    with pytest.raises(PermissionDenied):
        services.update_settings(marketing_access, connector, {"poll_interval_seconds": 10})


def test_default_mapping_installed_and_loaded(admin_access):
    connector = services.create_connector(admin_access)
    loaded = {m.loopline_field: m for m in mapping.load_mappings(connector)}
    assert loaded["email"].crm_field("Lead") == "Email"
    assert loaded["opted_out"].behaviour is SyncBehaviour.MOST_RECENT_FIELD
    assert "score" not in loaded  # no CRM field named yet for the fixed score field [R18]


def test_settings_are_validated_and_audited(admin_access):
    connector = services.create_connector(admin_access)
    with pytest.raises(ValidationError):
        services.update_settings(admin_access, connector, {"api_share_percent": 0})
    with pytest.raises(ValidationError):
        services.update_settings(admin_access, connector, {"bogus": 1})
    services.update_settings(admin_access, connector, {"poll_interval_seconds": "10", "auto_create_prospects": "off"})
    connector.refresh_from_db()
    assert services.settings_of(connector)["poll_interval_seconds"] == 10
    assert services.settings_of(connector)["auto_create_prospects"] is False
    entry = AuditLog.objects.get(action="connector.update_settings")
    assert entry.before == {"poll_interval_seconds": 5, "auto_create_prospects": True}


def test_resume_needs_a_verified_connection_pause_resume_audited(admin_access):  # [R4]
    from django.utils import timezone

    connector = services.create_connector(admin_access)
    with pytest.raises(ValidationError, match="Verify"):
        services.resume(admin_access, connector)
    connector.last_verified_at = timezone.now()
    services.resume(admin_access, connector)
    services.pause(admin_access, connector)
    actions = list(AuditLog.objects.filter(action__in=["connector.resume", "connector.pause"])
                   .order_by("id").values_list("action", "actor_id"))
    assert actions == [("connector.resume", admin_access.user.pk), ("connector.pause", admin_access.user.pk)]


def test_connection_settings_refuse_plain_http(admin_access):
    connector = services.create_connector(admin_access)
    with pytest.raises(ValidationError):
        services.update_connection(admin_access, connector, {"login_url": "http://login.example.com"})


def test_naming_fixed_fields_points_their_mapping_rows(admin_access):  # [R18]
    connector = services.create_connector(admin_access)
    services.update_settings(admin_access, connector, {"score_field": "Loopline_Score__c"})
    loaded = {m.loopline_field: m for m in mapping.load_mappings(connector)}
    assert loaded["score"].crm_field("Lead") == "Loopline_Score__c"
    assert loaded["score"].crm_field("PersonAccount") == "Loopline_Score__pc"
    assert "grade" not in loaded
