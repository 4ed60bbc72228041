"""Metadata sync against a real crmsandbox ([R2]: it runs while paused): describe data, User Sync, connected
campaigns ([R38] metadata part), the "Refresh metadata" button and the 15-minute schedule."""

from __future__ import annotations

import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from loopline.conftest import PASSWORD
from loopline.connector import metadata, services
from loopline.connector.models import CrmDescribe, CrmUser, SyncRun
from loopline.platform.models import AuditLog


def _profile_id(crm, name: str) -> str:
    return crm.query(f"SELECT Id FROM Profile WHERE Name = '{name}'")[0]["Id"]


def _new_crm_user(crm, profile: str = "Standard User", **values) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    email = f"rep.{tag}@example.com"
    crm_id = crm.create("User", Username=f"rep.{tag}@crm.example", Email=email, FirstName="Rae",
                                LastName=f"Rep {tag}", Alias=tag[:8], ProfileId=_profile_id(crm, profile),
                                IsActive=True, **values)
    return crm_id, email


def test_describe_users_and_campaigns_sync_while_paused(sandbox_connector, crm, bu):
    from loopline.campaigns.models import Campaign

    for i in range(3):
        crm.create("Campaign", Name=f"Seeded {uuid.uuid4().hex[:6]} {i}", Status="In Progress")

    assert sandbox_connector.status == "paused"  # [R2]: metadata syncs anyway
    run = metadata.sync_metadata(sandbox_connector)
    assert run.kind == "metadata" and run.finished_at and "failed" not in run.note, run.note
    assert set(CrmDescribe.objects.filter(connector=sandbox_connector).values_list("object_type", flat=True)) == {
        "Lead", "Contact", "Account", "User", "Campaign"}
    lead = metadata.describe_fields(sandbox_connector, "Lead")
    assert lead["Email"]["type"] == "email" and lead["LastName"]["updateable"]
    assert metadata.describe_fields(sandbox_connector, "PersonAccount") is not None  # an Account
    assert run.counters["describe"]["objects"] == 5 and run.api_calls >= 7

    users = CrmUser.objects.filter(connector=sandbox_connector)
    assert users.filter(username="integration@crmsandbox.local", profile="B2BMA Integration User").exists()
    assert users.count() >= 5
    # No profile is mapped yet: nobody is created in Loopline.
    assert run.counters["users"]["created"] == 0

    crm_campaigns = Campaign.objects.filter(bu=bu).exclude(crm_campaign_id="")
    assert crm_campaigns.count() >= 3
    campaign = crm_campaigns.first()
    assert campaign.crm_campaign_id.startswith("701") and campaign.status in {"planned", "in_progress",
                                                                              "completed", "aborted"}
    # A second run changes nothing and says so.
    again = metadata.sync_metadata(sandbox_connector)
    assert again.counters["campaigns"]["created"] == 0 and again.counters["campaigns"]["updated"] == 0
    assert "0 new, 0 updated" in again.note


def test_connected_campaigns_follow_the_crm(sandbox_connector, crm, bu):
    from loopline.campaigns.models import Campaign

    tag = uuid.uuid4().hex[:6]
    Campaign.objects.create(bu=bu, name=f"Webinar {tag}")  # same name, not linked yet → linked
    Campaign.objects.create(bu=bu, name=f"Clash {tag}", crm_campaign_id="701000000000999AAA")
    parent = crm.create("Campaign", Name=f"Parent {tag}", Status="Planned", Type="Email")
    child = crm.create("Campaign", Name=f"Webinar {tag}", Status="In Progress", Type="Webinar",
                               StartDate="2026-03-01", BudgetedCost=1500, ParentId=parent)
    other = crm.create("Campaign", Name=f"Clash {tag}", Status="Completed")
    counters = metadata.sync_campaigns(sandbox_connector, services.client_for(sandbox_connector))
    assert counters["linked"] == 1
    webinar = Campaign.objects.get(bu=bu, crm_campaign_id=child)
    assert webinar.name == f"Webinar {tag}" and webinar.status == "in_progress" and webinar.type == "Webinar"
    assert str(webinar.start_date) == "2026-03-01" and webinar.budgeted_cost == 1500
    assert webinar.parent.crm_campaign_id == parent
    clash = Campaign.objects.get(bu=bu, crm_campaign_id=other)
    assert clash.name.startswith(f"Clash {tag} (701") and clash.status == "completed"

    crm.update("Campaign", child, Name=f"Webinar {tag} (renamed)", Status="Completed")
    metadata.sync_campaigns(sandbox_connector, services.client_for(sandbox_connector))
    webinar.refresh_from_db()
    assert webinar.name == f"Webinar {tag} (renamed)" and webinar.status == "completed"


