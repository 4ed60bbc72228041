from __future__ import annotations

import pytest

from loopline.campaigns.models import Campaign
from loopline.platform.models import AuditLog

pytestmark = pytest.mark.django_db


def test_campaign_list_create_edit(client, marketing_user, bu):
    client.force_login(marketing_user)
    assert client.get("/campaigns/").status_code == 200
    assert client.get("/campaigns/new/").status_code == 200
    response = client.post("/campaigns/new/", {"name": "Spring webinar", "type": "Webinar", "status": "planned",
                                               "start_date": "2026-03-01", "end_date": "2026-03-31",
                                               "budgeted_cost": "1500.00", "actual_cost": ""})
    assert response.status_code == 302
    campaign = Campaign.objects.get(bu=bu, name="Spring webinar")
    assert str(campaign.budgeted_cost) == "1500.00"
    child = client.post("/campaigns/new/", {"name": "Spring webinar – ads", "status": "in_progress",
                                            "parent": campaign.pk})
    assert child.status_code == 302
    response = client.post(f"/campaigns/{campaign.pk}/", {"name": "Spring webinar", "status": "completed",
                                                          "actual_cost": "1200"})
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == "completed"
    entry = AuditLog.objects.filter(action="campaign.save", object_id=str(campaign.pk)).first()
    assert entry.before["status"] == "planned" and entry.after["status"] == "completed"
    page = client.get("/campaigns/").content.decode()
    assert "Spring webinar" in page and "Completed" in page


def test_campaign_validation(client, marketing_user, bu):
    client.force_login(marketing_user)
    response = client.post("/campaigns/new/", {"name": "Bad dates", "status": "planned", "start_date": "2026-05-02",
                                               "end_date": "2026-05-01", "budgeted_cost": "-5"})
    assert response.status_code == 200
    assert b"end date is before the start date" in response.content and b"can&#x27;t be negative" in response.content
    Campaign.objects.create(bu=bu, name="Taken")
    response = client.post("/campaigns/new/", {"name": "taken", "status": "planned"})
    assert response.status_code == 200 and b"already exists" in response.content


def test_campaign_parent_cannot_loop(client, marketing_user, bu):
    a = Campaign.objects.create(bu=bu, name="A")
    b = Campaign.objects.create(bu=bu, name="B", parent=a)
    client.force_login(marketing_user)
    response = client.post(f"/campaigns/{a.pk}/", {"name": "A", "status": "planned", "parent": b.pk})
    assert response.status_code == 200 and b"own ancestor" in response.content


def test_campaign_scoping_and_roles(client, sales_user, sales_manager_user, marketing_user, other_bu):
    foreign = Campaign.objects.create(bu=other_bu, name="Theirs")
    client.force_login(marketing_user)
    assert client.get(f"/campaigns/{foreign.pk}/").status_code == 404
    client.force_login(sales_user)
    assert client.get("/campaigns/").status_code == 403
    client.force_login(sales_manager_user)
    assert client.get("/campaigns/").status_code == 200
    assert client.get("/campaigns/new/").status_code == 403
