"""Metadata sync: describe data, User Sync and connected campaigns. Runs even while the connector is paused ([R2]).

* **Describe** — ``GET sobjects/{T}/describe`` for :data:`DESCRIBE_OBJECTS`, cached in :class:`CrmDescribe` for the
  mapping screen and the value checks ([R20]).
* **User Sync** — every CRM user becomes a :class:`CrmUser` row linked to the Loopline user with the same email.
  CRM profiles the admin maps to a Loopline role (``connector.settings["profile_role_map"]``: profile name → built-in
  role key, or a custom role's id) are *managed*: their active users get a Loopline user and a membership in the BU
  with that role (created, or their role and names updated); when such a CRM user is deactivated (or disappears) the
  membership in this BU is removed. Users of unmapped profiles are only linked, never created or removed.
  Administrators are never removed by User Sync, and a BU always keeps its last administrator.
* **Connected campaigns** ([R38], metadata part) — every CRM campaign becomes a Loopline campaign carrying its
  ``crm_campaign_id`` (matched by id, then by name); name, type, status, dates, costs and parent follow the CRM.

Each run records a :class:`SyncRun` of kind ``metadata`` with counters per part and a note when nothing changed
([R29]). One failing part does not stop the others; its error is counted and shown in the run note.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.tasks import task
from django.utils import timezone

from loopline.accounts.abilities import BUILTIN_ROLES
from loopline.accounts.access import Access
from loopline.accounts.models import Membership, Role, User
from loopline.accounts.selectors import builtin_role
from loopline.platform import audit

from .models import Connector, CrmDescribe, CrmUser, SyncRun
from .salesforce.auth import AuthError
from .salesforce.client import CrmApiError, CrmClient

logger = logging.getLogger("loopline.connector.metadata")

DESCRIBE_OBJECTS = ("Lead", "Contact", "Account", "User", "Campaign")
METADATA_EVERY = dt.timedelta(minutes=15)
USER_SOQL = "SELECT Id, Username, Email, FirstName, LastName, IsActive, ProfileId, Profile.Name FROM User"
CAMPAIGN_SOQL = (
    "SELECT Id, Name, Status, Type, StartDate, EndDate, IsActive, ActualCost, BudgetedCost, ParentId FROM Campaign"
)
CAMPAIGN_STATUS = {"planned": "planned", "in progress": "in_progress", "completed": "completed", "aborted": "aborted"}
PROFILE_ROLE_MAP = "profile_role_map"


# --- Describe -----------------------------------------------------------------------------------------------------


def refresh_describes(connector: Connector, client: CrmClient) -> dict[str, int]:
    counters = {"objects": 0, "fields": 0}
    for object_type in DESCRIBE_OBJECTS:
        data = client.describe(object_type)
        CrmDescribe.objects.update_or_create(connector=connector, object_type=object_type, defaults={"data": data})
        counters["objects"] += 1
        counters["fields"] += len(data.get("fields") or ())
    return counters


def describe_of(connector: Connector, object_type: str) -> dict | None:
    row = CrmDescribe.objects.filter(connector=connector, object_type=object_type).first()
    return row.data if row else None


def describe_fields(connector: Connector, object_type: str) -> dict[str, dict] | None:
    """Cached fields of ``object_type`` by name (``None`` when never fetched). A person account is an Account."""
    data = describe_of(connector, "Account" if object_type == "PersonAccount" else object_type)
    if data is None:
        return None
    return {str(f["name"]): f for f in data.get("fields") or ()}


# --- User Sync ----------------------------------------------------------------------------------------------------


def profile_role_map(connector: Connector) -> dict[str, str]:
    return dict((connector.settings or {}).get(PROFILE_ROLE_MAP) or {})


def resolve_role(bu, value: str | int | None) -> Role | None:
    """A role map value → the role: a built-in role key, or the id of one of the BU's custom roles."""
    if value in (None, ""):
        return None
    text = str(value)
    if text in BUILTIN_ROLES:
        return builtin_role(text)
    if text.isdigit():
        return Role.objects.filter(pk=int(text), bu=bu).first()
    return None


@transaction.atomic
def update_profile_role_map(access: Access, connector: Connector, mapping: dict[str, str]) -> Connector:
    """Admin-only, audited: which CRM profile becomes which Loopline role in User Sync ("" = not synced)."""
    if not access.can("connector.edit"):  # [R5]
        raise PermissionDenied("Only administrators can manage the CRM connector")
    clean: dict[str, str] = {}
    for profile, value in mapping.items():
        if value in (None, ""):
            continue
        if resolve_role(access.bu, value) is None:
            raise ValidationError(f"Unknown role for the CRM profile {profile}")
        clean[str(profile)] = str(value)
    before = profile_role_map(connector)
    connector.settings = {**(connector.settings or {}), PROFILE_ROLE_MAP: clean}
    connector.save(update_fields=["settings", "updated_at"])
    audit.record("connector.update_profile_role_map", actor=access.user, bu=access.bu, obj=connector,
                 before={PROFILE_ROLE_MAP: before}, after={PROFILE_ROLE_MAP: clean})
    return connector