def test_user_sync_creates_updates_and_deactivates_by_profile(sandbox_connector, crm, admin_access, bu):
    from loopline.accounts import services as account_services
    from loopline.accounts.models import Membership, User

    existing = account_services.create_user("user2@crmsandbox.local", password=PASSWORD)
    crm_id, email = _new_crm_user(crm, "Standard User")
    metadata.update_profile_role_map(admin_access, sandbox_connector, {"Standard User": "sales",
                                                                       "Marketing User": ""})
    assert AuditLog.objects.filter(action="connector.update_profile_role_map").exists()
    counters = metadata.sync_users(sandbox_connector, services.client_for(sandbox_connector))
    assert counters["created"] >= 1

    rae = User.objects.get(email=email)
    assert rae.crm_user_id == crm_id and rae.first_name == "Rae" and not rae.has_usable_password()
    assert Membership.objects.get(bu=bu, user=rae).role.key == "sales"
    existing.refresh_from_db()  # an existing Loopline user is linked (and given the mapped role here)
    assert existing.crm_user_id.startswith("005")
    assert Membership.objects.get(bu=bu, user=existing).role.key == "sales"
    # A profile that is not mapped: linked only, never created.
    assert not User.objects.filter(email="user3@crmsandbox.local").exists()
    assert CrmUser.objects.get(connector=sandbox_connector, crm_id=crm_id).user == rae

    # Profile → role change updates the membership; a CRM name change updates the user.
    metadata.update_profile_role_map(admin_access, sandbox_connector, {"Standard User": "sales_manager"})
    crm.update("User", crm_id, FirstName="Rachel")
    metadata.sync_users(sandbox_connector, services.client_for(sandbox_connector))
    rae.refresh_from_db()
    assert rae.first_name == "Rachel"
    assert Membership.objects.get(bu=bu, user=rae).role.key == "sales_manager"

    # Deactivated in the CRM → removed from the BU (and inactive: no other BU).
    crm.update("User", crm_id, IsActive=False)
    counters = metadata.sync_users(sandbox_connector, services.client_for(sandbox_connector))
    assert counters["deactivated"] == 1
    rae.refresh_from_db()
    assert not Membership.objects.filter(bu=bu, user=rae).exists() and rae.is_active is False
    assert AuditLog.objects.filter(action="membership.remove", summary__contains="inactive in the CRM").exists()


def test_user_sync_never_removes_an_administrator(sandbox_connector, crm, admin_access, admin_user, bu):
    from loopline.accounts.models import Membership

    crm_id = crm.query("SELECT Id FROM User WHERE Username = 'user1@crmsandbox.local'")[0]["Id"]
    admin_user.crm_user_id = crm_id
    admin_user.save()
    CrmUser.objects.create(connector=sandbox_connector, crm_id=crm_id, username="user1@crmsandbox.local",
                           profile="Standard User", user=admin_user)
    metadata.update_profile_role_map(admin_access, sandbox_connector, {"Standard User": "sales"})
    metadata.sync_users(sandbox_connector, services.client_for(sandbox_connector))
    assert Membership.objects.get(bu=bu, user=admin_user).role.key == "administrator"  # never demoted


def test_role_map_refuses_unknown_roles(sandbox_connector, admin_access, marketing_access):
    from django.core.exceptions import PermissionDenied, ValidationError

    with pytest.raises(ValidationError):
        metadata.update_profile_role_map(admin_access, sandbox_connector, {"Standard User": "wizard"})
    with pytest.raises(PermissionDenied):
        metadata.update_profile_role_map(marketing_access, sandbox_connector, {"Standard User": "sales"})


def test_failures_are_recorded_on_the_run(admin_access):
    connector = services.create_connector(admin_access)
    run = metadata.sync_metadata(connector)  # no credentials yet
    assert run.note.startswith("Metadata sync failed") and "login URL" in run.note
    services.update_connection(admin_access, connector, {"login_url": "https://127.0.0.1:9", "consumer_key": "k",
                                                         "username": "u"})
    run = metadata.sync_metadata(connector)
    assert "Metadata sync failed" in run.note and "describe" in run.note


def test_schedule_is_registered_and_skips_unverified_connectors(admin_access):
    from loopline.platform.scheduler import schedules

    schedule = {s.name: s for s in schedules()}["connector.metadata_sync"]
    assert schedule.every.total_seconds() == 900 and schedule.target is metadata.sync_all_metadata
    services.create_connector(admin_access)
    assert metadata.sync_all_metadata.call() == {}
    assert not SyncRun.objects.exists()


def test_scheduled_task_syncs_verified_connectors(sandbox_connector):
    sandbox_connector.last_verified_at = timezone.now()
    sandbox_connector.save()
    result = metadata.sync_all_metadata.call()
    assert list(result) == [str(sandbox_connector.pk)]
    assert SyncRun.objects.filter(connector=sandbox_connector, kind="metadata").exists()


# --- The pages ---------------------------------------------------------------------------------------------------


def test_refresh_button_and_user_sync_page(client, admin_user, sandbox_connector, bu, crm):
    crm.create("Campaign", Name=f"Refresh page {uuid.uuid4().hex[:6]}", Status="Planned")  # not left to other tests
    client.login(username=admin_user.email, password=PASSWORD)
    response = client.post(reverse("connector:metadata_refresh"), follow=True)
    page = response.content.decode()
    assert "Metadata refreshed" in page and "CRM users" in page
    assert AuditLog.objects.filter(action="connector.refresh_metadata", actor=admin_user).exists()
    assert "integration@crmsandbox.local" in page and "B2BMA Integration User" in page
    assert "Connected campaigns" in page and "701" in page
    assert "Start initial import" in page

    profiles = sorted(set(CrmUser.objects.filter(connector=sandbox_connector).values_list("profile", flat=True)))
    data = {f"profile_{i}": ("marketing" if p == "Marketing User" else "") for i, p in enumerate(profiles)}
    assert client.post(reverse("connector:metadata_roles"), data).status_code == 302
    sandbox_connector.refresh_from_db()
    assert metadata.profile_role_map(sandbox_connector) == {"Marketing User": "marketing"}
    bad = client.post(reverse("connector:metadata_roles"), {"profile_0": "nope"})
    assert bad.status_code == 400
