"""Deletion, undeletion, merge and the recycle bin against a real crmsandbox ([R30]–[R33])."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from loopline.automation.models import ListMembership, ProspectList
from loopline.campaigns import services as campaign_services
from loopline.campaigns.models import Campaign, CampaignMember
from loopline.conftest import PASSWORD
from loopline.connector.models import CrmLink, OutboxEntry
from loopline.connector.sync import deletions, manual, pull
from loopline.connector.sync.context import shared_client
from loopline.platform import actions
from loopline.prospects import services as prospects
from loopline.prospects.models import Activity, ActivityType, Prospect, ProspectTag

from .helpers import drain_all, sync


def _last_change_seq(crm) -> int:
    return crm.request("GET", "/_sandbox/changes", params={"since": 0, "limit": 10000})["last"]


def _changes_since(crm, seq: int, **filters) -> list[dict]:
    rows = crm.request("GET", "/_sandbox/changes", params={"since": seq, "limit": 10000})["changes"]
    return [c for c in rows if all(c.get(k) == v for k, v in filters.items())]


def _crm_events(prospect: Prospect) -> list[str]:
    return [
        a.data.get("event")
        for a in Activity.objects.filter(prospect=prospect, type=ActivityType.CRM_SYNC).order_by("pk")
    ]


def _pulled_lead(connector, crm, bu, email: str, **values) -> tuple[str, Prospect]:
    lead_id = crm.create("Lead", LastName=values.pop("LastName", "Lee"), Company="Co", Email=email, **values)
    sync(connector)
    return lead_id, Prospect.objects.get(bu=bu, email=email)


def test_crm_delete_sends_the_prospect_to_the_recycle_bin_flagged(
    connector, crm, bu, admin_access, admin_user, unique
):  # [R31]
    lead_id, p = _pulled_lead(connector, crm, bu, f"gone.{unique}@example.test")
    crm.delete("Lead", lead_id)
    sync(connector)
    p.refresh_from_db()
    assert p.is_deleted and p.crm_deleted
    assert p.crm_lead_id == lead_id  # the link stays as history
    assert "crm_deleted" in _crm_events(p)
    # Restoring it in Loopline and assigning it does not re-create the CRM record: the flag, not the bin, decides.
    prospects.undelete(p)
    prospects.assign_prospect(p, admin_user)
    prospects.update_prospect(p, {"job_title": "Still here"})
    seq = _last_change_seq(crm)
    drain_all(connector)
    assert _changes_since(crm, seq, object="Lead") == []
    assert crm.query(f"SELECT Id FROM Lead WHERE Email = '{p.email}'") == []
    # Manual sync says why, clearly.
    result = manual.sync_prospect_now(admin_access, p)
    assert not result.ok
    assert result.message.startswith("Deleted in the CRM; will not be re-synced.")
    assert "Allow CRM record to be recreated" in result.message


def test_crm_undelete_restores_the_prospect(connector, crm, bu, unique):  # [R31]
    lead_id, p = _pulled_lead(connector, crm, bu, f"back.{unique}@example.test")
    crm.delete("Lead", lead_id)
    sync(connector)
    crm.request("POST", "/_sandbox/undelete", json={"ids": [lead_id]})
    crm.update("Lead", lead_id, Title="Back again")
    queued = OutboxEntry.objects.filter(connector=connector, prospect=p).count()
    pull.poll(connector)
    # [R24] the restore came from the CRM: nothing is queued to write it back.
    assert OutboxEntry.objects.filter(connector=connector, prospect=p).count() == queued
    sync(connector)
    p.refresh_from_db()
    assert not p.is_deleted and not p.crm_deleted
    assert p.job_title == "Back again"  # syncing again, values included
    assert _crm_events(p)[-1] == "crm_undeleted"


def test_deleting_a_record_the_prospect_no_longer_syncs_with_changes_nothing(
    connector, crm, bu, unique
):  # [R31]
    # Unique email: a contact with the prospect's email takes over from its lead; the lead stays on the prospect
    # as history. Deleting that lead must not send a prospect whose contact is alive to the recycle bin.
    email = f"hist.{unique}@example.test"
    lead_id, p = _pulled_lead(connector, crm, bu, email)
    contact_id = crm.create("Contact", LastName="Lee", Email=email)
    sync(connector)
    p.refresh_from_db()
    assert p.crm_contact_id == contact_id and p.crm_lead_id == lead_id
    crm.delete("Lead", lead_id)
    sync(connector)
    p.refresh_from_db()
    assert not p.is_deleted and not p.crm_deleted


def test_crm_merge_moves_history_to_the_winners_prospect(connector, crm, bu, admin_user, unique):  # [R32]
    winner_id, winner = _pulled_lead(connector, crm, bu, f"win.{unique}@example.test", LastName="Winner")
    loser_id, loser = _pulled_lead(connector, crm, bu, f"lose.{unique}@example.test", LastName="Loser")
    prospects.record_activity(bu.pk, ActivityType.PAGE_VIEW, prospect=loser, title="Pricing page")
    prospects.add_tags(loser, ["webinar"])
    static = ProspectList.objects.create(bu=bu, name=f"Static {unique}", kind=ProspectList.Kind.STATIC)
    ListMembership.objects.create(prospect_list=static, prospect=loser)
    campaign = Campaign.objects.create(bu=bu, name=f"Spring {unique}")
    campaign_services.add_member(bu, campaign.pk, loser.pk, status="Responded")
    crm.request(
        "POST", "/_sandbox/merge", json={"object": "Lead", "masterId": winner_id, "mergeIds": [loser_id]}
    )
    sync(connector)
    loser.refresh_from_db()
    winner.refresh_from_db()
    assert loser.is_deleted and loser.merged_into_id == winner.pk and loser.crm_deleted
    assert not winner.is_deleted and winner.crm_lead_id == winner_id
    assert Activity.objects.filter(
        prospect=winner, type=ActivityType.PAGE_VIEW, title="Pricing page"
    ).exists()
    assert ProspectTag.objects.filter(prospect=winner, tag__name="webinar").exists()
    assert ListMembership.objects.filter(prospect_list=static, prospect=winner).exists()
    member = CampaignMember.objects.get(campaign=campaign, prospect=winner)
    assert member.has_responded
    assert not CampaignMember.objects.filter(prospect=loser).exists()
    assert "crm_merged" in _crm_events(winner)
    # The loser is never re-created, even when someone restores and assigns it.
    prospects.assign_prospect(loser, admin_user)
    seq = _last_change_seq(crm)
    drain_all(connector)
    assert _changes_since(crm, seq, changeType="CREATE") == []


def test_crm_merge_keeps_both_campaign_memberships_once(connector, crm, bu, unique):  # [R32]
    winner_id, winner = _pulled_lead(connector, crm, bu, f"w2.{unique}@example.test")
    loser_id, loser = _pulled_lead(connector, crm, bu, f"l2.{unique}@example.test")
    campaign = Campaign.objects.create(bu=bu, name=f"Both {unique}")
    campaign_services.add_member(bu, campaign.pk, winner.pk, status="Sent", responded=False)
    campaign_services.add_member(bu, campaign.pk, loser.pk, status="Responded", responded=True)
    crm.request(
        "POST", "/_sandbox/merge", json={"object": "Lead", "masterId": winner_id, "mergeIds": [loser_id]}
    )
    sync(connector)
    rows = CampaignMember.objects.filter(campaign=campaign)
    assert [r.prospect_id for r in rows] == [winner.pk]
    assert rows[0].has_responded and rows[0].first_responded_at is not None


def test_crm_merge_into_a_record_without_a_prospect_relinks(
    admin_access, connector, crm, bu, unique
):  # [R32]
    from loopline.connector import services

    loser_id, loser = _pulled_lead(connector, crm, bu, f"only.{unique}@example.test")
    services.update_settings(admin_access, connector, {"auto_create_prospects": False})
    winner_email = f"nobody.{unique}@example.test"
    winner_id = crm.create("Lead", LastName="Master", Company="Co", Email=winner_email, Title="Boss")
    crm.request(
        "POST", "/_sandbox/merge", json={"object": "Lead", "masterId": winner_id, "mergeIds": [loser_id]}
    )
    sync(connector)
    loser.refresh_from_db()
    # Decision: the person lives on in the CRM as the winner; their prospect follows it rather than being recycled.
    assert not loser.is_deleted and not loser.crm_deleted
    assert loser.crm_lead_id == winner_id
    assert not Prospect.objects.filter(bu=bu, email=winner_email).exclude(pk=loser.pk).exists()
    crm.update("Lead", winner_id, Title="Chief")
    sync(connector)
    loser.refresh_from_db()
    assert loser.job_title == "Chief"


def test_allow_recreate_from_the_prospect_page(connector, crm, bu, admin_user, client, unique):  # [R31]
    lead_id, p = _pulled_lead(connector, crm, bu, f"again.{unique}@example.test")
    crm.delete("Lead", lead_id)
    sync(connector)
    prospects.undelete(Prospect.objects.get(pk=p.pk))
    assert client.login(username=admin_user.email, password=PASSWORD)
    page = client.get(reverse("prospects:detail", args=[p.pk])).content.decode()
    assert "Deleted in CRM" in page and "Allow CRM record to be recreated" in page
    response = client.post(reverse("connector:allow_recreate", args=[p.pk]), follow=True)
    assert "may be recreated" in response.content.decode()
    p.refresh_from_db()
    assert not p.crm_deleted and not p.crm_lead_id
    assert (
        "Allow CRM record to be recreated"
        not in client.get(reverse("prospects:detail", args=[p.pk])).content.decode()
    )
    assert "crm_recreate_allowed" in _crm_events(p)
    # Now an assigned prospect creates a new CRM record; the deleted one stays deleted.
    prospects.assign_prospect(p, admin_user)
    drain_all(connector)
    p.refresh_from_db()
    assert p.crm_lead_id and p.crm_lead_id != lead_id
    assert crm.get("Lead", p.crm_lead_id)["Email"] == p.email
    # Pressing the button again is refused with a clear message, not an error page.
    again = client.post(reverse("connector:allow_recreate", args=[p.pk]), follow=True)
    assert again.status_code == 200 and "not flagged as deleted in the CRM" in again.content.decode()


def test_allow_recreate_automation_action(connector, crm, bu, unique):  # [R31]
    lead_id, p = _pulled_lead(connector, crm, bu, f"auto.{unique}@example.test")
    crm.delete("Lead", lead_id)
    sync(connector)
    # A later action saving the same prospect must not bring the flag back.
    cleaned = actions.validate_actions(
        bu, [{"type": "allow_crm_recreate"}, {"type": "change_field", "field": "job_title", "value": "Next"}]
    )
    outcomes = actions.run_actions(
        cleaned, actions.ActionContext(bu=bu, prospect=Prospect.objects.get(pk=p.pk), source="automation")
    )
    assert [o.ok for o in outcomes] == [True, True]
    p.refresh_from_db()
    assert p.job_title == "Next"
    # The flag is cleared; the recycle bin is a separate decision.
    assert not p.crm_deleted and not p.crm_lead_id and p.is_deleted
    assert not deletions.allow_recreate(p)  # nothing left to clear


def test_sync_with_crm_button_on_the_prospect_page(
    connector, crm, bu, admin_user, client, unique
):  # [R3], [R31]
    lead_id, p = _pulled_lead(connector, crm, bu, f"button.{unique}@example.test")
    crm.update("Lead", lead_id, Title="From the button")
    assert client.login(username=admin_user.email, password=PASSWORD)
    response = client.post(reverse("connector:sync_prospect", args=[p.pk]), follow=True)
    assert "Synced with the CRM" in response.content.decode()
    p.refresh_from_db()
    assert p.job_title == "From the button"
    crm.delete("Lead", lead_id)
    sync(connector)
    prospects.undelete(Prospect.objects.get(pk=p.pk))
    response = client.post(reverse("connector:sync_prospect", args=[p.pk]), follow=True)
    assert "Deleted in the CRM; will not be re-synced." in response.content.decode()
    assert client.get(reverse("connector:sync_prospect", args=[p.pk])).status_code == 405


def test_loopline_never_deletes_a_crm_record(
    connector, crm, bu, admin_access, admin_user, unique
):  # [R30], [R33]
    first_id, first = _pulled_lead(connector, crm, bu, f"keep1.{unique}@example.test")
    second_id, second = _pulled_lead(connector, crm, bu, f"keep2.{unique}@example.test")
    methods: list[tuple[str, str]] = []
    client = shared_client(connector)
    client._session.hooks["response"].append(
        lambda r, *a, **k: methods.append(
            (
                r.request.method,
                (r.request.body or b"").decode()
                if isinstance(r.request.body, bytes)
                else str(r.request.body or ""),
            )
        )
    )
    seq = _last_change_seq(crm)
    try:
        prospects.move_to_recycle_bin(first, actor=admin_user)  # recycled in Loopline
        prospects.merge_prospects(second, Prospect.objects.get(pk=first.pk))  # merged in Loopline
        with pytest.raises(ValidationError, match="Loopline never deletes CRM records"):
            prospects.delete_permanently(admin_access, Prospect.objects.get(pk=first.pk))  # [R33]
        prospects.update_prospect(Prospect.objects.get(pk=second.pk), {"job_title": "Survivor"})
        sync(connector)
        manual.sync_prospect_now(admin_access, Prospect.objects.get(pk=second.pk))
    finally:
        client._session.hooks["response"].pop()
    assert methods, "the connector made calls"
    assert all(method != "DELETE" and '"DELETE"' not in body for method, body in methods)
    assert _changes_since(crm, seq, changeType="DELETE") == []
    live = {r["Id"] for r in crm.query(f"SELECT Id FROM Lead WHERE Id IN ('{first_id}', '{second_id}')")}
    assert live == {first_id, second_id}
    assert CrmLink.objects.filter(connector=connector, crm_id=first_id).exists()


def test_crm_merge_chain_is_followed_to_the_live_record(admin_access, connector, crm, bu, unique):  # [R32]
    from loopline.connector import services

    first_id, p = _pulled_lead(connector, crm, bu, f"chain.{unique}@example.test")
    services.update_settings(admin_access, connector, {"auto_create_prospects": False})
    middle_id = crm.create("Lead", LastName="Middle", Company="Co", Email=f"middle.{unique}@example.test")
    last_id = crm.create("Lead", LastName="Last", Company="Co", Email=f"last.{unique}@example.test")
    crm.request(
        "POST", "/_sandbox/merge", json={"object": "Lead", "masterId": middle_id, "mergeIds": [first_id]}
    )
    crm.request(
        "POST", "/_sandbox/merge", json={"object": "Lead", "masterId": last_id, "mergeIds": [middle_id]}
    )
    sync(connector)
    p.refresh_from_db()
    assert not p.is_deleted and p.crm_lead_id == last_id


def test_crm_merge_into_a_record_deleted_since_is_a_deletion(
    admin_access, connector, crm, bu, unique
):  # [R31]
    from loopline.connector import services

    loser_id, p = _pulled_lead(connector, crm, bu, f"void.{unique}@example.test")
    services.update_settings(admin_access, connector, {"auto_create_prospects": False})
    winner_id = crm.create("Lead", LastName="Short", Company="Co", Email=f"short.{unique}@example.test")
    crm.request(
        "POST", "/_sandbox/merge", json={"object": "Lead", "masterId": winner_id, "mergeIds": [loser_id]}
    )
    crm.delete("Lead", winner_id)
    sync(connector)
    p.refresh_from_db()
    assert p.is_deleted and p.crm_deleted and p.crm_lead_id == loser_id


def test_crm_merge_into_a_recycled_prospect_brings_it_back(connector, crm, bu, unique):  # [R32]
    winner_id, winner = _pulled_lead(connector, crm, bu, f"binned.{unique}@example.test")
    loser_id, loser = _pulled_lead(connector, crm, bu, f"live.{unique}@example.test")
    prospects.move_to_recycle_bin(winner)  # recycled in Loopline only: its CRM record is alive
    crm.request(
        "POST", "/_sandbox/merge", json={"object": "Lead", "masterId": winner_id, "mergeIds": [loser_id]}
    )
    sync(connector)
    winner.refresh_from_db()
    loser.refresh_from_db()
    assert loser.merged_into_id == winner.pk and loser.is_deleted
    assert not winner.is_deleted and not winner.crm_deleted


def test_a_change_pushed_to_a_record_merged_away_meanwhile_reaches_the_survivor(
    admin_access, connector, crm, bu, unique, monkeypatch
):  # [R32], [R25]
    from django.utils import timezone

    from loopline.connector import services
    from loopline.connector.sync import push

    loser_id, p = _pulled_lead(connector, crm, bu, f"race.{unique}@example.test")
    services.update_settings(admin_access, connector, {"auto_create_prospects": False})
    winner_id = crm.create("Lead", LastName="Survivor", Company="Co", Email=f"win.{unique}@example.test")
    read = push.fetch_candidates

    def merged_right_after_the_read(ctx, snaps):
        found = read(ctx, snaps)
        crm.request("POST", "/_sandbox/merge", json={"object": "Lead", "masterId": winner_id, "mergeIds": [loser_id]})
        return found

    prospects.update_prospect(p, {"job_title": "Head of Racing"})
    monkeypatch.setattr(push, "fetch_candidates", merged_right_after_the_read)
    drain_all(connector)  # the write meets ENTITY_IS_DELETED
    monkeypatch.setattr(push, "fetch_candidates", read)
    assert OutboxEntry.objects.filter(prospect=p, status=OutboxEntry.Status.PENDING).exists()  # not given up
    OutboxEntry.objects.filter(prospect=p, status=OutboxEntry.Status.PENDING).update(next_run_at=timezone.now())
    sync(connector)
    p.refresh_from_db()
    assert p.crm_lead_id == winner_id
    assert crm.get("Lead", winner_id)["Title"] == "Head of Racing"