def _is_last_admin(membership: Membership) -> bool:
    if membership.role.key != "administrator":
        return False
    return Membership.objects.filter(bu=membership.bu, role__key="administrator").count() <= 1


@transaction.atomic
def sync_users(connector: Connector, client: CrmClient) -> dict[str, int]:
    from loopline.accounts import services as account_services

    bu = connector.bu
    role_map = profile_role_map(connector)
    counters = {"crm_users": 0, "linked": 0, "created": 0, "updated": 0, "deactivated": 0}
    seen: set[str] = set()
    for record in client.query(USER_SOQL):
        crm_id = str(record["Id"])
        seen.add(crm_id)
        counters["crm_users"] += 1
        profile = ((record.get("Profile") or {}).get("Name")) or ""
        email = (record.get("Email") or "").strip().lower()
        first, last = record.get("FirstName") or "", record.get("LastName") or ""
        active = bool(record.get("IsActive", True))
        row, _ = CrmUser.objects.update_or_create(connector=connector, crm_id=crm_id, defaults={
            "username": record.get("Username") or "", "email": email, "name": f"{first} {last}".strip(),
            "profile": profile, "is_active": active,
        })
        role = resolve_role(bu, role_map.get(profile))
        user = row.user or (User.objects.filter(email=email).first() if email else None)
        if role is not None and active and email and user is None:
            user = account_services.create_user(email, first_name=first[:80], last_name=last[:80], bu=bu)
            counters["created"] += 1
        if user is None:
            continue
        changed = []
        if user.crm_user_id != crm_id:
            user.crm_user_id = crm_id
            changed.append("crm_user_id")
        if role is not None:
            for field, value in (("first_name", first[:80]), ("last_name", last[:80])):
                if value and getattr(user, field) != value:
                    setattr(user, field, value)
                    changed.append(field)
            if active and not user.is_active:
                user.is_active = True
                changed.append("is_active")
        if changed:
            user.save(update_fields=changed)
        if row.user_id != user.pk:
            row.user = user
            row.save(update_fields=["user"])
            counters["linked"] += 1
        if role is None:
            continue
        membership = Membership.objects.select_related("role", "bu").filter(bu=bu, user=user).first()
        if active:
            # Never demote an administrator through User Sync.
            if membership is None or (membership.role_id != role.pk and membership.role.key != "administrator"):
                account_services.set_membership(bu, user, role)
                counters["updated"] += 1
            elif changed:
                counters["updated"] += 1
        elif membership is not None and _deactivate(membership):
            counters["deactivated"] += 1
    # Managed users whose CRM user disappeared are treated like deactivated ones.
    for row in CrmUser.objects.filter(connector=connector).exclude(crm_id__in=seen).select_related("user"):
        row.is_active = False
        row.save(update_fields=["is_active"])
        if row.user_id and resolve_role(bu, role_map.get(row.profile)) is not None:
            membership = Membership.objects.select_related("role", "bu").filter(bu=bu, user=row.user).first()
            if membership is not None and _deactivate(membership):
                counters["deactivated"] += 1
    return counters


def _deactivate(membership: Membership) -> bool:
    """Remove a managed user's membership in this BU (never an administrator's); the user is deactivated when they
    belong to no BU any more."""
    if membership.role.key == "administrator" or _is_last_admin(membership):
        return False
    user = membership.user
    audit.record("membership.remove", bu=membership.bu, obj=membership,
                 before={"user": user.email, "role": membership.role.name},
                 summary=f"User Sync: {user.email} is inactive in the CRM")
    membership.delete()
    if not Membership.objects.filter(user=user).exists() and user.is_active:
        user.is_active = False
        user.save(update_fields=["is_active"])
    return True


# --- Connected campaigns ----------------------------------------------------------------------------------------


