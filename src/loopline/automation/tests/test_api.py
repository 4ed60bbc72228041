"""REST API for lists and membership ([M16])."""

from __future__ import annotations

import pytest

from loopline.accounts import services as account_services
from loopline.automation.models import ProspectList
from loopline.prospects import services as prospect_services

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def headers(marketing_access):
    _, key = account_services.create_api_key(marketing_access, "test")
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def test_lists_and_membership(client, headers, bu, other_bu):
    a = prospect_services.create_prospect(bu, {"email": "a@x.test", "industry": "Software"})
    foreign = prospect_services.create_prospect(other_bu, {"email": "f@x.test"})
    created = client.post("/api/v1/lists", {"name": "API list", "kind": "static"}, content_type="application/json",
                          **headers)
    assert created.status_code == 201, created.content
    list_id = created.json()["id"]
    added = client.post(f"/api/v1/lists/{list_id}/members", {"prospect_ids": [a.pk, foreign.pk]},
                        content_type="application/json", **headers)
    assert added.json() == {"added": 1, "removed": 0}
    page = client.get(f"/api/v1/lists/{list_id}/members", **headers).json()
    assert page == {"items": [{"id": a.pk, "email": "a@x.test"}], "next_after_id": None}
    assert client.get("/api/v1/lists", **headers).json()[0]["member_count"] == 1
    removed = client.post(f"/api/v1/lists/{list_id}/members/remove", {"prospect_ids": [a.pk]},
                          content_type="application/json", **headers)
    assert removed.json()["removed"] == 1
    dynamic = client.post("/api/v1/lists", {"name": "Soft", "kind": "dynamic", "criteria": {
        "match": "all", "rules": [{"field": "industry", "op": "equals", "value": "software"}]}},
        content_type="application/json", **headers)
    assert dynamic.status_code == 201 and dynamic.json()["member_count"] == 1


def test_api_errors(client, headers, other_bu):
    theirs = ProspectList.objects.create(bu=other_bu, name="Theirs")
    assert client.get(f"/api/v1/lists/{theirs.pk}", **headers).status_code == 404
    bad = client.post("/api/v1/lists", {"name": "Bad", "kind": "dynamic", "criteria": {"rules": []}},
                      content_type="application/json", **headers)
    assert bad.status_code == 422 and "at least one condition" in bad.json()["detail"]
    assert client.get("/api/v1/lists").status_code == 401
    garbage = client.post(f"/api/v1/lists/{theirs.pk}/members", {"prospect_ids": "x"},
                          content_type="application/json", **headers)
    assert garbage.status_code in (404, 422)
