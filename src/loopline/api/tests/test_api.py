"""The public REST API: API-key auth, the same validation and scoping as the UI ([M1], [R12])."""

import pytest
from django.test import Client

from loopline.accounts import services as account_services
from loopline.accounts.access import Access
from loopline.prospects import services
from loopline.prospects.models import ActivityType, Prospect


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.fixture
def admin_key(admin_access):
    return account_services.create_api_key(admin_access, "integration")[1]


@pytest.fixture
def sales_key(sales_access):
    return account_services.create_api_key(sales_access, "rep")[1]


def test_requires_a_valid_key(db, admin_key):
    c = Client()
    assert c.get("/api/v1/prospects").status_code == 401
    assert c.get("/api/v1/prospects", **bearer("ll_nope_nope")).status_code == 401
    assert c.get("/api/v1/prospects", **bearer(admin_key + "x")).status_code == 401
    assert c.get("/api/v1/prospects", **bearer(admin_key)).status_code == 200


def test_revoked_key_and_removed_member_lose_access(admin_access, admin_key, bu):
    c = Client()
    key = admin_access.user.api_keys.get()
    account_services.revoke_api_key(admin_access, key)
    assert c.get("/api/v1/prospects", **bearer(admin_key)).status_code == 401


def test_create_get_update_delete_round_trip(admin_key, bu):
    c = Client()
    r = c.post("/api/v1/prospects", {"email": "Api@X.test", "first_name": "Ann", "employees": 12},
               content_type="application/json", **bearer(admin_key))
    assert r.status_code == 201, r.content
    pid = r.json()["id"]
    assert r.json()["email"] == "api@x.test"
    r = c.patch(f"/api/v1/prospects/{pid}", {"job_title": "CMO"}, content_type="application/json", **bearer(admin_key))
    assert r.status_code == 200 and r.json()["job_title"] == "CMO" and r.json()["first_name"] == "Ann"
    assert c.get(f"/api/v1/prospects/{pid}", **bearer(admin_key)).json()["job_title"] == "CMO"
    assert c.delete(f"/api/v1/prospects/{pid}", **bearer(admin_key)).status_code == 204
    assert Prospect.objects.get(pk=pid).is_deleted
    assert c.get(f"/api/v1/prospects/{pid}", **bearer(admin_key)).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "nope"}, "email"),
        ({"email": "a@x.test", "employees": "lots"}, "employees"),
        ({"email": "a@x.test", "custom": {"unknown_field": 1}}, "unknown_field"),
        ({"first_name": "No email"}, "email"),
    ],
)
def test_bad_input_is_422_with_field_errors(admin_key, bu, body, field):
    r = Client().post("/api/v1/prospects", body, content_type="application/json", **bearer(admin_key))
    assert r.status_code == 422
    assert field in r.json()["errors"]
    assert not Prospect.objects.filter(bu=bu).exists()


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"email": {"a": 1}}', b"\xff\xfe"])
def test_garbage_never_500(admin_key, raw):
    r = Client().post("/api/v1/prospects", raw, content_type="application/json", **bearer(admin_key))
    assert 400 <= r.status_code < 500


def test_duplicate_email_is_422(admin_key, bu):
    services.create_prospect(bu, {"email": "dup@x.test"})
    r = Client().post("/api/v1/prospects", {"email": "DUP@x.test"}, content_type="application/json",
                      **bearer(admin_key))
    assert r.status_code == 422 and "already exists" in r.json()["errors"]["email"][0]


def test_sales_key_sees_only_assigned_and_cannot_delete(sales_key, sales_user, bu, other_bu):
    mine = services.create_prospect(bu, {"email": "mine@x.test"}, extra={"assigned_user": sales_user})
    other = services.create_prospect(bu, {"email": "other@x.test"})
    foreign = services.create_prospect(other_bu, {"email": "f@x.test"})
    c = Client()
    ids = [p["id"] for p in c.get("/api/v1/prospects", **bearer(sales_key)).json()["items"]]
    assert ids == [mine.pk]
    assert c.get(f"/api/v1/prospects/{other.pk}", **bearer(sales_key)).status_code == 404
    assert c.get(f"/api/v1/prospects/{foreign.pk}", **bearer(sales_key)).status_code == 404
    assert c.delete(f"/api/v1/prospects/{mine.pk}", **bearer(sales_key)).status_code == 403


def test_pagination_and_activities(admin_key, bu):
    created = [services.create_prospect(bu, {"email": f"p{i}@x.test"}) for i in range(5)]
    services.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=created[0], title="Pricing", url="https://x/p")
    c = Client()
    page = c.get("/api/v1/prospects?limit=2", **bearer(admin_key)).json()
    seen = [p["id"] for p in page["items"]]
    while page["next_after_id"]:
        page = c.get(f"/api/v1/prospects?limit=2&after_id={page['next_after_id']}", **bearer(admin_key)).json()
        seen += [p["id"] for p in page["items"]]
    assert seen == sorted(p.pk for p in created)
    acts = c.get(f"/api/v1/prospects/{created[0].pk}/activities", **bearer(admin_key)).json()
    assert acts[0]["type_name"] == "Page view" and acts[0]["title"] == "Pricing"
    assert c.get("/api/v1/prospects?limit=0", **bearer(admin_key)).status_code == 422


def test_key_of_one_bu_never_reads_another(admin_user, bu, other_bu):
    account_services.set_membership(other_bu, admin_user, "administrator")
    key = account_services.create_api_key(Access.for_user(admin_user, other_bu), "globex")[1]
    services.create_prospect(bu, {"email": "acme@x.test"})
    items = Client().get("/api/v1/prospects", **bearer(key)).json()["items"]
    assert items == []
