"""The connector admin pages ([R5] admin-only, audited): wizard, settings, mapping, status, error queue, import."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from loopline.conftest import PASSWORD
from loopline.connector import services
from loopline.connector.models import Connector, CrmDescribe, FieldMapping, SyncError, SyncRun
from loopline.platform.models import AuditLog, Job

PAGES = ["connector:overview", "connector:settings", "connector:mapping", "connector:status",
         "connector:status_panel", "connector:errors", "connector:metadata"]
POSTS = ["connector:create", "connector:regenerate_certificate", "connector:connection", "connector:verify",
         "connector:pause", "connector:resume", "connector:mapping_add", "connector:errors_retry_all",
         "connector:import_start", "connector:metadata_refresh", "connector:metadata_roles",
         "connector:fetch_record"]


def login(client, user):
    assert client.login(username=user.email, password=PASSWORD)
    return client


@pytest.fixture
def admin_client(client, admin_user):
    return login(client, admin_user)


@pytest.fixture
def connector(admin_access):
    return services.create_connector(admin_access)


def describe(connector, object_type, fields):
    """Cache describe data as the metadata sync would."""
    CrmDescribe.objects.update_or_create(connector=connector, object_type=object_type, defaults={"data": {
        "name": object_type, "fields": [{"label": f["name"], "length": 0, "updateable": True, "calculated": False,
                                         "type": "string", **f} for f in fields]}})


STANDARD = [{"name": n} for n in ("FirstName", "LastName", "Email", "Company", "Title", "Phone", "Fax", "Street",
                                  "City", "State", "PostalCode", "Country", "Industry", "Website", "LeadSource")] + [
    {"name": "AnnualRevenue", "type": "currency"}, {"name": "NumberOfEmployees", "type": "int"},
    {"name": "HasOptedOutOfEmail", "type": "boolean"}, {"name": "DoNotCall", "type": "boolean"},
    {"name": "OwnerId", "type": "reference"}, {"name": "Id", "type": "id", "updateable": False},
]


# --- Role gating ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role_user", ["marketing_user", "sales_user", "sales_manager_user"])
def test_non_admins_get_403_everywhere_and_no_nav_entry(client, request, role_user, connector):
    user = request.getfixturevalue(role_user)
    login(client, user)
    for name in PAGES:
        assert client.get(reverse(name)).status_code == 403, name
    for name in POSTS:
        assert client.post(reverse(name)).status_code == 403, name
    assert client.get(reverse("connector:certificate")).status_code == 403
    home = client.get(reverse("prospects:list"))
    assert "CRM connector" not in home.content.decode()
    connector.refresh_from_db()
    assert connector.status == Connector.Status.PAUSED


def test_admin_sees_the_nav_entry(admin_client):
    page = admin_client.get(reverse("prospects:list")).content.decode()
    assert 'href="/connector/"' in page and "CRM connector" in page


def test_anonymous_is_sent_to_login(client):
    response = client.get(reverse("connector:overview"))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_other_business_units_connector_is_never_visible(client, connector, other_bu):
    from loopline.accounts import services as account_services

    other_admin = account_services.create_user("boss@globex.test", password=PASSWORD)
    account_services.set_membership(other_bu, other_admin, "administrator")
    login(client, other_admin)
    page = client.get(reverse("connector:overview"))
    assert "Create connector" in page.content.decode()  # their BU has none
    assert client.get(reverse("connector:status")).status_code == 404
    assert client.get(reverse("connector:certificate")).status_code == 404
    error = SyncError.objects.create(connector=connector, direction="to_crm", code="X", message="m")
    client.post(reverse("connector:create"))
    assert client.post(reverse("connector:error_dismiss", args=[error.pk])).status_code == 404
    row = FieldMapping.objects.filter(connector=connector).first()
    assert client.post(reverse("connector:mapping_behaviour", args=[row.pk]),
                       {"behaviour": "use_loopline"}).status_code == 404


# --- Wizard ----------------------------------------------------------------------------------------------------------


def test_wizard_create_certificate_credentials(admin_client, admin_user, bu):
    page = admin_client.get(reverse("connector:overview")).content.decode()
    assert "Create connector" in page and "paused" in page
    response = admin_client.post(reverse("connector:create"), follow=True)
    connector = Connector.objects.get(bu=bu)
    assert connector.status == "paused"  # [R2]
    body = response.content.decode()
    assert "Download certificate" in body and "Paused" in body and "Version 2" in body
    assert "crmsandbox apps add" in body and "Use digital signatures" in body
    assert AuditLog.objects.filter(action="connector.create", actor=admin_user).exists()
    # A second one is refused with a clear message [R1].
    again = admin_client.post(reverse("connector:create"), follow=True).content.decode()
    assert "already has a CRM connector" in again

    pem = admin_client.get(reverse("connector:certificate"))
    assert pem.status_code == 200 and pem.content.decode() == connector.certificate
    assert "attachment" in pem["Content-Disposition"]

    old = connector.certificate
    admin_client.post(reverse("connector:regenerate_certificate"))
    connector.refresh_from_db()
    assert connector.certificate != old
    assert AuditLog.objects.filter(action="connector.regenerate_certificate").exists()

    bad = admin_client.post(reverse("connector:connection"), {
        "login_url": "http://login.example.com", "consumer_key": "k", "username": "u", "api_version": "59"})
    assert bad.status_code == 400
    text = bad.content.decode()
    assert "must start with https://" in text and "API version like 59.0" in text

    ok = admin_client.post(reverse("connector:connection"), {
        "login_url": "https://login.example.com/", "consumer_key": "3MVGkey", "username": "integration@example.com",
        "api_version": "60.0", "ca_file": ""})
    assert ok.status_code == 302
    connector.refresh_from_db()
    assert (connector.login_url, connector.consumer_key, connector.username, connector.api_version) == (
        "https://login.example.com", "3MVGkey", "integration@example.com", "60.0")
    assert AuditLog.objects.filter(action="connector.update_connection").exists()


def test_resume_needs_verification_then_pause_resume_are_audited(admin_client, connector, admin_user):
    response = admin_client.post(reverse("connector:resume"), follow=True)
    assert "Verify the connection before resuming" in response.content.decode()
    connector.last_verified_at = timezone.now()
    connector.save()
    admin_client.post(reverse("connector:resume"))
    connector.refresh_from_db()
    assert connector.status == "active"
    page = admin_client.get(reverse("connector:overview")).content.decode()
    assert "Pause syncing" in page and "confirm(" in page
    admin_client.post(reverse("connector:pause"))
    connector.refresh_from_db()
    assert connector.status == "paused"
    assert list(AuditLog.objects.filter(action__in=["connector.resume", "connector.pause"])
                .order_by("id").values_list("action", "actor")) == [
        ("connector.resume", admin_user.pk), ("connector.pause", admin_user.pk)]


def test_verify_without_credentials_says_what_is_missing(admin_client, connector):
    response = admin_client.post(reverse("connector:verify"), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "Connection failed" in response.content.decode()
    assert "Enter the login URL, consumer key and connector username first" in response.content.decode()


def test_get_only_and_post_only_endpoints(admin_client, connector):
    assert admin_client.get(reverse("connector:pause")).status_code == 405
    assert admin_client.post(reverse("connector:certificate")).status_code == 405


# --- Settings --------------------------------------------------------------------------------------------------------


def _settings_post(connector, **changes):
    data = {k: v for k, v in services.settings_of(connector).items() if not isinstance(v, bool) or v}
    data = {k: ("on" if v is True else v) for k, v in data.items()}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not False and k != "profile_role_map"}


def test_settings_page_saves_validates_and_shows_matching_mode(admin_client, connector, bu):
    page = admin_client.get(reverse("connector:settings")).content.decode()
    assert "Matching mode" in page and "Unique email" in page and "can't be changed here" in page
    for label in ("Create prospects automatically", "Blank CRM values clear Loopline values",
                  "What a new prospect creates in the CRM", "daily API calls Loopline may use",
                  "Use bulk loading above", "CRM field for the prospect score", "Log emails sent"):
        assert label in page

    data = _settings_post(connector, poll_interval_seconds="10", api_share_percent="35", score_field="Score__c",
                          new_record_object="Contact")
    data.pop("auto_create_prospects")  # unticked checkbox
    assert admin_client.post(reverse("connector:settings"), data).status_code == 302
    connector.refresh_from_db()
    settings = services.settings_of(connector)
    assert settings["poll_interval_seconds"] == 10 and settings["api_share_percent"] == 35
    assert settings["auto_create_prospects"] is False and settings["new_record_object"] == "Contact"
    # The fixed score row now names the CRM field [R18].
    score = FieldMapping.objects.get(connector=connector, loopline_field="score")
    assert (score.lead_field, score.contact_field, score.person_account_field) == ("Score__c", "Score__c",
                                                                                     "Score__pc")
    assert AuditLog.objects.filter(action="connector.update_settings").exists()

    bad = admin_client.post(reverse("connector:settings"), _settings_post(
        connector, api_share_percent="0", max_poll_interval_seconds="2", score_field="not a name!"))
    assert bad.status_code == 400
    text = bad.content.decode()
    assert "greater than or equal to 1" in text and "slowest interval" in text and "CRM field API name" in text

    bu.allow_duplicate_emails = True
    bu.save()
    assert "CRM id (several prospects may share an email)" in admin_client.get(
        reverse("connector:settings")).content.decode()


# --- Field mapping --------------------------------------------------------------------------------------------------


def test_mapping_table_fixed_fields_and_resync_note(admin_client, connector):
    page = admin_client.get(reverse("connector:mapping")).content.decode()
    assert "does not resync existing records" in page  # [R21]
    assert "Fixed fields" in page and "Loopline → CRM" in page and "CRM → Loopline" in page  # [R18]
    assert "HasOptedOutOfEmail" in page and "Use the most recently updated field" in page
    assert "no field list from the CRM yet" in page


def test_behaviour_changes_are_validated_by_the_engine_and_audited(admin_client, connector):
    email = FieldMapping.objects.get(connector=connector, loopline_field="email")
    response = admin_client.post(reverse("connector:mapping_behaviour", args=[email.pk]),
                                 {"behaviour": "most_recent_field"}, follow=True)
    assert "allowed for the opt-out field only" in response.content.decode()  # [R16]
    email.refresh_from_db()
    assert email.behaviour == "use_crm"

    admin_client.post(reverse("connector:mapping_behaviour", args=[email.pk]), {"behaviour": "use_loopline"})
    email.refresh_from_db()
    assert email.behaviour == "use_loopline"
    entry = AuditLog.objects.get(action="connector.mapping.update")
    assert entry.before == {"behaviour": "use_crm"} and entry.after == {"behaviour": "use_loopline"}

    opt_out = FieldMapping.objects.get(connector=connector, loopline_field="opted_out")
    admin_client.post(reverse("connector:mapping_behaviour", args=[opt_out.pk]), {"behaviour": "use_crm"})
    admin_client.post(reverse("connector:mapping_behaviour", args=[opt_out.pk]), {"behaviour": "most_recent_field"})
    opt_out.refresh_from_db()
    assert opt_out.behaviour == "most_recent_field"

    owner = FieldMapping.objects.get(connector=connector, loopline_field="crm_owner_id")
    response = admin_client.post(reverse("connector:mapping_behaviour", args=[owner.pk]),
                                 {"behaviour": "use_loopline"}, follow=True)
    assert "fixed field" in response.content.decode()
    owner.refresh_from_db()
    assert owner.behaviour == "use_crm"
    assert not SyncRun.objects.exists()  # no resync was triggered [R21]


def test_map_a_custom_field_to_existing_updateable_crm_fields(admin_client, admin_access, connector):
    from loopline.prospects import services as prospect_services

    field = prospect_services.save_custom_field(admin_access, {"name": "Seats", "api_name": "seats",
                                                               "type": "number"})
    describe(connector, "Lead", [*STANDARD, {"name": "Seats__c", "type": "double", "label": "Seats"},
                                 {"name": "Formula__c", "updateable": False}])
    describe(connector, "Contact", [*STANDARD, {"name": "Seats__c", "type": "double"}])
    describe(connector, "Account", [{"name": "Name"}])
    page = admin_client.get(reverse("connector:mapping")).content.decode()
    assert "Seats (Seats__c, double)" in page
    assert "Formula__c" not in page  # read-only fields are not offered
    assert ">Id<" not in page and "OwnerId (" not in page

    # A field that does not exist (or is read-only) is refused with a clear message.
    bad = admin_client.post(reverse("connector:mapping_add"), {"custom_field": field.pk,
                                                               "lead_field": "Formula__c", "behaviour": "use_crm"})
    assert bad.status_code == 400 and "Select a valid choice" in bad.content.decode()
    none = admin_client.post(reverse("connector:mapping_add"), {"custom_field": field.pk, "behaviour": "use_crm"})
    assert "Choose a CRM field on at least one object" in none.content.decode()
    recent = admin_client.post(reverse("connector:mapping_add"), {
        "custom_field": field.pk, "lead_field": "Seats__c", "behaviour": "most_recent_field"})
    assert recent.status_code == 400

    ok = admin_client.post(reverse("connector:mapping_add"), {
        "custom_field": field.pk, "lead_field": "Seats__c", "contact_field": "Seats__c",
        "behaviour": "use_loopline"})
    assert ok.status_code == 302
    row = FieldMapping.objects.get(connector=connector, loopline_field="custom.seats")
    assert (row.lead_field, row.contact_field, row.behaviour) == ("Seats__c", "Seats__c", "use_loopline")
    assert AuditLog.objects.filter(action="connector.mapping.save").exists()

    from loopline.connector import mapping

    assert "custom.seats" in {m.loopline_field for m in mapping.load_mappings(connector)}

    admin_client.post(reverse("connector:mapping_remove", args=[row.pk]))
    assert not FieldMapping.objects.filter(pk=row.pk).exists()
    email = FieldMapping.objects.get(connector=connector, loopline_field="email")
    response = admin_client.post(reverse("connector:mapping_remove", args=[email.pk]), follow=True)
    assert "stay mapped" in response.content.decode()
    assert FieldMapping.objects.filter(pk=email.pk).exists()


def test_service_refuses_fields_missing_from_the_describe(admin_access, connector):
    from django.core.exceptions import ValidationError

    from loopline.connector import mapping_admin
    from loopline.prospects import services as prospect_services

    field = prospect_services.save_custom_field(admin_access, {"name": "Tier", "api_name": "tier"})
    with pytest.raises(ValidationError, match="refresh the metadata"):
        mapping_admin.save_custom_mapping(admin_access, connector, field, lead_field="Tier__c")
    describe(connector, "Lead", [{"name": "Tier__c"}, {"name": "Calc__c", "calculated": True}])
    with pytest.raises(ValidationError, match="has no field named Bogus__c"):
        mapping_admin.save_custom_mapping(admin_access, connector, field, lead_field="Bogus__c")
    with pytest.raises(ValidationError, match="read-only"):
        mapping_admin.save_custom_mapping(admin_access, connector, field, lead_field="Calc__c")
    row = mapping_admin.save_custom_mapping(admin_access, connector, field, lead_field="tier__c")
    assert row.lead_field == "tier__c"


def test_mapped_field_missing_from_the_crm_is_flagged(admin_client, connector):
    describe(connector, "Lead", [f for f in STANDARD if f["name"] != "Industry"])
    describe(connector, "Contact", STANDARD)
    describe(connector, "Account", [{"name": "Name"}])
    page = admin_client.get(reverse("connector:mapping")).content.decode()
    assert "Not in the CRM&#x27;s field list: Lead Industry, Person account Industry." in page
    assert "need attention" in page
    assert 'class="missing"' in page


# --- Status page ------------------------------------------------------------------------------------------------------


def test_status_page_renders_summary_runs_and_polls(admin_client, connector):
    SyncRun.objects.create(connector=connector, kind="pull", finished_at=timezone.now(),
                           counters={"fetched": 3, "created": 1, "updated": 2, "skipped": {"echo": 4}}, api_calls=2,
                           note="3 fetched, 1 created, 2 updated")
    SyncRun.objects.create(connector=connector, kind="push", finished_at=timezone.now(), counters={},
                           note="nothing to do: the connector is paused")
    SyncError.objects.create(connector=connector, direction="to_crm", code="REQUIRED_FIELD_MISSING", message="x")
    page = admin_client.get(reverse("connector:status")).content.decode()
    assert 'hx-trigger="every 5s"' in page and reverse("connector:status_panel") in page
    assert "Paused" in page and "Recent sync runs" in page
    assert "nothing to do: the connector is paused" in page  # [R29]
    assert "3 fetched, 1 created, 2 updated" in page and "4 echo" in page
    assert "Sync errors" in page and "Connector user" in page and "API calls today" in page
    assert '<svg class="bar-chart"' in page and "3 records" in page  # created + updated this hour
    panel = admin_client.get(reverse("connector:status_panel"))
    assert panel.status_code == 200 and b"<html" not in panel.content and b"status-panel" in panel.content


def test_hourly_bars_scale_to_the_busiest_hour():
    import datetime as dt

    from loopline.connector.views import _hourly_bars

    start = dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    bars = _hourly_bars({"synced_per_hour": [(start, 5), {"hour": start + dt.timedelta(hours=1), "count": 10},
                                             ("12:00", 0)]})
    assert [b["count"] for b in bars] == [5, 10, 0]
    assert bars[1]["h"] == 96 and bars[0]["h"] == 48 and bars[2]["h"] == 0
    assert _hourly_bars({}) == []


# --- Error queue --------------------------------------------------------------------------------------------------


def _prospect(bu, email="ann@example.com"):
    from loopline.prospects import services as prospect_services

    return prospect_services.create_prospect(bu, {"email": email, "last_name": "Ann"})


def test_error_queue_lists_filters_and_dismisses(admin_client, connector, bu, admin_user):
    prospect = _prospect(bu)
    open_error = SyncError.objects.create(connector=connector, prospect=prospect, crm_id="00Q000000000001AAA",
                                          direction="to_crm", code="INVALID_EMAIL_ADDRESS",
                                          message="Email: invalid email address: x", fields=["Email"], attempts=3)
    SyncError.objects.create(connector=connector, crm_id="003000000000009AAA", direction="from_crm",
                             code="UNABLE_TO_LOCK_ROW", message="locked", status="retrying", transient=True)
    SyncError.objects.create(connector=connector, direction="to_crm", code="OLD", message="old one",
                             status="dismissed")
    page = admin_client.get(reverse("connector:errors")).content.decode()
    assert "INVALID_EMAIL_ADDRESS" in page and "ann@example.com" in page and "00Q000000000001AAA" in page
    assert reverse("prospects:detail", args=[prospect.pk]) in page
    assert "Loopline → CRM" in page and "Fields: Email" in page
    assert "UNABLE_TO_LOCK_ROW" not in page and "old one" not in page  # default filter: open
    assert "UNABLE_TO_LOCK_ROW" in admin_client.get(reverse("connector:errors") + "?status=retrying").content.decode()
    assert "old one" in admin_client.get(reverse("connector:errors") + "?status=dismissed").content.decode()
    assert "old one" in admin_client.get(reverse("connector:errors") + "?status=all").content.decode()

    response = admin_client.post(reverse("connector:error_dismiss", args=[open_error.pk]), {"status": "open"})
    assert response.status_code == 302 and response["Location"].endswith("?status=open")
    open_error.refresh_from_db()
    assert open_error.status == "dismissed"
    assert AuditLog.objects.filter(action="connector.error_dismiss", actor=admin_user).exists()


def test_retry_one_and_retry_all_queue_the_records_again(admin_client, connector, bu):
    from loopline.connector.models import OutboxEntry

    first, second = _prospect(bu, "a@example.com"), _prospect(bu, "b@example.com")
    e1 = SyncError.objects.create(connector=connector, prospect=first, direction="to_crm",
                                  code="REQUIRED_FIELD_MISSING", message="Required fields are missing: [Company]")
    SyncError.objects.create(connector=connector, prospect=second, direction="to_crm",
                             code="FIELD_CUSTOM_VALIDATION_EXCEPTION", message="nope")
    OutboxEntry.objects.filter(connector=connector).delete()
    admin_client.post(reverse("connector:error_retry", args=[e1.pk]))
    e1.refresh_from_db()
    assert e1.status == "retrying"
    assert OutboxEntry.objects.filter(connector=connector, prospect=first, reason="retry").exists()
    response = admin_client.post(reverse("connector:errors_retry_all"), follow=True)
    assert "will be synced again shortly" in response.content.decode()
    assert OutboxEntry.objects.filter(connector=connector, prospect=second, reason="retry").exists()
    assert AuditLog.objects.filter(action="connector.error_retry").exists()
    assert AuditLog.objects.filter(action="connector.error_retry_all").exists()


# --- Initial import ([R10]) ------------------------------------------------------------------------------------------


def test_initial_import_needs_verification_then_starts_a_job(admin_client, connector, bu, django_capture_on_commit_callbacks):
    response = admin_client.post(reverse("connector:import_start"), follow=True)
    assert "Verify the connection before importing" in response.content.decode()
    assert not Job.objects.exists()
    connector.last_verified_at = timezone.now()
    connector.save()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(reverse("connector:import_start"))
    assert len(callbacks) == 1  # the task is enqueued on commit
    job = Job.objects.get(bu=bu, kind="connector.initial_import")
    assert response["Location"] == reverse("connector:import_job", args=[job.pk])
    # Pressing again while it runs shows the same job.
    admin_client.post(reverse("connector:import_start"))
    assert Job.objects.filter(kind="connector.initial_import").count() == 1
    page = admin_client.get(reverse("connector:import_job", args=[job.pk])).content.decode()
    assert "Waiting to start" in page and 'hx-trigger="every 2s"' in page
    Job.objects.filter(pk=job.pk).update(status="running", total=200, done=50)
    partial = admin_client.get(reverse("connector:import_status", args=[job.pk])).content.decode()
    assert "25%" in partial and "50 of 200 CRM records" in partial
    Job.objects.filter(pk=job.pk).update(status="succeeded", done=200, result={"created": 180, "skipped": 20})
    partial = admin_client.get(reverse("connector:import_status", args=[job.pk])).content.decode()
    assert "Initial import finished" in partial and "hx-trigger" not in partial and "180" in partial
    assert AuditLog.objects.filter(action="connector.initial_import").exists()


def test_import_job_of_another_bu_is_404(admin_client, connector, other_bu):
    from loopline.platform.tasks import create_job

    job = create_job(other_bu, "connector.initial_import")
    assert admin_client.get(reverse("connector:import_job", args=[job.pk])).status_code == 404
    assert admin_client.get(reverse("connector:import_status", args=[job.pk])).status_code == 404


def test_import_task_runs_the_sync_core_loop(admin_access, connector, monkeypatch):
    from loopline.connector import initial_import
    from loopline.platform.tasks import create_job

    seen = {}

    class Counters:
        def as_dict(self):
            return {"created": 2}

    def fake_loop(conn, job):
        seen["args"] = (conn.pk, job.pk)
        return Counters()

    monkeypatch.setattr(initial_import, "_import_loop", lambda: fake_loop)
    job = create_job(admin_access.bu, initial_import.JOB_KIND)
    initial_import.run_initial_import.call(connector_id=connector.pk, job_id=job.pk)
    job.refresh_from_db()
    assert seen["args"] == (connector.pk, job.pk)
    assert job.status == "succeeded" and job.result == {"created": 2}
