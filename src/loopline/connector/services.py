"""Connector use cases: setup, verification, pause/resume, settings. All admin-only and audited ([R1]–[R6])."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from loopline.accounts.access import Access
from loopline.platform import audit, crypto

from . import keys
from .models import Connector
from .salesforce.auth import AuthError
from .salesforce.client import ClientConfig, CrmApiError, CrmClient

DEFAULT_SETTINGS: dict[str, Any] = {
    "auto_create_prospects": True,  # [R10]
    "update_email_from_crm": True,  # [R19]
    "blank_crm_values_overwrite": False,  # [R17]
    "match_by_email_when_no_crm_id": True,  # [R9], CRM-id mode only
    "new_record_object": "Lead",  # [R11]
    "sync_person_accounts": False,  # [R14] polls person accounts too (one more query per poll); on when creating them
    "poll_interval_seconds": 5,  # [R22] starting interval; adapts between min and max
    "max_poll_interval_seconds": 10,  # idle polling: ≤ 360 calls/hour, CRM → Loopline p50 ≈ 5 s
    "api_share_percent": 20,  # [R27]
    "bulk_threshold": 2000,  # [R23]
    "score_field": "",  # [R18] CRM field names for the fixed fields (empty = not written)
    "grade_field": "",
    "campaign_field": "",
    "log_email_tasks": False,  # [R39]
    "external_id_field": "Loopline_Id__c",  # [R25] creates go out as upserts on it when the CRM has the field
}
EDITABLE_SETTINGS = frozenset(DEFAULT_SETTINGS)


def _require_admin(access: Access) -> None:
    if not access.can("connector.edit"):  # [R5]
        raise PermissionDenied("Only administrators can manage the CRM connector")


def settings_of(connector: Connector) -> dict[str, Any]:
    return {**DEFAULT_SETTINGS, **(connector.settings or {})}


@transaction.atomic
def create_connector(access: Access) -> Connector:
    """[R1] one per BU; [R2] created paused; [R6] a fresh key pair, private key encrypted at rest."""
    _require_admin(access)
    if Connector.objects.filter(bu=access.bu).exists():
        raise ValidationError("This business unit already has a CRM connector; a business unit can have only one.")
    private_pem, cert_pem = keys.generate_key_pair(f"Loopline connector for {access.bu.name}")
    try:
        with transaction.atomic():
            connector = Connector.objects.create(
                bu=access.bu, private_key=crypto.encrypt(private_pem), certificate=cert_pem,
                settings=dict(DEFAULT_SETTINGS),
            )
    except IntegrityError:
        raise ValidationError("This business unit already has a CRM connector; a business unit can have only one.") from None
    from . import mapping

    mapping.install_default_mapping(connector)
    audit.record("connector.create", actor=access.user, bu=access.bu, obj=connector, after={"status": "paused"})
    return connector


@transaction.atomic
def regenerate_certificate(access: Access, connector: Connector) -> Connector:
    _require_admin(access)
    private_pem, cert_pem = keys.generate_key_pair(f"Loopline connector for {access.bu.name}")
    connector.private_key, connector.certificate = crypto.encrypt(private_pem), cert_pem
    connector.save(update_fields=["private_key", "certificate", "updated_at"])
    audit.record("connector.regenerate_certificate", actor=access.user, bu=access.bu, obj=connector)
    return connector


CONNECTION_FIELDS = ("login_url", "consumer_key", "username", "api_version", "ca_file")


@transaction.atomic
def update_connection(access: Access, connector: Connector, data: dict[str, Any]) -> Connector:
    _require_admin(access)
    before = {f: getattr(connector, f) for f in CONNECTION_FIELDS}
    for field in CONNECTION_FIELDS:
        if field in data and data[field] is not None:
            setattr(connector, field, str(data[field]).strip())
    if connector.login_url and not connector.login_url.startswith("https://"):
        raise ValidationError({"login_url": "The login URL must start with https://"})
    version = connector.api_version
    try:
        if float(version) < 40:
            raise ValueError
    except ValueError:
        raise ValidationError({"api_version": "API version must look like 59.0 (40.0 or later)"}) from None
    connector.save()
    before_after = audit.diff(before, {f: getattr(connector, f) for f in CONNECTION_FIELDS})
    audit.record("connector.update_connection", actor=access.user, bu=access.bu, obj=connector,
                 before=before_after[0], after=before_after[1])
    return connector


@transaction.atomic
def update_settings(access: Access, connector: Connector, changes: dict[str, Any]) -> Connector:
    _require_admin(access)
    unknown = set(changes) - EDITABLE_SETTINGS
    if unknown:
        raise ValidationError(f"Unknown connector settings: {', '.join(sorted(unknown))}")
    current = settings_of(connector)
    new = {**current}
    for key, value in changes.items():
        default = DEFAULT_SETTINGS[key]
        if isinstance(default, bool):
            value = value if isinstance(value, bool) else str(value).lower() in {"1", "true", "on", "yes"}
        elif isinstance(default, int):
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ValidationError(f"{key} must be a whole number") from None
            if value < 0:
                raise ValidationError(f"{key} must not be negative")
        else:
            value = str(value).strip()
        new[key] = value
    if new["new_record_object"] not in {"Lead", "Contact", "PersonAccount"}:
        raise ValidationError("New prospects can create a Lead, a Contact or a PersonAccount")
    if not 1 <= new["api_share_percent"] <= 100:
        raise ValidationError("The API share must be between 1 and 100 percent")
    if new["poll_interval_seconds"] < 1 or new["max_poll_interval_seconds"] < new["poll_interval_seconds"]:
        raise ValidationError("Poll interval must be ≥ 1 s and not above the maximum interval")
    connector.settings = new
    connector.save(update_fields=["settings", "updated_at"])
    from . import mapping

    mapping.apply_fixed_field_names(connector)
    before, after = audit.diff(current, new)
    audit.record("connector.update_settings", actor=access.user, bu=access.bu, obj=connector, before=before, after=after)
    return connector


def client_config(connector: Connector) -> ClientConfig:
    if not (connector.login_url and connector.consumer_key and connector.username):
        raise ValidationError("Enter the login URL, consumer key and connector username first")
    return ClientConfig(
        login_url=connector.login_url, consumer_key=connector.consumer_key, username=connector.username,
        private_key_pem=crypto.decrypt(connector.private_key), api_version=connector.api_version,
        ca_file=connector.ca_file,
    )


def client_for(connector: Connector) -> CrmClient:
    return CrmClient(client_config(connector))


def verify_connection(access: Access, connector: Connector) -> tuple[bool, str]:
    """Mint a token and call the API once; store what we learn (org, connector user id) or the error."""
    _require_admin(access)
    try:
        client = client_for(connector)
        token = client.token
        client.limits()
    except ValidationError as exc:
        ok, message = False, "; ".join(exc.messages)
    except AuthError as exc:
        ok, message = False, f"The CRM refused the token: {exc}"
    except CrmApiError as exc:
        ok, message = False, f"The CRM answered an error: {exc}"
    except crypto.DecryptionError as exc:
        ok, message = False, str(exc)
    else:
        from . import sharing

        connector.instance_url, connector.org_id, connector.connector_user_id = (
            token.instance_url, token.org_id, token.user_id)
        # [R34] a second BU on the org: refused until every BU on it has sharing rules (the org is still learnt,
        # so the rules can be defined for this connector).
        problem = sharing.second_bu_problem(connector)
        ok, message = (False, problem) if problem else (True, f"Connected to org {token.org_id} as {connector.username}")
        if ok:
            connector.last_verified_at = timezone.now()
    connector.last_error = "" if ok else message
    # Only what verification learnt: a sync running meanwhile owns api_usage, status and paused_until.
    connector.save(update_fields=["instance_url", "org_id", "connector_user_id", "last_verified_at", "last_error",
                                  "updated_at"])
    audit.record("connector.verify", actor=access.user, bu=access.bu, obj=connector, summary=message[:300])
    return ok, message


@transaction.atomic
def pause(access: Access, connector: Connector) -> None:  # [R4]
    _require_admin(access)
    if connector.status == Connector.Status.PAUSED:
        return
    before = connector.status
    connector.status = Connector.Status.PAUSED
    connector.save(update_fields=["status", "updated_at"])
    audit.record("connector.pause", actor=access.user, bu=access.bu, obj=connector, before={"status": before},
                 after={"status": "paused"})


@transaction.atomic
def resume(access: Access, connector: Connector) -> None:  # [R4]
    _require_admin(access)
    if not connector.last_verified_at:
        raise ValidationError("Verify the connection before resuming the connector")
    if connector.status == Connector.Status.ACTIVE:
        return
    from . import sharing

    problem = sharing.second_bu_problem(connector)  # [R34]
    if problem:
        raise ValidationError(problem)
    connector.status = Connector.Status.ACTIVE
    connector.save(update_fields=["status", "updated_at"])
    audit.record("connector.resume", actor=access.user, bu=access.bu, obj=connector, before={"status": "paused"},
                 after={"status": "active"})
