"""Prospect pages: list (search, filters, sort, pagination), detail, create/edit, tags, actions, merge, recycle bin,
custom fields — and role scoping (Sales only reaches assigned prospects; other BUs' ids are 404)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from loopline.accounts import services as account_services
from loopline.campaigns.models import Campaign
from loopline.platform.models import AuditLog
from loopline.prospects import selectors, services
from loopline.prospects.models import Activity, ActivityType, CustomField, Prospect, Tag

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(bu, other_bu, admin_user, sales_user):
    mine = services.create_prospect(bu, {"email": "mine@example.com", "first_name": "Mia", "last_name": "Reed",
                                         "company": "Zeta Corp"},
                                    extra={"assigned_user": sales_user, "score": 40})
    # Grades are computed by grading profiles; set one directly to test the filter.
    Prospect.objects.filter(pk=mine.pk).update(grade="B")
    theirs = services.create_prospect(bu, {"email": "theirs@example.com", "first_name": "Tom", "last_name": "Adams",
                                           "company": "Alpha Inc"}, extra={"assigned_user": admin_user, "score": 5})
    unassigned = services.create_prospect(bu, {"email": "free@example.com", "last_name": "Baker", "company": "Beta",
                                               "opted_out": True})
    foreign = services.create_prospect(other_bu, {"email": "foreign@example.com", "last_name": "Outside"})
    return {"mine": mine, "theirs": theirs, "unassigned": unassigned, "foreign": foreign}


def _emails(response):
    return [p.email for p in response.context["rows"]]


# --- List -----------------------------------------------------------------------------------------------------------


def test_list_shows_bu_prospects_only(client, admin_user, data):
    client.force_login(admin_user)
    response = client.get("/prospects/")
    assert response.status_code == 200
    assert set(_emails(response)) == {"mine@example.com", "theirs@example.com", "free@example.com"}
    assert b"foreign@example.com" not in response.content
    assert b"1\xe2\x80\x933 of 3" in response.content  # "1–3 of 3"


def test_sales_list_shows_only_assigned(client, sales_user, data):
    client.force_login(sales_user)
    response = client.get("/prospects/")
    assert _emails(response) == ["mine@example.com"]
    # A filter can't widen the scope.
    assert _emails(client.get("/prospects/", {"assigned": "none"})) == []


@pytest.mark.parametrize("q,expected", [
    ("theirs@", {"theirs@example.com"}),
    ("THEIRS@EX", {"theirs@example.com"}),
    ("ada", {"theirs@example.com"}),
    ("zeta", {"mine@example.com"}),
    ("mia re", {"mine@example.com"}),
    ("free", {"free@example.com"}),
    ("nomatch", set()),
])
def test_search(client, admin_user, data, q, expected):
    client.force_login(admin_user)
    assert set(_emails(client.get("/prospects/", {"q": q}))) == expected


def test_filters(client, admin_user, sales_user, data):
    client.force_login(admin_user)
    assert _emails(client.get("/prospects/", {"assigned": sales_user.pk})) == ["mine@example.com"]
    assert _emails(client.get("/prospects/", {"assigned": "me"})) == ["theirs@example.com"]
    assert _emails(client.get("/prospects/", {"assigned": "none"})) == ["free@example.com"]
    assert _emails(client.get("/prospects/", {"score_min": "10"})) == ["mine@example.com"]
    assert set(_emails(client.get("/prospects/", {"score_max": "10"}))) == {"theirs@example.com", "free@example.com"}
    assert _emails(client.get("/prospects/", {"grade": "B"})) == ["mine@example.com"]
    assert _emails(client.get("/prospects/", {"opted_out": "yes"})) == ["free@example.com"]
    tag = services.add_tags(data["theirs"], ["VIP"])[0]
    assert _emails(client.get("/prospects/", {"tag": tag.pk})) == ["theirs@example.com"]
    today = timezone.now().date()
    assert len(_emails(client.get("/prospects/", {"created_from": today.isoformat()}))) == 3
    assert _emails(client.get("/prospects/", {"created_to": (today - dt.timedelta(days=1)).isoformat()})) == []
    # Malformed parameters are ignored rather than failing.
    assert client.get("/prospects/", {"score_min": "abc", "tag": "x", "created_from": "soon", "sort": "evil"}).status_code == 200


def test_sort(client, admin_user, data):
    client.force_login(admin_user)
    assert _emails(client.get("/prospects/", {"sort": "score"}))[-1] == "mine@example.com"
    assert _emails(client.get("/prospects/", {"sort": "-score"}))[0] == "mine@example.com"
    assert _emails(client.get("/prospects/", {"sort": "name"})) == ["theirs@example.com", "free@example.com",
                                                                     "mine@example.com"]
    assert _emails(client.get("/prospects/", {"sort": "company"}))[0] == "theirs@example.com"
    assert _emails(client.get("/prospects/", {"sort": "-created"}))[0] == "free@example.com"
    page = client.get("/prospects/", {"sort": "score"}).content.decode()
    assert 'aria-sort="ascending"' in page


def test_pagination_without_exact_count(client, admin_user, bu):
    Prospect.objects.bulk_create([Prospect(bu=bu, email=f"p{i:03d}@example.com", email_key=f"p{i:03d}@example.com")
                                  for i in range(60)])
    client.force_login(admin_user)
    first = client.get("/prospects/", {"per_page": 25})
    assert len(first.context["rows"]) == 25 and first.context["has_next"] and not first.context["has_previous"]
    third = client.get("/prospects/", {"per_page": 25, "page": 3})
    assert len(third.context["rows"]) == 10 and not third.context["has_next"]
    ids = {p.pk for n in (1, 2, 3) for p in client.get("/prospects/", {"per_page": 25, "page": n}).context["rows"]}
    assert len(ids) == 60
    assert client.get("/prospects/", {"page": "-4"}).context["page"] == 1


def test_count_is_capped(client, admin_user, bu, monkeypatch):
    from loopline.prospects import views

    monkeypatch.setattr(views, "COUNT_CAP", 5)
    Prospect.objects.bulk_create([Prospect(bu=bu, email=f"c{i}@example.com", email_key=f"c{i}@example.com")
                                  for i in range(8)])
    client.force_login(admin_user)
    response = client.get("/prospects/")
    assert response.context["total_capped"] and b"of 5+" in response.content


def test_htmx_request_renders_only_the_table(client, admin_user, data):
    client.force_login(admin_user)
    response = client.get("/prospects/", {"q": "ada"}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    content = response.content.decode()
    assert "<table" in content and "<html" not in content and "theirs@example.com" in content


def test_htmx_history_restore_gets_the_full_page(client, admin_user, data):
    client.force_login(admin_user)
    response = client.get("/prospects/", {"q": "ada"},
                          headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert b"<html" in response.content
    assert "HX-Request" in response["Vary"]


def test_filter_prospects_is_a_pure_function_of_params(admin_access, data):
    qs = selectors.filter_prospects(admin_access, {"q": "zeta", "sort": "-score"})
    assert [p.email for p in qs] == ["mine@example.com"]


# --- Detail and scoping -----------------------------------------------------------------------------------------------


def test_detail_shows_fields_crm_and_timeline(client, admin_user, bu, data):
    prospect = data["mine"]
    CustomField.objects.create(bu=bu, name="Favourite colour", api_name="colour")
    services.update_prospect(prospect, {"custom.colour": "Teal"})
    services.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=prospect, title="Pricing page", points=1)
    services.record_activity(bu.pk, ActivityType.EMAIL_OPEN, prospect=prospect, title="Newsletter")
    Prospect.objects.filter(pk=prospect.pk).update(crm_lead_id="00Q000000000001AAA", do_not_sync=True)
    client.force_login(admin_user)
    response = client.get(f"/prospects/{prospect.pk}/")
    assert response.status_code == 200
    content = response.content.decode()
    for text in ("Mia Reed", "Zeta Corp", "Favourite colour", "Teal", "Pricing page", "Newsletter",
                 "00Q000000000001AAA", "Do not sync", f"/automation/prospects/{prospect.pk}/lists/", "Visitors"):
        assert text in content, text
    filtered = client.get(f"/prospects/{prospect.pk}/timeline/", {"type": ActivityType.EMAIL_OPEN})
    assert b"Newsletter" in filtered.content and b"Pricing page" not in filtered.content


def test_timeline_load_more(client, admin_user, bu, data):
    prospect = data["mine"]
    base = timezone.now()
    Activity.objects.bulk_create([
        Activity(bu=bu, prospect=prospect, type=ActivityType.PAGE_VIEW, occurred_at=base - dt.timedelta(minutes=i),
                 title=f"Page {i}") for i in range(60)])
    client.force_login(admin_user)
    page = client.get(f"/prospects/{prospect.pk}/")
    assert len(page.context["activities"]) == 50 and page.context["more_offset"] == 50
    more = client.get(f"/prospects/{prospect.pk}/timeline/", {"offset": 50})
    assert more.content.count(b"timeline-item") == 10 and b"Load more" not in more.content


def test_sales_gets_404_on_unassigned_and_foreign_prospects(client, sales_user, data):
    client.force_login(sales_user)
    assert client.get(f"/prospects/{data['mine'].pk}/").status_code == 200
    for key in ("theirs", "unassigned", "foreign"):
        pk = data[key].pk
        assert client.get(f"/prospects/{pk}/").status_code == 404, key
        assert client.get(f"/prospects/{pk}/edit/").status_code == 404, key
        assert client.post(f"/prospects/{pk}/tags/", {"name": "x"}).status_code == 404, key
        assert client.post(f"/prospects/{pk}/star/").status_code == 404, key


def test_admin_gets_404_on_other_bu_prospect(client, admin_user, data):
    client.force_login(admin_user)
    pk = data["foreign"].pk
    assert client.get(f"/prospects/{pk}/").status_code == 404
    assert client.post(f"/prospects/{pk}/recycle/").status_code == 404
    assert client.get(f"/prospects/{data['mine'].pk}/merge/{pk}/").status_code == 404


def test_sales_cannot_create_or_recycle(client, sales_user, data):
    client.force_login(sales_user)
    assert client.get("/prospects/new/").status_code == 403
    assert client.post(f"/prospects/{data['mine'].pk}/recycle/").status_code == 403
    assert client.get(f"/prospects/{data['mine'].pk}/merge/").status_code == 403


# --- Create and edit ---------------------------------------------------------------------------------------------------


def test_create_prospect(client, marketing_user, bu):
    client.force_login(marketing_user)
    assert client.get("/prospects/new/").status_code == 200
    response = client.post("/prospects/new/", {"email": "New@Example.com", "first_name": "Nia", "employees": "12"})
    prospect = Prospect.objects.get(bu=bu, email="new@example.com")
    assert response.status_code == 302 and response["Location"] == f"/prospects/{prospect.pk}/"
    assert prospect.employees == 12
    assert Activity.objects.filter(prospect=prospect, type=ActivityType.PROSPECT_CREATED).exists()


def test_create_requires_email_and_rejects_duplicates(client, marketing_user, data):
    client.force_login(marketing_user)
    response = client.post("/prospects/new/", {"first_name": "Nobody"})
    assert response.status_code == 200 and b"Email is required" in response.content
    response = client.post("/prospects/new/", {"email": "mine@example.com", "first_name": "Dup"})
    assert response.status_code == 200 and b"already exists" in response.content
    assert b'value="Dup"' in response.content


def test_edit_saves_and_shows_new_value(client, admin_user, data):
    prospect = data["theirs"]
    client.force_login(admin_user)
    page = client.get(f"/prospects/{prospect.pk}/edit/")
    assert page.status_code == 200 and b'value="theirs@example.com"' in page.content
    form = {k: v for k, v in page.context["form"].initial.items() if v not in (None, False)}
    form.update({"job_title": "Head of Growth", "assigned_user": admin_user.pk})
    response = client.post(f"/prospects/{prospect.pk}/edit/", form, follow=True)
    assert response.status_code == 200
    assert b"Head of Growth" in response.content and b"Changed: Job title" in response.content
    prospect.refresh_from_db()
    assert prospect.job_title == "Head of Growth" and prospect.email == "theirs@example.com"


def test_edit_keeps_input_on_validation_errors(client, admin_user, data):
    prospect = data["theirs"]
    client.force_login(admin_user)
    response = client.post(f"/prospects/{prospect.pk}/edit/", {
        "email": "not-an-email", "first_name": "Changed", "employees": "lots", "annual_revenue": "12abc"})
    assert response.status_code == 200
    content = response.content.decode()
    assert "is not a valid email address" in content
    assert "Employees: &#x27;lots&#x27; is not a number" in content
    assert 'value="not-an-email"' in content and 'value="Changed"' in content and 'value="lots"' in content
    form = response.context["form"]
    assert form.errors["email"] and form.errors["employees"] and form.errors["annual_revenue"]
    prospect.refresh_from_db()
    assert prospect.first_name == "Tom"


def test_custom_field_validation_message_on_form(client, admin_user, bu, data):
    CustomField.objects.create(bu=bu, name="Seats", api_name="seats", type="number", min_value=1, max_value=500)
    CustomField.objects.create(bu=bu, name="Plan", api_name="plan", type="dropdown", options=["Free", "Pro"],
                               required=True)
    CustomField.objects.create(bu=bu, name="Products", api_name="products", type="multiselect",
                               options=["CRM", "Email", "Ads"])
    prospect = data["theirs"]
    client.force_login(admin_user)
    page = client.get(f"/prospects/{prospect.pk}/edit/")
    assert b"Seats" in page.content and b"custom__plan" in page.content
    response = client.post(f"/prospects/{prospect.pk}/edit/", {"email": prospect.email, "custom__seats": "900",
                                                              "custom__plan": "Pro"})
    assert response.status_code == 200
    assert b"Seats: must be at most 500" in response.content and b'value="900"' in response.content
    ok = client.post(f"/prospects/{prospect.pk}/edit/", {"email": prospect.email, "custom__seats": "12",
                                                        "custom__plan": "Pro", "custom__products": ["CRM", "Ads"]})
    assert ok.status_code == 302
    prospect.refresh_from_db()
    assert prospect.custom == {"seats": 12, "plan": "Pro", "products": ["CRM", "Ads"]}
    create = client.post("/prospects/new/", {"email": "needs-plan@example.com"})
    assert create.status_code == 200 and b"Plan is required" in create.content


def test_source_campaign_is_selectable(client, marketing_user, bu, other_bu, data):
    campaign = Campaign.objects.create(bu=bu, name="Spring webinar")
    foreign = Campaign.objects.create(bu=other_bu, name="Not ours")
    prospect = data["theirs"]
    client.force_login(marketing_user)
    page = client.get(f"/prospects/{prospect.pk}/edit/")
    assert b"Spring webinar" in page.content and b"Not ours" not in page.content
    form = {"email": prospect.email, "source_campaign": campaign.pk}
    assert client.post(f"/prospects/{prospect.pk}/edit/", form).status_code == 302
    prospect.refresh_from_db()
    assert prospect.source_campaign == campaign
    bad = client.post(f"/prospects/{prospect.pk}/edit/", {"email": prospect.email, "source_campaign": foreign.pk})
    assert bad.status_code == 200 and bad.context["form"].errors["source_campaign"]


def test_sales_can_edit_assigned_prospect_but_not_reassign(client, sales_user, data):
    prospect = data["mine"]
    client.force_login(sales_user)
    page = client.get(f"/prospects/{prospect.pk}/edit/")
    assert "assigned_user" not in page.context["form"].fields
    response = client.post(f"/prospects/{prospect.pk}/edit/", {"email": prospect.email, "first_name": "Mia",
                                                              "last_name": "Reed", "company": "Zeta Corp",
                                                              "city": "Lyon"})
    assert response.status_code == 302
    prospect.refresh_from_db()
    assert prospect.city == "Lyon" and prospect.assigned_user == sales_user


# --- Tags and quick actions ----------------------------------------------------------------------------------------------


def test_tags_add_and_remove_with_htmx(client, admin_user, bu, data):
    prospect = data["theirs"]
    client.force_login(admin_user)
    response = client.post(f"/prospects/{prospect.pk}/tags/", {"name": "Webinar, VIP"}, headers={"HX-Request": "true"})
    assert response.status_code == 200 and b"<html" not in response.content
    assert {t.name for t in prospect.tags.all()} == {"Webinar", "VIP"}
    tag = Tag.objects.get(bu=bu, name="VIP")
    response = client.post(f"/prospects/{prospect.pk}/tags/{tag.pk}/remove/", headers={"HX-Request": "true"})
    assert response.status_code == 200 and b"VIP" not in response.content
    assert client.post(f"/prospects/{prospect.pk}/tags/", {"name": ""}).status_code == 302


def test_assign_star_and_recycle(client, admin_user, marketing_user, data):
    prospect = data["unassigned"]
    client.force_login(admin_user)
    client.post(f"/prospects/{prospect.pk}/assign/", {"user": "me"})
    prospect.refresh_from_db()
    assert prospect.assigned_user == admin_user
    client.post(f"/prospects/{prospect.pk}/assign/", {"user": marketing_user.pk})
    prospect.refresh_from_db()
    assert prospect.assigned_user == marketing_user
    client.post(f"/prospects/{prospect.pk}/star/")
    prospect.refresh_from_db()
    assert prospect.starred
    response = client.post(f"/prospects/{prospect.pk}/recycle/")
    assert response.status_code == 302
    prospect.refresh_from_db()
    assert prospect.is_deleted
    assert client.get(f"/prospects/{prospect.pk}/").status_code == 404


def test_sales_can_only_assign_to_self(client, sales_user, admin_user, data):
    client.force_login(sales_user)
    response = client.post(f"/prospects/{data['mine'].pk}/assign/", {"user": admin_user.pk})
    assert response.status_code == 403


# --- Merge ---------------------------------------------------------------------------------------------------------------


def test_merge_flow(client, admin_user, bu, data):
    keep, dup = data["theirs"], data["unassigned"]
    services.record_activity(bu.pk, ActivityType.FORM_SUCCESS, prospect=dup, title="Contact form")
    client.force_login(admin_user)
    search = client.get(f"/prospects/{keep.pk}/merge/", {"q": "free"})
    assert search.status_code == 200 and b"free@example.com" in search.content
    confirm = client.get(f"/prospects/{keep.pk}/merge/{dup.pk}/")
    assert confirm.status_code == 200 and b"Merge prospects" in confirm.content
    response = client.post(f"/prospects/{keep.pk}/merge/{dup.pk}/")
    assert response.status_code == 302
    dup.refresh_from_db()
    assert dup.is_deleted and dup.merged_into_id == keep.pk
    assert Activity.objects.filter(prospect=keep, title="Contact form").exists()
    assert AuditLog.objects.filter(action="prospect.merge").exists()


# --- Recycle bin ------------------------------------------------------------------------------------------------------------


def test_recycle_bin_restore_and_permanent_delete(client, admin_user, data):
    prospect = data["unassigned"]
    services.move_to_recycle_bin(prospect, actor=admin_user)
    client.force_login(admin_user)
    page = client.get("/prospects/recycle-bin/")
    assert page.status_code == 200 and b"free@example.com" in page.content
    assert client.post(f"/prospects/recycle-bin/{prospect.pk}/restore/").status_code == 302
    prospect.refresh_from_db()
    assert not prospect.is_deleted
    services.move_to_recycle_bin(prospect, actor=admin_user)
    assert client.post(f"/prospects/recycle-bin/{prospect.pk}/delete/").status_code == 302
    assert not Prospect.objects.filter(pk=prospect.pk).exists()
    assert AuditLog.objects.filter(action="prospect.delete_permanently").exists()


def test_permanent_delete_refused_with_reason(client, admin_user, data):
    prospect = data["unassigned"]
    Prospect.objects.filter(pk=prospect.pk).update(crm_lead_id="00Q000000000009AAA")
    prospect.refresh_from_db()
    services.move_to_recycle_bin(prospect, actor=admin_user)
    client.force_login(admin_user)
    response = client.post(f"/prospects/recycle-bin/{prospect.pk}/delete/", follow=True)
    assert b"Delete the prospect&#x27;s CRM record first" in response.content
    assert Prospect.objects.filter(pk=prospect.pk).exists()


def test_recycle_bin_is_admin_only_and_scoped(client, marketing_user, admin_user, data):
    foreign = data["foreign"]
    services.move_to_recycle_bin(foreign)
    client.force_login(marketing_user)
    assert client.get("/prospects/recycle-bin/").status_code == 403
    client.force_login(admin_user)
    assert client.post(f"/prospects/recycle-bin/{foreign.pk}/restore/").status_code == 404
    assert client.post(f"/prospects/recycle-bin/{data['mine'].pk}/restore/").status_code == 404  # not deleted


def test_custom_role_with_recycle_view_cannot_delete_permanently(client, bu, data):
    access_admin = account_services.create_user("boss@acme.test", password="x" * 12)
    account_services.set_membership(bu, access_admin, "administrator")
    from loopline.accounts.access import Access

    role = account_services.save_custom_role(Access.for_user(access_admin, bu), "Bin keeper",
                                             ["prospects.view", "recycle_bin.view", "recycle_bin.edit"])
    keeper = account_services.create_user("keeper@acme.test", password="x" * 12)
    account_services.set_membership(bu, keeper, role)
    prospect = data["unassigned"]
    services.move_to_recycle_bin(prospect)
    client.force_login(keeper)
    response = client.post(f"/prospects/recycle-bin/{prospect.pk}/delete/", follow=True)
    assert b"Only administrators can delete prospects permanently" in response.content
    assert Prospect.objects.filter(pk=prospect.pk).exists()


# --- Custom fields admin -------------------------------------------------------------------------------------------------------


def test_custom_fields_admin(client, admin_user, bu):
    client.force_login(admin_user)
    assert client.get("/prospects/fields/").status_code == 200
    assert client.get("/prospects/fields/new/").status_code == 200
    response = client.post("/prospects/fields/new/", {"name": "Product interest", "type": "multiselect",
                                                      "options": "CRM\nEmail\n\nAds", "default_merge_value": ""})
    assert response.status_code == 302
    cf = CustomField.objects.get(bu=bu, api_name="product_interest")
    assert cf.options == ["CRM", "Email", "Ads"]
    response = client.post(f"/prospects/fields/{cf.pk}/", {"name": "Products", "type": "text", "options": "CRM"})
    assert response.status_code == 302
    cf.refresh_from_db()
    assert cf.name == "Products" and cf.type == "multiselect"  # the type is fixed once created
    assert AuditLog.objects.filter(action="custom_field.save").count() == 2


def test_custom_field_admin_errors(client, admin_user, bu):
    client.force_login(admin_user)
    response = client.post("/prospects/fields/new/", {"name": "Plan", "type": "dropdown", "options": ""})
    assert response.status_code == 200 and b"need at least one choice" in response.content
    response = client.post("/prospects/fields/new/", {"name": "Code", "type": "text", "pattern": "[a-"})
    assert response.status_code == 200 and b"Not a valid regular expression" in response.content
    response = client.post("/prospects/fields/new/", {"name": "Seats", "type": "number", "default_merge_value": "many"})
    assert response.status_code == 200 and b"is not a number" in response.content
    client.post("/prospects/fields/new/", {"name": "Region", "type": "text"})
    response = client.post("/prospects/fields/new/", {"name": "Region", "type": "text"})
    assert response.status_code == 200 and b"already uses this API name" in response.content


def test_custom_fields_admin_forbidden_for_marketing(client, marketing_user, bu):
    cf = CustomField.objects.create(bu=bu, name="X", api_name="x")
    client.force_login(marketing_user)
    assert client.get("/prospects/fields/").status_code == 403
    assert client.get(f"/prospects/fields/{cf.pk}/").status_code == 403


def test_custom_field_of_other_bu_is_404(client, admin_user, other_bu):
    cf = CustomField.objects.create(bu=other_bu, name="X", api_name="x")
    client.force_login(admin_user)
    assert client.get(f"/prospects/fields/{cf.pk}/").status_code == 404


def test_custom_field_delete_removes_values_and_is_audited(client, admin_user, bu, other_bu):
    cf = CustomField.objects.create(bu=bu, name="Region", api_name="region")
    keep = Prospect.objects.create(bu=bu, email="a@acme.test", custom={"region": "EMEA", "other": "x"})
    unaffected = Prospect.objects.create(bu=other_bu, email="a@acme.test", custom={"region": "AMER"})
    client.force_login(admin_user)
    page = client.get(f"/prospects/fields/{cf.pk}/delete/")
    assert page.status_code == 200 and b"<strong>1</strong> prospect holds a value" in page.content
    response = client.post(f"/prospects/fields/{cf.pk}/delete/")
    assert response.status_code == 302
    assert not CustomField.objects.filter(pk=cf.pk).exists()
    keep.refresh_from_db()
    unaffected.refresh_from_db()
    assert keep.custom == {"other": "x"}
    assert unaffected.custom == {"region": "AMER"}  # another BU's data is untouched
    log = AuditLog.objects.get(action="custom_field.delete")
    assert log.before["prospects_with_value"] == 1


def test_custom_field_mapped_to_crm_cannot_be_deleted(client, admin_user, bu):
    from loopline.connector.models import Connector, FieldMapping

    cf = CustomField.objects.create(bu=bu, name="Region", api_name="region")
    FieldMapping.objects.create(connector=Connector.objects.create(bu=bu), loopline_field="custom.region",
                                lead_field="Region__c")
    client.force_login(admin_user)
    response = client.post(f"/prospects/fields/{cf.pk}/delete/", follow=True)
    assert b"mapped to a CRM field" in response.content
    assert CustomField.objects.filter(pk=cf.pk).exists()


def test_custom_field_delete_needs_delete_ability(client, marketing_user, bu):
    cf = CustomField.objects.create(bu=bu, name="Region", api_name="region")
    client.force_login(marketing_user)
    assert client.post(f"/prospects/fields/{cf.pk}/delete/").status_code == 403
    assert CustomField.objects.filter(pk=cf.pk).exists()
