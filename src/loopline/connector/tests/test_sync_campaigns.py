"""Connected campaigns and their members against a real crmsandbox ([R38]): CRM members come in with their status,
Loopline memberships of synced prospects go out as CampaignMember records — once, with status changes as updates."""

from __future__ import annotations

from loopline.campaigns import services as campaign_services
from loopline.campaigns.models import Campaign, CampaignMember
from loopline.connector import metadata
from loopline.connector.models import CampaignMemberSync, SyncRun
from loopline.connector.sync import related
from loopline.prospects.models import Prospect

from .helpers import sync


def _synced_lead(crm, connector, unique: str, name: str = "Member") -> tuple[str, Prospect]:
    """A CRM lead that the poll turns into a synced prospect ([R10])."""
    lead_id = crm.create("Lead", LastName=name, Company="Co", Email=f"{name.lower()}.{unique}@example.test")
    sync(connector)
    return lead_id, Prospect.objects.get(crm_lead_id=lead_id)


def _members(crm, campaign_id: str, lead_id: str) -> list[dict]:
    return crm.query(
        f"SELECT Id, Status FROM CampaignMember WHERE CampaignId = '{campaign_id}' AND LeadId = '{lead_id}'"
    )


def test_crm_members_come_in_with_their_status_and_campaign(connector, crm, bu, unique):
    # The campaign is created after the last metadata sync: the member's poll connects it on the spot.
    campaign_id = crm.create("Campaign", Name=f"Webinar {unique}", Status="In Progress", Type="Webinar")
    lead_id = crm.create("Lead", LastName="Attendee", Company="Co", Email=f"attendee.{unique}@example.test")
    member_id = crm.create("CampaignMember", CampaignId=campaign_id, LeadId=lead_id, Status="Responded")
    sync(connector)  # the lead and its membership arrive in one poll

    prospect = Prospect.objects.get(crm_lead_id=lead_id)
    campaign = Campaign.objects.get(bu=bu, crm_campaign_id=campaign_id)
    assert campaign.name == f"Webinar {unique}" and campaign.type == "Webinar"
    member = CampaignMember.objects.get(campaign=campaign, prospect=prospect)
    assert (member.status, member.has_responded, member.crm_id, member.source) == (
        "Responded",
        True,
        member_id,
        "crm",
    )
    joined = member.added_at

    crm.update("CampaignMember", member_id, Status="Sent")  # the CRM changes the status
    sync(connector)
    member.refresh_from_db()
    assert member.status == "Sent" and not member.has_responded
    assert member.added_at == joined  # a membership's join time never moves
    # Nothing went back: the CRM's own change is not written again.
    related.push(connector, force_scan=True)
    assert not SyncRun.objects.filter(connector=connector, kind="members").exists()
    assert [(r["Id"], r["Status"]) for r in _members(crm, campaign_id, lead_id)] == [(member_id, "Sent")]

    crm.delete("CampaignMember", member_id)  # removed from the campaign in the CRM
    sync(connector)
    assert not CampaignMember.objects.filter(campaign=campaign, prospect=prospect).exists()


def test_loopline_membership_is_written_once_and_status_changes_update_it(connector, crm, bu, unique):
    campaign_id = crm.create("Campaign", Name=f"Trade show {unique}", Status="Planned")
    metadata.sync_metadata(connector, parts=("campaigns",))  # connected campaigns sync as metadata
    campaign = Campaign.objects.get(bu=bu, crm_campaign_id=campaign_id)
    lead_id, prospect = _synced_lead(crm, connector, unique)

    member = campaign_services.add_member(bu, campaign.pk, prospect.pk, status="Responded")
    written = related.push(connector, force_scan=True)
    assert written["members"] == 1
    found = _members(crm, campaign_id, lead_id)
    assert [r["Status"] for r in found] == ["Responded"]
    member.refresh_from_db()
    assert member.crm_id == found[0]["Id"]
    run = SyncRun.objects.filter(connector=connector, kind="members").first()
    assert run.counters["created"] == 1 and run.api_calls == 2  # one existence check + one collections call

    # A re-run writes nothing and creates no duplicate ([R25]).
    assert related.push(connector, force_scan=True)["members"] == 0
    assert len(_members(crm, campaign_id, lead_id)) == 1

    # Our own write comes back on the next poll: skipped as an echo, the membership is untouched ([R24]).
    sync(connector)
    member.refresh_from_db()
    assert member.source == "loopline" and member.status == "Responded"

    CampaignMember.objects.filter(pk=member.pk).update(status="Attended")
    assert related.push(connector, force_scan=True)["members"] == 1
    assert [r["Status"] for r in _members(crm, campaign_id, lead_id)] == ["Attended"]
    sync_row = CampaignMemberSync.objects.get(connector=connector, member=member)
    assert (sync_row.state, sync_row.synced_status, sync_row.crm_id) == ("done", "Attended", member.crm_id)