def _decimal(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        return Decimal(str(value)).quantize(Decimal("0.01"))
    except InvalidOperation:
        return None


def _date(value: Any) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


@transaction.atomic
def sync_campaigns(connector: Connector, client: CrmClient) -> dict[str, int]:
    from loopline.campaigns.models import Campaign

    bu = connector.bu
    counters = {"crm_campaigns": 0, "created": 0, "updated": 0, "linked": 0}
    records = client.query(CAMPAIGN_SOQL)
    by_crm_id: dict[str, Campaign] = {}
    for record in records:
        crm_id = str(record["Id"])
        counters["crm_campaigns"] += 1
        name = (record.get("Name") or crm_id).strip()[:200]
        campaign = Campaign.objects.filter(bu=bu, crm_campaign_id=crm_id).first()
        if campaign is None:
            campaign = Campaign.objects.filter(bu=bu, crm_campaign_id="", name__iexact=name).first()
            if campaign is not None:
                counters["linked"] += 1
        is_new = campaign is None
        if campaign is None:
            campaign = Campaign(bu=bu, crm_campaign_id=crm_id)
        clash = Campaign.objects.filter(bu=bu, name__iexact=name).exclude(pk=campaign.pk).exists()
        values = {
            "crm_campaign_id": crm_id,
            "name": f"{name[:178]} ({crm_id[:15]})" if clash else name,
            "type": (record.get("Type") or "")[:60],
            "status": CAMPAIGN_STATUS.get(str(record.get("Status") or "").strip().lower(), campaign.status or "planned"),
            "start_date": _date(record.get("StartDate")),
            "end_date": _date(record.get("EndDate")),
            "budgeted_cost": _decimal(record.get("BudgetedCost")),
            "actual_cost": _decimal(record.get("ActualCost")),
        }
        dirty = is_new or any(getattr(campaign, k) != v for k, v in values.items())
        for key, value in values.items():
            setattr(campaign, key, value)
        if dirty:
            campaign.save()
            if not is_new:
                counters["updated"] += 1
        if is_new:
            counters["created"] += 1
        by_crm_id[crm_id] = campaign
    for record in records:  # parents once every campaign exists
        campaign = by_crm_id[str(record["Id"])]
        parent = by_crm_id.get(str(record.get("ParentId") or ""))
        if parent is not None and parent.pk != campaign.pk and campaign.parent_id != parent.pk:
            campaign.parent = parent
            campaign.save(update_fields=["parent"])
    return counters


# --- Whole run ----------------------------------------------------------------------------------------------------

PARTS: dict[str, Callable[[Connector, CrmClient], dict[str, int]]] = {
    "describe": refresh_describes,
    "users": sync_users,
    "campaigns": sync_campaigns,
}


def sync_metadata(connector: Connector, *, client: CrmClient | None = None,
                  parts: tuple[str, ...] = tuple(PARTS)) -> SyncRun:
    """Run the metadata parts (paused or not, [R2]) and record one ``metadata`` SyncRun with counters and a note."""
    from . import services

    run = SyncRun.objects.create(connector=connector, kind="metadata")
    counters: dict[str, Any] = {}
    problems: list[str] = []
    own_client = client is None
    try:
        client = client or services.client_for(connector)
    except ValidationError as exc:
        problems.append("; ".join(exc.messages))
        client = None
    if client is not None:
        for part in parts:
            try:
                counters[part] = PARTS[part](connector, client)
            except (CrmApiError, AuthError) as exc:
                problems.append(f"{part}: {exc}")
                counters[part] = {"failed": 1}
                logger.warning("metadata %s failed for connector %s: %s", part, connector.pk, exc)
        _record_api_calls(connector, client)
        if own_client:
            client.close()
    run.counters = counters
    run.api_calls = client.usage.calls if client is not None else 0
    run.finished_at = timezone.now()
    if problems:
        run.note = ("Metadata sync failed — " + "; ".join(problems))[:300]
    else:
        run.note = _summary(counters)[:300]
    run.save(update_fields=["counters", "api_calls", "finished_at", "note"])
    return run


def _record_api_calls(connector: Connector, client: CrmClient) -> None:
    """Metadata calls count against the connector's API share like any other ([R27])."""
    try:
        from .sync import budget
    except ImportError:  # the sync core is not installed
        return
    budget.record_calls(connector, client.usage.calls, client.usage.used, client.usage.max, kind="metadata")


def _summary(counters: dict[str, Any]) -> str:
    bits = []
    if "describe" in counters:
        bits.append(f"{counters['describe'].get('objects', 0)} objects described")
    if "users" in counters:
        u = counters["users"]
        bits.append(f"{u.get('crm_users', 0)} CRM users ({u.get('created', 0)} created, {u.get('linked', 0)} linked, "
                    f"{u.get('deactivated', 0)} deactivated)")
    if "campaigns" in counters:
        c = counters["campaigns"]
        bits.append(f"{c.get('crm_campaigns', 0)} CRM campaigns ({c.get('created', 0)} new, "
                    f"{c.get('updated', 0)} updated)")
    return "; ".join(bits) or "Nothing to do: no metadata part was selected"


def refresh_metadata(access: Access, connector: Connector) -> SyncRun:
    """The "Refresh metadata" button: admin-only and audited."""
    if not access.can("connector.edit"):  # [R5]
        raise PermissionDenied("Only administrators can manage the CRM connector")
    if connector.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")
    run = sync_metadata(connector)
    audit.record("connector.refresh_metadata", actor=access.user, bu=access.bu, obj=connector, summary=run.note)
    return run


def connector_ready(connector: Connector) -> bool:
    return bool(connector.login_url and connector.consumer_key and connector.username and connector.last_verified_at)


@task
def sync_all_metadata() -> dict[str, str]:
    """Scheduled (every 15 minutes, registered in ``ConnectorConfig.ready``): metadata of every verified connector,
    paused or active ([R2])."""
    result = {}
    now = timezone.now()
    for connector in Connector.objects.select_related("bu").all():
        if not connector_ready(connector):
            continue
        if connector.paused_until and connector.paused_until > now:  # the CRM's API limit is exhausted ([R27])
            result[str(connector.pk)] = "skipped: waiting for the API limit"
            continue
        run = sync_metadata(connector)
        result[str(connector.pk)] = run.note
    return result


def register_schedules() -> None:
    from loopline.platform.scheduler import register_schedule

    register_schedule("connector.metadata_sync", every=METADATA_EVERY, task=sync_all_metadata,
                      offset=dt.timedelta(minutes=3))
