"""The program pages: build a flow through the forms, start, pause, resume, report; scoping and roles."""

from __future__ import annotations

import pytest
from django.urls import reverse

from loopline.automation.programs import runner, services
from loopline.automation.programs.models import Program, ProgramStep

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_in(client, marketing_user):
    client.force_login(marketing_user)
    return client


@pytest.fixture
def newsletter(bu, marketing_access, make_prospects):
    from loopline.automation import services as automation_services

    pl = automation_services.save_list(marketing_access, {"name": "Newsletter", "kind": "static"})
    automation_services.add_to_list(bu, pl, [p.pk for p in make_prospects(3)])
    return pl


def test_build_start_and_report_through_the_pages(client_in, newsletter):
    response = client_in.post(reverse("programs:create"), {"name": "Welcome", "recipient_list_ids": [newsletter.pk]})
    program = Program.objects.get(name="Welcome")
    assert response.status_code == 302 and response["Location"] == reverse("programs:detail", args=[program.pk])
    page = client_in.get(reverse("programs:step_new", args=[program.pk]) + "?kind=action", HTTP_HX_REQUEST="true")
    assert b'id="step-form"' in page.content and b"<html" not in page.content  # htmx partial
    response = client_in.post(reverse("programs:step_new", args=[program.pk]), {
        "kind": "action", "action-0-type": "add_tag", "action-0-arg": "welcomed", "wait_kind": "none"})
    assert response.status_code == 302
    response = client_in.post(reverse("programs:step_new", args=[program.pk]), {
        "kind": "rule", "c__r__kind": "group", "c__r__match": "all", "c__r-0__kind": "rule",
        "c__r-0__field": "score", "c__r-0__op": "gte", "c__r-0__value": "0", "wait_kind": "delay",
        "wait_amount": "1", "wait_unit": "hours"})
    assert response.status_code == 302, response.content.decode()[:2000]
    first, second = ProgramStep.objects.filter(program=program).order_by("position")
    assert first.next_step_id == second.pk and second.kind == "rule" and second.wait_kind == "delay"
    detail = client_in.get(reverse("programs:detail", args=[program.pk]))
    assert b"Step 1" in detail.content and b"Add tag: welcomed" in detail.content
    response = client_in.post(reverse("programs:start", args=[program.pk]), follow=True)
    assert b"3 prospect(s) entered" in response.content
    runner.run_due()
    report = client_in.get(reverse("programs:report", args=[program.pk]))
    assert b'id="step-report"' in report.content
    rows = {r.number: r for r in __import__("loopline.automation.programs.selectors", fromlist=["x"]).step_rows(
        Program.objects.get(pk=program.pk))}
    assert rows[1].passed == 3 and rows[2].waiting == 3
    assert client_in.post(reverse("programs:pause", args=[program.pk])).status_code == 302
    assert Program.objects.get(pk=program.pk).status == "paused"
    assert client_in.post(reverse("programs:resume", args=[program.pk])).status_code == 302
    assert Program.objects.get(pk=program.pk).status == "running"


def test_bad_step_input_is_shown_and_kept(client_in, marketing_access):
    program = services.create_program(marketing_access, {"name": "P"})
    response = client_in.post(reverse("programs:step_new", args=[program.pk]), {
        "kind": "trigger", "event": "page_visit", "url_contains": "", "wait_kind": "up_to", "wait_amount": "2",
        "wait_unit": "days"})
    assert response.status_code == 200
    assert b"which page" in response.content
    assert b'value="2"' in response.content
    assert not program.steps.exists()


def test_start_problems_are_explained(client_in, marketing_access):
    program = services.create_program(marketing_access, {"name": "P"})
    response = client_in.post(reverse("programs:start", args=[program.pk]), follow=True)
    assert b"Choose at least one recipient list" in response.content
    assert Program.objects.get(pk=program.pk).status == "draft"


def test_other_bu_programs_are_404(client_in, other_bu, admin_user):
    from loopline.accounts.access import Access
    from loopline.accounts.services import set_membership

    set_membership(other_bu, admin_user, "administrator")
    theirs = services.create_program(Access.for_user(admin_user, other_bu), {"name": "Theirs"})
    assert client_in.get(reverse("programs:detail", args=[theirs.pk])).status_code == 404
    assert client_in.post(reverse("programs:start", args=[theirs.pk])).status_code == 404


def test_sales_users_cannot_see_programs(client, sales_user):
    client.force_login(sales_user)
    assert client.get(reverse("programs:index")).status_code == 403


def test_index_and_groups_pages(client_in, marketing_access, marketing_user):
    services.create_program(marketing_access, {"name": "Listed"})
    assert b"Listed" in client_in.get(reverse("programs:index")).content
    response = client_in.post(reverse("programs:group_create"), {"name": "Team", "user_ids": [marketing_user.pk],
                                                                 "is_active": "on"})
    assert response.status_code == 302
    page = client_in.get(reverse("programs:groups"))
    assert b"Team" in page.content and b"next" in page.content


def test_a_program_belongs_to_a_campaign_of_its_own_business_unit(client_in, bu, other_bu):  # [M33]
    from loopline.campaigns.models import Campaign

    mine = Campaign.objects.create(bu=bu, name="Spring launch")
    foreign = Campaign.objects.create(bu=other_bu, name="Not ours")
    refused = client_in.post(reverse("programs:create"), {"name": "Nurture", "campaign_id": foreign.pk})
    assert refused.status_code == 200 and b"Choose a campaign of this business unit" in refused.content
    assert not Program.objects.filter(name="Nurture").exists()
    client_in.post(reverse("programs:create"), {"name": "Nurture", "campaign_id": mine.pk})
    program = Program.objects.get(name="Nurture")
    assert program.campaign == mine
    assert b"Spring launch</option>" in client_in.get(reverse("programs:edit", args=[program.pk])).content
