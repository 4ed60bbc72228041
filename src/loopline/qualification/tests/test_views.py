"""Scoring and grading pages: rules form with errors kept, progress view, categories, profiles, thumbs, scoping."""

from __future__ import annotations

import pytest
from django.test import Client

from loopline.conftest import PASSWORD
from loopline.platform.models import Job
from loopline.prospects import services as prospect_services
from loopline.prospects.models import Prospect
from loopline.qualification import services
from loopline.qualification.models import GradingProfile, ScoreCategory
from loopline.qualification.scoring import effective_points


def _client(user) -> Client:
    client = Client()
    assert client.login(username=user.email, password=PASSWORD)
    return client


def test_overview_and_rules_round_trip(bu, admin_user):
    client = _client(admin_user)
    page = client.get("/scoring/").content.decode()
    assert "Scoring rules" in page and "Form success" in page and "Default" in page
    form = {f"points-{t}": str(p) for t, p in effective_points(None).items()}
    form["points-1"] = "abc"
    bad = client.post("/scoring/rules/", form)
    assert bad.status_code == 400 and "is not a whole number" in bad.content.decode()
    assert 'value="abc"' in bad.content.decode()  # the user's input is kept
    form["points-1"] = "2"
    ok = client.post("/scoring/rules/", form)
    job = Job.objects.get(kind="rescore")
    assert ok.status_code == 302 and ok["Location"] == f"/scoring/jobs/{job.pk}/"
    assert "Waiting to start" in client.get(ok["Location"]).content.decode()
    services.run_rescore(job.pk)
    status = client.get(f"/scoring/jobs/{job.pk}/status/").content.decode()
    assert "Finished" in status and "hx-trigger" not in status


def test_sales_cannot_edit_rules_and_jobs_are_scoped(bu, other_bu, sales_user, admin_user):
    assert _client(sales_user).get("/scoring/rules/").status_code == 403
    other_job = services.start_rescore(other_bu)
    assert _client(admin_user).get(f"/scoring/jobs/{other_job.pk}/").status_code == 404


def test_category_and_profile_pages(bu, admin_user):
    client = _client(admin_user)
    bad = client.post("/scoring/categories/new/", {"name": "Widgets", "assets": "nonsense"})
    assert bad.status_code == 400 and "type:id" in bad.content.decode()
    assert client.post("/scoring/categories/new/", {"name": "Widgets", "assets": "form:3",
                                                    "url_prefixes": "https://x.test/w/"}).status_code == 302
    assert ScoreCategory.objects.get(bu=bu).assets == [{"asset_type": "form", "asset_id": 3}]
    response = client.post("/scoring/grading/new/", {
        "name": "Enterprise", "c-0-label": "Big", "c-0-field": "employees", "c-0-op": "gte", "c-0-value": "1000",
        "c-0-weight": "3"})
    assert response.status_code == 302
    profile = GradingProfile.objects.get(bu=bu, name="Enterprise")
    assert profile.criteria == [{"label": "Big", "field": "employees", "op": "gte", "value": ["1000"], "weight": 3}]
    bad = client.post("/scoring/grading/new/", {"name": "X", "c-0-field": "employees", "c-0-op": "gte",
                                                "c-0-value": "lots", "c-0-weight": "2"})
    assert bad.status_code == 400 and "needs numbers" in bad.content.decode()


def test_prospect_grade_page_and_thumbs(bu, sales_user, admin_user):
    mine = prospect_services.create_prospect(bu, {"email": "mine@example.com"})
    prospect_services.assign_prospect(mine, sales_user)
    theirs = prospect_services.create_prospect(bu, {"email": "theirs@example.com"})
    client = _client(sales_user)
    assert client.get(f"/scoring/prospects/{theirs.pk}/").status_code == 404  # [M1] not assigned: 404
    assert client.post(f"/scoring/prospects/{theirs.pk}/thumbs/", {"direction": "up"}).status_code == 404
    page = client.get(f"/scoring/prospects/{mine.pk}/").content.decode()
    assert "Why this grade" in page
    response = client.post(f"/scoring/prospects/{mine.pk}/thumbs/", {"direction": "up"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and ">D+<" in response.content.decode()
    assert Prospect.objects.get(pk=mine.pk).grade == "D+"
    assert client.post(f"/scoring/prospects/{mine.pk}/thumbs/", {"direction": "sideways"}).status_code == 400


@pytest.mark.parametrize("path", ["/scoring/", "/scoring/grading/new/", "/scoring/categories/new/"])
def test_pages_render_for_marketing(bu, marketing_user, path):
    assert _client(marketing_user).get(path).status_code == 200
