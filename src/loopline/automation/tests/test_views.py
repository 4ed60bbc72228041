"""The list, builder and rule pages: thin views over services, BU-scoped (404 across BUs), abilities enforced."""

from __future__ import annotations

import pytest

from loopline.automation import services
from loopline.automation.models import AutomationRule, ListMembership, ProspectList
from loopline.prospects import services as prospect_services

pytestmark = pytest.mark.django_db


def _p(bu, email, **data):
    return prospect_services.create_prospect(bu, {"email": email, **data})


def test_dynamic_list_built_in_the_ui(client, marketing_user, bu):  # [M16] [M17]
    match = _p(bu, "ann@x.test", industry="Software")
    _p(bu, "bob@x.test", industry="Retail")
    client.force_login(marketing_user)
    assert client.get("/automation/lists/").status_code == 200
    page = client.get("/automation/lists/new/?kind=dynamic")
    assert page.status_code == 200 and b"criteria-builder" in page.content
    # the builder redraws with the operators of the chosen field (htmx), then the list is saved
    redraw = client.post("/automation/criteria/builder/", {"c__r__kind": "group", "c__r__match": "all",
                                                          "c__r-0__kind": "rule", "c__r-0__field": "industry"},
                         HTTP_HX_REQUEST="true")
    assert redraw.status_code == 200 and b"starts with" in redraw.content
    added = client.post("/automation/criteria/builder/", {"c__r__kind": "group", "c__r__match": "all",
                                                         "builder_op": "add_group:r"})
    assert b'name="c__r-0__kind" value="group"' in added.content and b'c__r-0-0__field' in added.content
    response = client.post("/automation/lists/new/", {
        "name": "Software people", "kind": "dynamic", "c__r__kind": "group", "c__r__match": "all",
        "c__r-0__kind": "rule", "c__r-0__field": "industry", "c__r-0__op": "equals", "c__r-0__value": "software"})
    assert response.status_code == 302
    pl = ProspectList.objects.get(bu=bu, name="Software people")
    detail = client.get(f"/automation/lists/{pl.pk}/").content.decode()
    assert "ann@x.test" in detail and "bob@x.test" not in detail and 'Industry is &quot;software&quot;' in detail
    assert list(ListMembership.objects.filter(prospect_list=pl).values_list("prospect_id", flat=True)) == [match.pk]


def test_list_form_keeps_input_on_errors(client, marketing_user, bu):
    client.force_login(marketing_user)
    response = client.post("/automation/lists/new/", {
        "name": "Bad", "kind": "dynamic", "c__r__kind": "group", "c__r__match": "all",
        "c__r-0__kind": "rule", "c__r-0__field": "score", "c__r-0__op": "gte", "c__r-0__value": "lots"})
    assert response.status_code == 200
    assert b"not a number" in response.content and b'value="lots"' in response.content
    assert not ProspectList.objects.filter(bu=bu).exists()


def test_static_list_members_from_page_prospect_and_filters(client, marketing_user, bu):  # [M16]
    a, b = _p(bu, "a@x.test", company="Acme"), _p(bu, "b@x.test", company="Beta")
    client.force_login(marketing_user)
    client.post("/automation/lists/new/", {"name": "Manual", "kind": "static", "c__r__kind": "group"})
    pl = ProspectList.objects.get(bu=bu, name="Manual")
    client.post(f"/automation/lists/{pl.pk}/members/add/", {"emails": "a@x.test\nnobody@x.test"})
    assert set(ListMembership.objects.filter(prospect_list=pl).values_list("prospect_id", flat=True)) == {a.pk}
    card = client.post(f"/automation/prospects/{b.pk}/lists/", {"list": pl.pk, "mode": "add"}, HTTP_HX_REQUEST="true")
    assert b"Manual" in card.content
    client.post(f"/automation/lists/{pl.pk}/members/remove/", {"prospect": [a.pk]})
    assert set(ListMembership.objects.filter(prospect_list=pl).values_list("prospect_id", flat=True)) == {b.pk}
    preview = client.get("/automation/lists/add-prospects/?q=acme")
    assert b"1 prospect" in preview.content
    client.post("/automation/lists/add-prospects/", {"q": "acme", "list": pl.pk, "mode": "add"})
    pl.refresh_from_db()
    assert pl.member_count == 2


def test_other_bu_list_is_404_and_sales_cannot_see_lists(client, marketing_user, sales_user, other_bu, bu):
    foreign = ProspectList.objects.create(bu=other_bu, name="Theirs")
    client.force_login(marketing_user)
    assert client.get(f"/automation/lists/{foreign.pk}/").status_code == 404
    assert client.post(f"/automation/lists/{foreign.pk}/members/add/", {"emails": "x@x.test"}).status_code == 404
    client.force_login(sales_user)
    assert client.get("/automation/lists/").status_code == 403
    assert client.get("/automation/rules/").status_code == 403


def test_rule_pages(client, marketing_user, bu):  # [M19]
    _p(bu, "hot@x.test")
    client.force_login(marketing_user)
    assert client.get("/automation/rules/").status_code == 200
    assert client.get("/automation/rules/new/?kind=automation").status_code == 200
    response = client.post("/automation/rules/new/", {
        "name": "Tag everyone", "kind": "automation", "c__r__kind": "group", "c__r__match": "all",
        "c__r-0__kind": "rule", "c__r-0__field": "score", "c__r-0__op": "gte", "c__r-0__value": "0",
        "action-0-type": "add_tag", "action-0-arg": "seen"})
    assert response.status_code == 302
    rule = AutomationRule.objects.get(bu=bu, name="Tag everyone")
    assert rule.status == "paused" and rule.actions == [{"type": "add_tag", "tag": "seen"}]
    assert client.post(f"/automation/rules/{rule.pk}/resume/").status_code == 302
    rule.refresh_from_db()
    assert rule.status == "active" and rule.job is not None
    services.run_rule(rule.pk, rule.job.pk)
    page = client.get(f"/automation/rules/{rule.pk}/").content.decode()
    assert "hot@x.test" in page and "tagged seen" in page
    assert b"Evaluation finished" in client.get(f"/automation/rules/{rule.pk}/progress/").content
    bad = client.post("/automation/rules/new/", {"name": "No actions", "kind": "automation", "c__r__kind": "group",
                                                 "c__r-0__kind": "rule", "c__r-0__field": "score",
                                                 "c__r-0__op": "gte", "c__r-0__value": "1"})
    assert bad.status_code == 200 and b"Add at least one action" in bad.content
