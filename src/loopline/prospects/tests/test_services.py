"""Prospect writes: validation, unique email per BU ([R9]), per-field change times ([R16]), recycle bin, merge, tags."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from loopline.accounts import services as account_services
from loopline.platform import events
from loopline.platform.models import AuditLog
from loopline.prospects import services
from loopline.prospects.models import Activity, ActivityType, CustomField, Prospect, Visitor
from loopline.prospects.services import ProspectValidationError


def test_create_normalises_email_and_validates(bu):
    p = services.create_prospect(bu, {"email": "  Ada@Example.COM ", "first_name": "Ada", "employees": "250"})
    assert p.email == "ada@example.com"
    assert p.employees == 250
    assert p.grade == "D"
    assert set(p.field_changed_at) >= {"email", "first_name", "employees"}


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"email": "not-an-email"}, "email", "not a valid email"),
        ({"email": "a@b.test", "employees": "many"}, "employees", "not a number"),
        ({"email": "a@b.test", "employees": "-3"}, "employees", "whole number"),
        ({"email": "a@b.test", "annual_revenue": "1e30"}, "annual_revenue", "too large"),
        ({"email": "a@b.test", "opted_out": "perhaps"}, "opted_out", "yes/no"),
        ({"email": "a@b.test", "city": "x" * 41}, "city", "at most 40"),
        ({"email": "a@b.test", "favourite_colour": "red"}, "favourite_colour", "Unknown field"),
    ],
)
def test_bad_values_name_the_field(bu, data, field, message):
    with pytest.raises(ProspectValidationError) as info:
        services.create_prospect(bu, data)
    assert field in info.value.errors
    assert message in " ".join(info.value.errors[field])
    assert not Prospect.objects.filter(bu=bu).exists()


def test_unique_email_per_bu_unless_duplicates_allowed(bu, other_bu):
    services.create_prospect(bu, {"email": "dup@x.test"})
    with pytest.raises(ProspectValidationError, match="already exists"):
        services.create_prospect(bu, {"email": "DUP@x.test"})
    services.create_prospect(other_bu, {"email": "dup@x.test"})  # other BU: fine
    dup_bu = account_services.create_business_unit("Dupes", allow_duplicate_emails=True)
    services.create_prospect(dup_bu, {"email": "dup@x.test"})
    services.create_prospect(dup_bu, {"email": "dup@x.test"})
    assert Prospect.objects.filter(bu=dup_bu, email="dup@x.test").count() == 2


def test_update_tracks_changed_fields_only_and_publishes(bu):
    p = services.create_prospect(bu, {"email": "a@x.test", "company": "Acme"})
    before = dict(p.field_changed_at)
    seen = []
    events.subscribe(events.ProspectChanged, seen.append)
    try:
        changed = services.update_prospect(p, {"company": "Acme", "job_title": "CTO"})
    finally:
        events.unsubscribe(events.ProspectChanged, seen.append)
    assert changed == {"job_title"}
    assert p.field_changed_at["company"] == before["company"]
    assert p.field_changed_at["job_title"] > before["email"]
    assert seen and seen[0].changed_fields == frozenset({"job_title"})
    assert services.update_prospect(p, {"job_title": "CTO"}) == set()


def test_email_cannot_be_blanked_or_collide(bu):
    a = services.create_prospect(bu, {"email": "a@x.test"})
    services.create_prospect(bu, {"email": "b@x.test"})
    with pytest.raises(ProspectValidationError):
        services.update_prospect(a, {"email": ""})
    with pytest.raises(ProspectValidationError, match="already exists"):
        services.update_prospect(a, {"email": "b@x.test"})
    a.refresh_from_db()
    assert a.email == "a@x.test"


@pytest.fixture
def custom_fields(bu, admin_access):
    size = services.save_custom_field(
        admin_access, {"name": "Seats", "api_name": "seats", "type": "number", "min_value": 1, "max_value": 500}
    )
    plan = services.save_custom_field(
        admin_access, {"name": "Plan", "api_name": "plan", "type": "dropdown", "options": ["Free", "Pro"],
                       "default_merge_value": "Free"}
    )
    products = services.save_custom_field(
        admin_access, {"name": "Products", "api_name": "products", "type": "multiselect", "options": ["A", "B", "C"]}
    )
    renewal = services.save_custom_field(admin_access, {"name": "Renewal", "api_name": "renewal", "type": "date"})
    code = services.save_custom_field(
        admin_access, {"name": "Code", "api_name": "code", "type": "text", "pattern": r"[A-Z]{3}-\d+", "required": True}
    )
    return size, plan, products, renewal, code


def test_custom_field_values_validate_and_store(bu, custom_fields):
    p = services.create_prospect(bu, {
        "email": "c@x.test", "seats": "12", "plan": "Pro", "products": "A;C", "renewal": "2027-01-31",
        "custom.code": "ABC-1",
    })
    assert p.custom == {"seats": 12, "plan": "Pro", "products": ["A", "C"], "renewal": "2027-01-31", "code": "ABC-1"}
    assert "custom.seats" in p.field_changed_at


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seats", "0", "at least 1"),
        ("seats", "501", "at most 500"),
        ("seats", "ten", "not a number"),
        ("plan", "Enterprise", "not among the choices"),
        ("products", "A;Z", "not among the choices"),
        ("renewal", "31/01/2027", "not a date"),
        ("code", "abc", "required format"),
    ],
)
def test_custom_field_validation_errors(bu, custom_fields, field, value, message):
    with pytest.raises(ProspectValidationError) as info:
        services.create_prospect(bu, {"email": "c@x.test", "code": "ABC-1", field: value})
    assert message in " ".join(info.value.errors[field])


def test_required_custom_field_enforced_on_create_not_partial_update(bu, custom_fields):
    with pytest.raises(ProspectValidationError) as info:
        services.create_prospect(bu, {"email": "c@x.test"})
    assert "code" in info.value.errors
    p = services.create_prospect(bu, {"email": "c@x.test", "code": "ABC-9"})
    assert services.update_prospect(p, {"first_name": "Cy"}) == {"first_name"}


def test_custom_field_definitions_are_checked_and_audited(admin_access, marketing_access):
    with pytest.raises(ValidationError):
        services.save_custom_field(admin_access, {"name": "Tier", "api_name": "tier", "type": "dropdown", "options": []})
    with pytest.raises(ValidationError):
        services.save_custom_field(admin_access, {"name": "Bad", "api_name": "bad", "type": "text", "pattern": "("})
    with pytest.raises(PermissionDenied):
        services.save_custom_field(marketing_access, {"name": "X", "api_name": "x", "type": "text"})
    cf = services.save_custom_field(admin_access, {"name": "Region", "api_name": "region", "type": "text"})
    assert AuditLog.objects.filter(action="custom_field.save", object_id=str(cf.pk)).exists()
    assert CustomField.objects.filter(bu=admin_access.bu).count() == 1


def test_recycle_bin_undelete_and_permanent_delete(bu, admin_access, marketing_access):
    p = services.create_prospect(bu, {"email": "r@x.test"})
    with pytest.raises(ValidationError, match="recycle bin first"):
        services.delete_permanently(admin_access, p)
    services.move_to_recycle_bin(p, actor=admin_access.user)
    assert Prospect.objects.get(pk=p.pk).is_deleted
    services.undelete(p, actor=admin_access.user)
    assert not Prospect.objects.get(pk=p.pk).is_deleted
    services.move_to_recycle_bin(p, actor=admin_access.user)
    with pytest.raises(PermissionDenied):
        services.delete_permanently(marketing_access, p)
    services.delete_permanently(admin_access, p)
    assert not Prospect.objects.filter(pk=p.pk).exists()
    actions = list(AuditLog.objects.filter(bu=bu).values_list("action", flat=True))
    assert {"prospect.recycle", "prospect.undelete", "prospect.delete_permanently"} <= set(actions)


def test_permanent_delete_refused_while_linked_to_live_crm_record(bu, admin_access):
    p = services.create_prospect(bu, {"email": "crm@x.test"}, extra={"crm_lead_id": "00Q000000000001AAA"})
    services.move_to_recycle_bin(p, actor=admin_access.user)
    with pytest.raises(ValidationError, match="never deletes CRM records"):
        services.delete_permanently(admin_access, p)


def test_merge_moves_activities_visitors_tags_and_recycles_loser(bu, admin_access):
    survivor = services.create_prospect(bu, {"email": "keep@x.test", "company": "Acme"})
    loser = services.create_prospect(bu, {"email": "lose@x.test", "company": "Other", "phone": "555"})
    visitor = Visitor.objects.create(bu=bu, prospect=loser)
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for _ in range(3):
        services.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=loser, visitor=visitor, occurred_at=when, points=1)
    services.add_tags(survivor, ["vip"])
    services.add_tags(loser, ["vip", "webinar"])
    merged = services.merge_prospects(survivor, loser, actor=admin_access.user)
    loser.refresh_from_db()
    assert loser.is_deleted and loser.merged_into_id == survivor.pk
    assert merged.company == "Acme" and merged.phone == "555"  # blanks filled, values kept
    assert merged.score == 3
    assert Activity.objects.filter(prospect=survivor, type=ActivityType.PAGE_VIEW).count() == 3
    assert not Activity.objects.filter(prospect=loser).exists()
    assert Visitor.objects.get(pk=visitor.pk).prospect_id == survivor.pk
    assert sorted(t.name for t in merged.tags.all()) == ["vip", "webinar"]
    # the loser's email is free again in this unique-email BU
    services.create_prospect(bu, {"email": "other@x.test"})


def test_merge_refuses_same_prospect_and_cross_bu(bu, other_bu):
    a = services.create_prospect(bu, {"email": "a@x.test"})
    b = services.create_prospect(other_bu, {"email": "b@x.test"})
    with pytest.raises(ValidationError):
        services.merge_prospects(a, a)
    with pytest.raises(ValidationError):
        services.merge_prospects(a, b)


def test_record_activity_updates_last_activity_not_for_machine_events(bu):
    p = services.create_prospect(bu, {"email": "a@x.test"})
    t1 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    services.record_activity(bu.pk, ActivityType.EMAIL_OPEN, prospect=p, occurred_at=t1 + dt.timedelta(days=1),
                             is_machine=True)
    services.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=p, occurred_at=t1)
    p.refresh_from_db()
    assert p.last_activity_at == t1


def test_assignment_never_steals(bu, sales_user, admin_user):
    p = services.create_prospect(bu, {"email": "a@x.test"})
    assert services.assign_prospect(p, sales_user)
    assert not services.assign_prospect(p, admin_user)
    p.refresh_from_db()
    assert p.assigned_user_id == sales_user.pk


def test_tags_case_insensitive(bu):
    p = services.create_prospect(bu, {"email": "a@x.test", "annual_revenue": "1000.5"})
    assert p.annual_revenue == Decimal("1000.50")
    services.add_tags(p, ["Webinar", "webinar ", "WEBINAR"])
    assert p.tags.count() == 1
