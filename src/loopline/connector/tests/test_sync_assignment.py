"""Assignment through the CRM ([M22], [R11]): a prospect handed to the CRM's assignment rule is created with the rule
on and takes the owner it picks; a queue assignment creates a record owned by the queue; every other write tells the
CRM not to run its rules, so an active rule never replaces the owner Loopline chose."""

from __future__ import annotations

import pytest

from loopline.automation.programs import services as programs
from loopline.automation.programs.models import CrmAssignmentRequest
from loopline.connector.models import CrmUser
from loopline.prospects import services as prospects

from .helpers import drain_all


@pytest.fixture
def rule_owner(crm):
    """The sandbox org gets an active lead assignment rule for the test, then none again."""
    owner = crm.query("SELECT Id FROM User WHERE Username LIKE 'user2%'")[0]["Id"]
    crm.request("POST", "/_sandbox/assignment-rules", json={"Lead": owner})
    yield owner
    crm.request("POST", "/_sandbox/assignment-rules", json={})


def test_assignment_rule_picks_the_owner_of_the_new_lead(connector, crm, bu, rule_owner, unique):
    p = prospects.create_prospect(bu, {"email": f"rule.{unique}@example.test", "last_name": "Rule"})
    assert programs.assign_crm_rule(bu, p, source="test")
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id, "an unassigned prospect handed to the rule counts as assigned: its lead is created"
    assert crm.get("Lead", p.crm_lead_id)["OwnerId"] == rule_owner
    assert p.crm_owner_id == rule_owner  # read back right after the create
    assert not CrmAssignmentRequest.objects.filter(prospect=p, pending=True).exists()
    # Never steals: the prospect now has an owner, so a second hand-over does nothing.
    assert not programs.assign_crm_rule(bu, p)


def test_an_active_rule_never_replaces_the_owner_loopline_chose(connector, crm, bu, admin_user, rule_owner, unique):
    mapped = crm.query("SELECT Id FROM User WHERE Username LIKE 'user1%'")[0]["Id"]
    CrmUser.objects.create(connector=connector, crm_id=mapped, username="user1", user=admin_user)
    p = prospects.create_prospect(bu, {"email": f"mine.{unique}@example.test", "last_name": "Mine"})
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    assert crm.get("Lead", p.crm_lead_id)["OwnerId"] == mapped != rule_owner  # sent with Sforce-Auto-Assign: FALSE


def test_queue_assignment_creates_a_lead_owned_by_the_queue(connector, crm, bu, unique):
    queue = crm.query("SELECT Id FROM Group WHERE Type = 'Queue' LIMIT 1")[0]["Id"]
    p = prospects.create_prospect(bu, {"email": f"queue.{unique}@example.test", "last_name": "Queued"})
    assert programs.assign_crm_queue(bu, queue, p)
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id and crm.get("Lead", p.crm_lead_id)["OwnerId"] == queue