def test_a_member_already_in_the_crm_is_adopted_not_created_again(connector, crm, bu, unique):
    # As after a create whose answer was lost: the member exists in the CRM but Loopline has no id for it ([R25]).
    campaign_id = crm.create("Campaign", Name=f"Roadshow {unique}", Status="Planned")
    metadata.sync_metadata(connector, parts=("campaigns",))
    campaign = Campaign.objects.get(bu=bu, crm_campaign_id=campaign_id)
    lead_id, prospect = _synced_lead(crm, connector, unique, name="Adopted")
    member = campaign_services.add_member(bu, campaign.pk, prospect.pk, status="Sent", responded=False)
    existing = crm.create("CampaignMember", CampaignId=campaign_id, LeadId=lead_id, Status="Responded")

    related.push(connector, force_scan=True)
    found = _members(crm, campaign_id, lead_id)
    assert [(r["Id"], r["Status"]) for r in found] == [(existing, "Sent")]  # updated to Loopline's status
    member.refresh_from_db()
    assert member.crm_id == existing


def test_only_synced_prospects_in_connected_campaigns_are_written(connector, crm, bu, unique):
    local = Campaign.objects.create(bu=bu, name=f"Local only {unique}")  # not a CRM campaign
    campaign_id = crm.create("Campaign", Name=f"Connected {unique}", Status="Planned")
    metadata.sync_metadata(connector, parts=("campaigns",))
    connected = Campaign.objects.get(bu=bu, crm_campaign_id=campaign_id)
    unsynced = Prospect.objects.create(
        bu=bu, email=f"unsynced.{unique}@example.test", email_key=f"unsynced.{unique}@example.test"
    )
    lead_id, prospect = _synced_lead(crm, connector, unique, name="Local")
    campaign_services.add_member(bu, local.pk, prospect.pk)
    campaign_services.add_member(bu, connected.pk, unsynced.pk)
    assert related.queue_members(connector) == 0
    assert related.push(connector, force_scan=True)["members"] == 0
    assert crm.query(f"SELECT Id FROM CampaignMember WHERE CampaignId = '{campaign_id}'") == []
    assert crm.query(f"SELECT Id FROM CampaignMember WHERE LeadId = '{lead_id}'") == []


def test_the_sync_loop_writes_members_without_being_asked(connector, crm, bu, unique):
    # The worker's pass (embedded mode) drains the outbox and then writes due members ([R38]); no extra step.
    from loopline.connector.sync.worker import ConnectorWorker

    campaign_id = crm.create("Campaign", Name=f"Loop {unique}", Status="Planned")
    metadata.sync_metadata(connector, parts=("campaigns",))
    lead_id, prospect = _synced_lead(crm, connector, unique, name="Looped")
    campaign_services.add_member(bu, Campaign.objects.get(crm_campaign_id=campaign_id).pk, prospect.pk)
    work = ConnectorWorker([connector.pk]).run_once()
    assert work["pushed"] >= 1
    assert [r["Status"] for r in _members(crm, campaign_id, lead_id)] == ["Responded"]


def test_a_crm_merge_keeps_the_membership_on_the_survivor_without_a_second_member(connector, crm, bu, unique):
    # [R32] with [R38]: the CRM re-parents the loser's member to the winner; Loopline moves the membership to the
    # winner's prospect. Both sides then agree: one member, on the winner, nothing written again.
    campaign_id = crm.create("Campaign", Name=f"Merged {unique}", Status="Planned")
    winner_id = crm.create("Lead", LastName="Winner", Company="Co", Email=f"winner.{unique}@example.test")
    loser_id = crm.create("Lead", LastName="Loser", Company="Co", Email=f"loser.{unique}@example.test")
    member_id = crm.create("CampaignMember", CampaignId=campaign_id, LeadId=loser_id, Status="Responded")
    sync(connector)
    winner = Prospect.objects.get(crm_lead_id=winner_id)

    crm.request(
        "POST", "/_sandbox/merge", json={"object": "Lead", "masterId": winner_id, "mergeIds": [loser_id]}
    )
    sync(connector)
    member = CampaignMember.objects.get(prospect=winner, campaign__crm_campaign_id=campaign_id)
    assert member.crm_id == member_id and member.status == "Responded"
    related.push(connector, force_scan=True)
    assert [(r["Id"], r["Status"]) for r in _members(crm, campaign_id, winner_id)] == [
        (member_id, "Responded")
    ]
