"""Business units and marketing data sharing ([R34]–[R37]): two BUs on one sandbox org, end to end, plus the rules'
validation. The rule field is ``Description`` (a field the default mapping leaves unmapped on leads and contacts)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from loopline.accounts.access import Access
from loopline.conftest import _member
from loopline.connector import services, sharing
from loopline.connector.models import Connector, CrmDescribe, CrmLink, SyncRun
from loopline.emails.tests import conftest as email_fixtures
from loopline.platform.models import AuditLog
from loopline.prospects import services as prospects
from loopline.prospects.models import Activity, ActivityType, Prospect

from .conftest import make_connector
from .helpers import drain_all, sync

make_email = email_fixtures.make_email


def rules(value: str, opportunity: str = "") -> dict:
    out = {"Lead": {"field": "Description", "value": value}, "Contact": {"field": "Description", "value": value}}
    if opportunity:
        out["Opportunity"] = {"field": "Description", "value": opportunity}
    return out


@pytest.fixture
def other_admin_access(other_bu):
    return Access.for_user(_member(other_bu, "admin@globex.test", "administrator"), other_bu)


def _unverified_connector(access, crm, crm_app) -> Connector:
    """A connector for ``access``'s BU with its connection filled in, not verified yet (paused)."""
    from loopline.platform import crypto

    connector = services.create_connector(access)
    connector.private_key, connector.certificate = crypto.encrypt(crm_app.private_pem), crm_app.cert_pem
    connector.save()
    services.update_connection(access, connector, {
        "login_url": crm.login_url, "consumer_key": crm_app.consumer_key, "username": crm.integration_username,
        "ca_file": crm.ca_file})
    return connector


@pytest.fixture
def two_bus(admin_access, other_admin_access, crm, crm_app):
    """BU A (``bu``, rule Description = "Unit A <unique>") and BU B (``other_bu``, "Unit B …") on the same org, both
    active — connected the way an admin must ([R34], [R37])."""
    a = make_connector(admin_access, crm, crm_app)
    b = _unverified_connector(other_admin_access, crm, crm_app)
    ok, message = services.verify_connection(other_admin_access, b)
    assert not ok and "[R34]" in message  # [R34] refused: no rules yet
    b.refresh_from_db()
    assert b.org_id == a.org_id and b.last_verified_at is None
    with pytest.raises(ValidationError, match="Verify"):
        services.resume(other_admin_access, b)
    sharing.set_sharing_rules(b, rules("Unit B"), other_admin_access)
    services.pause(admin_access, a)
    sharing.set_sharing_rules(a, rules("Unit A", opportunity="Deals A"), admin_access)
    services.resume(admin_access, a)
    ok, message = services.verify_connection(other_admin_access, b)
    assert ok, message
    services.resume(other_admin_access, b)
    a.refresh_from_db()
    b.refresh_from_db()
    return a, b


def _lead(crm, email: str, **values) -> str:
    return crm.create("Lead", LastName=values.pop("LastName", "Lee"), Company="Co", Email=email, **values)


def _events(p: Prospect) -> list[str]:
    return [a.data.get("event") for a in Activity.objects.filter(prospect=p, type=ActivityType.CRM_SYNC).order_by("pk")]


def _skipped(connector: Connector) -> dict:
    run = SyncRun.objects.filter(connector=connector, kind="pull").order_by("-pk").first()
    return run.counters.get("skipped", {}) if run else {}


# --- End to end ------------------------------------------------------------------------------------------------------


def test_each_bu_sees_only_the_records_its_rule_shares(two_bus, crm, bu, other_bu, unique):  # [R35], [R34]
    a, b = two_bus
    lead_a = _lead(crm, f"a.{unique}@example.test", Description="Unit A")
    lead_b = _lead(crm, f"b.{unique}@example.test", Description="Unit B")
    _lead(crm, f"none.{unique}@example.test")
    _lead(crm, f"case.{unique}@example.test", Description="unit a")  # equals is case-sensitive
    contact_b = crm.create("Contact", LastName="Cole", Email=f"cb.{unique}@example.test", Description="Unit B")
    sync(a)
    sync(b)
    in_a = set(Prospect.objects.filter(bu=bu, email__endswith=f"{unique}@example.test").values_list("email", flat=True))
    in_b = set(Prospect.objects.filter(bu=other_bu, email__endswith=f"{unique}@example.test")
               .values_list("email", flat=True))
    assert in_a == {f"a.{unique}@example.test"}
    assert in_b == {f"b.{unique}@example.test", f"cb.{unique}@example.test"}
    assert not CrmLink.objects.filter(connector=b, crm_id=lead_a).exists()
    assert not CrmLink.objects.filter(connector=a, crm_id__in=[lead_b, contact_b]).exists()
    assert _skipped(a).get("not_visible", 0) >= 4
    # The rule field is read with every poll, although nothing maps it.
    assert "Description" in sharing.query_fields(type("Ctx", (), {"raw_settings": a.settings})(), "Lead")


def test_a_field_flip_recycles_the_prospect_and_flipping_back_restores_it(two_bus, crm, bu, unique):  # [R36]
    a, _ = two_bus
    email = f"flip.{unique}@example.test"
    lead_id = _lead(crm, email, Description="Unit A")
    sync(a)
    p = Prospect.objects.get(bu=bu, email=email)
    assert not p.is_deleted
    crm.update("Lead", lead_id, Description="Unit B")
    sync(a)
    p.refresh_from_db()
    assert p.is_deleted and not p.crm_deleted  # recycled, not flagged CRM-deleted
    assert _events(p)[-1] == sharing.EVENT_HIDDEN
    assert _skipped(a).get("not_visible") == 1
    assert sharing.hidden_prospect_ids(bu.pk, [p.pk]) == {p.pk}
    # While hidden, CRM changes do not reach the prospect.
    crm.update("Lead", lead_id, Title="Hidden change")
    sync(a)
    p.refresh_from_db()
    assert p.is_deleted and p.job_title != "Hidden change"
    crm.update("Lead", lead_id, Description="Unit A", Title="Back")
    sync(a)
    p.refresh_from_db()
    assert not p.is_deleted and p.job_title == "Back"
    assert _events(p)[-1] == sharing.EVENT_SHOWN
    assert sharing.hidden_prospect_ids(bu.pk, [p.pk]) == set()
    assert CrmLink.objects.filter(connector=a, crm_id=lead_id, prospect=p).count() == 1


def test_a_record_undeleted_and_flipped_out_before_a_poll_is_no_longer_crm_deleted(two_bus, crm, bu, unique):
    # [R31], [R36] the poll meets the undelete and the rule flip at once: the prospect waits in the recycle bin as
    # not shared (not as CRM-deleted), so flipping the record back restores it.
    a, _ = two_bus
    email = f"undo.{unique}@example.test"
    lead_id = _lead(crm, email, Description="Unit A")
    sync(a)
    crm.delete("Lead", lead_id)
    sync(a)
    p = Prospect.objects.get(bu=bu, email=email)
    assert p.is_deleted and p.crm_deleted
    crm.request("POST", "/_sandbox/undelete", json={"ids": [lead_id]})
    crm.update("Lead", lead_id, Description="Unit B")
    sync(a)
    p.refresh_from_db()
    assert p.is_deleted and not p.crm_deleted
    assert sharing.hidden_prospect_ids(bu.pk, [p.pk]) == {p.pk}
    crm.update("Lead", lead_id, Description="Unit A", Title="Back again")
    sync(a)
    p.refresh_from_db()
    assert not p.is_deleted and p.job_title == "Back again"


def test_records_read_without_the_rule_field_are_judged_by_it(two_bus, crm, bu, unique):  # [R35]
    """The Bulk API import and reconciliation select only the mapped fields: the rule field is looked up."""
    from django.db import transaction

    from loopline.connector.engine import CrmRecord, RunCounters
    from loopline.connector.engine.capture import select_fields
    from loopline.connector.sync import pull
    from loopline.connector.sync.context import SyncContext

    a, _ = two_bus
    mine = _lead(crm, f"bulk.a.{unique}@example.test", Description="Unit A")
    theirs = _lead(crm, f"bulk.b.{unique}@example.test", Description="Unit B")
    ctx = SyncContext.load(a)
    soql = f"SELECT {', '.join(select_fields('Lead', ctx.mappings))} FROM Lead WHERE Id IN ('{mine}', '{theirs}')"
    records = [CrmRecord.from_api("Lead", r) for r in ctx.client.query(soql)]
    assert len(records) == 2 and all("Description" not in r.values for r in records)
    counters = RunCounters()
    with transaction.atomic():
        pull.apply_records(ctx, records, counters, explicit=True)
    assert Prospect.objects.filter(bu=bu, crm_lead_id=mine).exists()
    assert not Prospect.objects.filter(bu=bu, crm_lead_id=theirs).exists()
    assert counters.skipped == {"not_visible": 1}


def test_a_rule_change_rechecks_the_linked_records_at_the_next_poll(two_bus, crm, bu, admin_access, unique):  # [R36]
    a, _ = two_bus
    lead_id = _lead(crm, f"rule.{unique}@example.test", Description="Unit A")
    sync(a)
    p = Prospect.objects.get(bu=bu, crm_lead_id=lead_id)
    services.pause(admin_access, a)
    sharing.set_sharing_rules(a, rules("Unit A2"), admin_access)
    services.resume(admin_access, a)
    sync(a)  # the record itself did not change
    p.refresh_from_db()
    assert p.is_deleted and _events(p)[-1] == sharing.EVENT_HIDDEN
    a.refresh_from_db()
    assert sharing.RECHECK_KEY not in a.settings  # done once
    services.pause(admin_access, a)
    sharing.set_sharing_rules(a, rules("Unit A"), admin_access)
    services.resume(admin_access, a)
    sync(a)
    p.refresh_from_db()
    assert not p.is_deleted and _events(p)[-1] == sharing.EVENT_SHOWN


def test_removing_the_rules_restores_the_hidden_prospects(connector, crm, bu, admin_access, unique):  # [R36]
    services.pause(admin_access, connector)
    sharing.set_sharing_rules(connector, rules("Solo"), admin_access)
    services.resume(admin_access, connector)
    lead_id = _lead(crm, f"solo.{unique}@example.test", Description="Solo")
    sync(connector)
    crm.update("Lead", lead_id, Description="Elsewhere")
    sync(connector)
    p = Prospect.objects.get(bu=bu, crm_lead_id=lead_id)
    assert p.is_deleted
    services.pause(admin_access, connector)
    sharing.set_sharing_rules(connector, {}, admin_access)
    services.resume(admin_access, connector)
    sync(connector)
    p.refresh_from_db()
    assert not p.is_deleted and sharing.hidden_prospect_ids(bu.pk, [p.pk]) == set()


def test_records_created_by_the_connector_user_match_and_sync_in_one_bu_only(
    two_bus, crm, bu, other_bu, admin_user, unique
):  # [R35] created by the connector user; [R34] one BU per record
    a, b = two_bus
    p = prospects.create_prospect(bu, {"email": f"pushed.{unique}@example.test", "last_name": "Pushed"})
    prospects.assign_prospect(p, admin_user)
    drain_all(a)
    p.refresh_from_db()
    assert p.crm_lead_id
    assert crm.get("Lead", p.crm_lead_id)["CreatedById"] == a.connector_user_id
    crm.update("Lead", p.crm_lead_id, Title="Changed in the CRM")  # no Description: matches only by its creator
    sync(a)
    sync(b)
    p.refresh_from_db()
    assert not p.is_deleted and p.job_title == "Changed in the CRM"
    # Visible to B too (same connector user), but A already syncs it: B neither creates nor links a prospect.
    assert not Prospect.objects.filter(bu=other_bu, email=p.email).exists()
    assert not CrmLink.objects.filter(connector=b, crm_id=p.crm_lead_id).exists()
    assert _skipped(b).get("already_linked", 0) >= 1


def _push_skips(connector: Connector) -> dict:
    out: dict = {}
    for counters in SyncRun.objects.filter(connector=connector, kind="push").values_list("counters", flat=True):
        for reason, n in (counters or {}).get("skipped", {}).items():
            out[reason] = out.get(reason, 0) + n
    return out


def test_push_does_not_match_or_write_a_record_the_bu_does_not_see(
    two_bus, crm, bu, other_bu, other_admin_access, unique
):  # [R35] invisible to B: not linked, not written; B's own record is created instead
    a, b = two_bus
    email = f"only.a.{unique}@example.test"
    lead_a = _lead(crm, email, LastName="Anders", Title="Original", Description="Unit A")
    sync(a)
    p_a = Prospect.objects.get(bu=bu, crm_lead_id=lead_a)
    p_b = prospects.create_prospect(other_bu, {"email": email, "last_name": "Bee", "job_title": "Set in B"})
    drain_all(b)  # unassigned: syncs only with a match, and A's lead is no match for B ([R11])
    p_b.refresh_from_db()
    assert not p_b.crm_id and not CrmLink.objects.filter(connector=b).filter(crm_id=lead_a).exists()
    assert _push_skips(b).get("unassigned") == 1
    prospects.assign_prospect(p_b, other_admin_access.user)
    drain_all(b)  # assigned: the creation rules apply as if A's lead did not exist
    p_b.refresh_from_db()
    assert p_b.crm_lead_id and p_b.crm_lead_id != lead_a
    mine = crm.get("Lead", p_b.crm_lead_id)
    assert mine["Email"] == email and mine["CreatedById"] == b.connector_user_id  # visible to B by its creator
    assert CrmLink.objects.filter(connector=b, crm_id=p_b.crm_lead_id, prospect=p_b).exists()
    theirs = crm.get("Lead", lead_a)
    assert (theirs["LastName"], theirs["Title"], theirs["Description"]) == ("Anders", "Original", "Unit A")
    # A keeps its record and leaves B's new one alone ([R34]).
    sync(a)
    p_a.refresh_from_db()
    assert p_a.crm_lead_id == lead_a and not p_a.is_deleted
    assert not CrmLink.objects.filter(connector=a, crm_id=p_b.crm_lead_id).exists()
    assert _skipped(a).get("already_linked", 0) >= 1
    # The sandbox is shared by the session: a later single-BU connector must not meet two leads with one email.
    crm.delete("Lead", p_b.crm_lead_id)


def test_push_does_not_match_a_record_another_bu_syncs(
    two_bus, crm, bu, other_bu, admin_user, unique
):  # [R34] one BU per record, although B sees it (created by the shared connector user, [R35])
    a, b = two_bus
    email = f"taken.{unique}@example.test"
    p_a = prospects.create_prospect(bu, {"email": email, "last_name": "Anders", "job_title": "Set in A"})
    prospects.assign_prospect(p_a, admin_user)
    drain_all(a)
    p_a.refresh_from_db()
    lead_id = p_a.crm_lead_id
    assert lead_id and crm.get("Lead", lead_id)["CreatedById"] == b.connector_user_id
    p_b = prospects.create_prospect(other_bu, {"email": email, "last_name": "Bee", "job_title": "Set in B"})
    drain_all(b)
    p_b.refresh_from_db()
    assert not p_b.crm_id and not CrmLink.objects.filter(connector=b).exists()
    assert _push_skips(b).get("unassigned") == 1
    record = crm.get("Lead", lead_id)
    assert (record["LastName"], record["Title"]) == ("Anders", "Set in A")


def test_push_writes_nothing_to_a_linked_record_that_stopped_matching(two_bus, crm, bu, unique):  # [R35], [R36]
    a, _ = two_bus
    lead_id = _lead(crm, f"stopped.{unique}@example.test", Title="Original", Description="Unit A")
    sync(a)
    p = Prospect.objects.get(bu=bu, crm_lead_id=lead_id)
    crm.update("Lead", lead_id, Description="Unit B")
    prospects.update_prospect(p, {"job_title": "Changed before the poll"})  # pushed before the pull recycles it
    drain_all(a)
    assert crm.get("Lead", lead_id)["Title"] == "Original"
    assert _push_skips(a).get("not_visible") == 1
    assert CrmLink.objects.filter(connector=a, crm_id=lead_id, prospect=p).exists()


@pytest.mark.parametrize("when", ["before the poll", "in the recycle bin", "never polled while hidden"])
def test_a_loopline_change_held_while_hidden_is_pushed_when_the_record_matches_again(
        two_bus, crm, bu, unique, when):  # [R36]
    # Found by the chaos run (bench/_chaos.py, MDS flips): a change made while the record did not match is not
    # written to the CRM then; when only the rule field flips back, the record's mapped values are unchanged, so the
    # echo check skipped it and the change never reached the CRM — the two sides disagreed for good.
    a, _ = two_bus
    lead_id = _lead(crm, f"held.{unique}@example.test", Title="Original", Description="Unit A")
    sync(a)
    p = Prospect.objects.get(bu=bu, crm_lead_id=lead_id)
    crm.update("Lead", lead_id, Description="Unit B")
    if when != "in the recycle bin":
        prospects.update_prospect(p, {"job_title": "Held"})
        drain_all(a)  # skipped: the record visibly stopped matching
    if when != "never polled while hidden":  # else it flips back before any poll saw it leave
        sync(a)
        p.refresh_from_db()
        assert p.is_deleted
    if when == "in the recycle bin":
        prospects.update_prospect(p, {"job_title": "Held"})
        drain_all(a)
    assert crm.get("Lead", lead_id)["Title"] == "Original"  # not written while hidden
    crm.update("Lead", lead_id, Description="Unit A")  # only the rule field: no mapped value changes
    sync(a, rounds=2)
    p.refresh_from_db()
    assert not p.is_deleted and p.job_title == "Held"
    assert crm.get("Lead", lead_id)["Title"] == "Held"  # the held change follows once the record is shared again


def test_a_merge_into_a_record_that_stopped_matching_keeps_the_survivor_in_the_recycle_bin(
        two_bus, crm, bu, unique):  # [R36], [R32]
    # Found by the chaos run: merging a live lead into a master the BU no longer sees brought the master's prospect
    # back out of the recycle bin (the merge revived it) although its record still did not match the rule.
    a, _ = two_bus
    master_id = _lead(crm, f"master.{unique}@example.test", Description="Unit A")
    loser_id = _lead(crm, f"loser.{unique}@example.test", Description="Unit A")
    sync(a)
    master = Prospect.objects.get(bu=bu, crm_lead_id=master_id)
    loser = Prospect.objects.get(bu=bu, crm_lead_id=loser_id)
    crm.update("Lead", master_id, Description="Unit B")
    sync(a)
    master.refresh_from_db()
    assert master.is_deleted
    crm.request("POST", "/_sandbox/merge", json={"object": "Lead", "masterId": master_id, "mergeIds": [loser_id]})
    sync(a)
    master.refresh_from_db()
    loser.refresh_from_db()
    assert loser.is_deleted and loser.merged_into_id == master.pk
    assert master.is_deleted and not master.crm_deleted  # still not shared: stays recycled
    crm.update("Lead", master_id, Description="Unit A")
    sync(a)
    master.refresh_from_db()
    assert not master.is_deleted  # shared again: restored


def test_email_to_a_prospect_whose_record_is_not_shared_is_skipped_with_the_reason(
    two_bus, crm, bu, make_email, unique
):  # [R36]
    from loopline.emails import services as email_services
    from loopline.emails.models import Delivery

    a, _ = two_bus
    shared = _lead(crm, f"shared.{unique}@example.test", Description="Unit A")
    hidden = _lead(crm, f"hidden.{unique}@example.test", Description="Unit A")
    sync(a)
    crm.update("Lead", hidden, Description="Nobody")
    sync(a)
    p_shared = Prospect.objects.get(bu=bu, crm_lead_id=shared)
    p_hidden = Prospect.objects.get(bu=bu, crm_lead_id=hidden)
    prospects.undelete(p_hidden)  # even restored by hand, its CRM record is still not shared
    email = make_email()
    email_services.send_to_prospects(bu, email.pk, [p_shared.pk, p_hidden.pk], kind="program", source="test",
                                     source_id=None, dedupe_key=f"mds-{unique}")
    rows = {d.prospect_id: d for d in Delivery.objects.filter(send__dedupe_key=f"mds-{unique}")}
    assert rows[p_shared.pk].status == Delivery.Status.QUEUED
    assert rows[p_hidden.pk].status == Delivery.Status.SKIPPED
    assert rows[p_hidden.pk].reason == "CRM record not shared with this business unit ([R36])"


def test_opportunities_follow_the_opportunity_rule(two_bus, crm, bu, unique):  # [R35]
    from loopline.campaigns.models import Opportunity

    a, _ = two_bus
    lead_id = _lead(crm, f"deal.{unique}@example.test", Description="Unit A")
    sync(a)
    contact_id = crm.create("Contact", LastName="Deal", Email=f"dc.{unique}@example.test", Description="Unit A")
    sync(a)
    assert Prospect.objects.filter(bu=bu, crm_contact_id=contact_id).exists() and lead_id
    opps = {}
    for name, description in (("shared", "Deals A"), ("hidden", "Deals B")):
        opps[name] = crm.create("Opportunity", Name=f"{name} {unique}", StageName="Prospecting",
                                CloseDate="2030-01-01", Description=description)
        crm.create("OpportunityContactRole", OpportunityId=opps[name], ContactId=contact_id, Role="Evaluator")
    sync(a)
    mirrored = set(Opportunity.objects.filter(bu=bu, crm_id__in=opps.values()).values_list("crm_id", flat=True))
    assert opps["shared"] in mirrored and opps["hidden"] not in mirrored


# --- Rules: who may change them, and validation -------------------------------------------------------------------


def test_rules_cannot_change_while_the_connector_is_active(connector, admin_access):  # [R37]
    with pytest.raises(ValidationError, match=r"paused \[R37\]"):
        sharing.set_sharing_rules(connector, rules("Unit A"), admin_access)
    services.pause(admin_access, connector)
    sharing.set_sharing_rules(connector, rules("Unit A"), admin_access)
    connector.refresh_from_db()
    assert sharing.rules_of(connector)["Lead"] == sharing.SharingRule("Lead", "Description", "Unit A")
    event = AuditLog.objects.filter(action="connector.update_sharing_rules").latest("pk")
    assert event.after["sharing_rules"]["Contact"] == {"field": "Description", "value": "Unit A"}


def test_rules_are_validated(admin_access, crm, crm_app):  # [R35]
    connector = make_connector(admin_access, crm, crm_app, resume=False)

    def refused(value: dict, match: str) -> None:
        with pytest.raises(ValidationError, match=match):
            sharing.set_sharing_rules(connector, value, admin_access)

    refused({"Lead": {"field": "Description", "value": "X"}}, "defined together")
    refused(rules(""), "cannot be empty")
    refused({**rules("X"), "Lead": {"field": "No_Such_Field__c", "value": "X"}}, "no field No_Such_Field__c")
    refused({**rules("X"), "Lead": {"field": "LeadSource", "value": "Web"}}, "mapped to a prospect field")
    refused({**rules("X"), "Account": {"field": "Description", "value": "X"}}, "Lead, Contact and Opportunity")
    sharing.set_sharing_rules(connector, {**rules("X"), "Lead": {"field": "description", "value": "X"}}, admin_access)
    connector.refresh_from_db()
    assert sharing.rules_of(connector)["Lead"].field == "Description"  # the CRM's own spelling
    assert CrmDescribe.objects.filter(connector=connector, object_type="Lead").exists()
    sharing.set_sharing_rules(connector, {}, admin_access)  # no rules at all is allowed for a lone BU
    connector.refresh_from_db()
    assert sharing.rules_of(connector) == {}


def test_rules_must_be_unique_across_the_bus_of_an_org(admin_access, other_admin_access, crm, crm_app):  # [R35]
    a = make_connector(admin_access, crm, crm_app, resume=False)
    sharing.set_sharing_rules(a, rules("Same"), admin_access)
    b = _unverified_connector(other_admin_access, crm, crm_app)
    services.verify_connection(other_admin_access, b)  # refused, but the org is known now
    b.refresh_from_db()
    with pytest.raises(ValidationError, match="unique across business units"):
        sharing.set_sharing_rules(b, rules("Same"), other_admin_access)
    sharing.set_sharing_rules(b, rules("Other"), other_admin_access)  # a different value is fine


def test_second_bu_refused_until_every_bu_on_the_org_has_rules(
    admin_access, other_admin_access, crm, crm_app
):  # [R34]
    a = make_connector(admin_access, crm, crm_app)
    b = _unverified_connector(other_admin_access, crm, crm_app)
    ok, message = services.verify_connection(other_admin_access, b)
    assert not ok and a.bu.name in message and "Marketing data sharing" in message
    b.refresh_from_db()
    sharing.set_sharing_rules(b, rules("Unit B"), other_admin_access)
    ok, message = services.verify_connection(other_admin_access, b)
    assert not ok and a.bu.name in message.split("missing for:")[1]  # A still has none
    services.pause(admin_access, a)
    sharing.set_sharing_rules(a, rules("Unit A"), admin_access)
    services.resume(admin_access, a)
    ok, message = services.verify_connection(other_admin_access, b)
    assert ok, message
    # Removing A's rules later keeps A from resuming while B is on the org.
    services.pause(admin_access, a)
    sharing.set_sharing_rules(a, {}, admin_access)
    with pytest.raises(ValidationError, match=r"\[R34\]"):
        services.resume(admin_access, a)


def test_only_administrators_change_rules(connector, marketing_access, admin_access):  # [R5]
    from django.core.exceptions import PermissionDenied

    services.pause(admin_access, connector)
    with pytest.raises(PermissionDenied):
        sharing.set_sharing_rules(connector, rules("X"), marketing_access)


# --- Pure helpers ---------------------------------------------------------------------------------------------------


def test_visibility_reads_the_rule_and_the_creator():  # [R35]
    import datetime as dt

    from loopline.connector.engine.model import CrmRecord

    r = sharing.rules_from_settings({"sharing_rules": rules("Unit A")})
    stamp = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def rec(values: dict, by: str | None = None) -> CrmRecord:
        return CrmRecord("Lead", "00Q000000000001", values, stamp, created_by_id=by)

    assert sharing.visibility(rec({"Description": "Unit A"}), r, "005000000000001") is True
    assert sharing.visibility(rec({"Description": "unit a"}), r, "005000000000001") is False
    assert sharing.visibility(rec({"Description": None}), r, "005000000000001") is False
    assert sharing.visibility(rec({}), r, "005000000000001") is None  # read without the field: cannot tell
    assert sharing.visibility(rec({"Description": "X"}, "005000000000001AAA"), r, "005000000000001") is True
    assert sharing.visibility(rec({}), {}, "") is True  # no rules: everything is visible


# --- Settings page ----------------------------------------------------------------------------------------------------


def test_settings_page_section_is_admin_only_and_locked_while_active(
    client, admin_user, marketing_user, admin_access, connector
):  # [R37], [R5]
    from django.urls import reverse

    from loopline.conftest import PASSWORD

    url, post = reverse("connector:settings"), reverse("connector:sharing_rules")
    data = {"lead_field": "Description", "lead_value": "Unit A", "contact_field": "Description",
            "contact_value": "Unit A", "opportunity_field": "", "opportunity_value": ""}
    assert client.login(username=marketing_user.email, password=PASSWORD)
    assert client.get(url).status_code == 403 and client.post(post, data).status_code == 403
    assert client.login(username=admin_user.email, password=PASSWORD)
    page = client.get(url).content.decode()
    assert "Marketing data sharing" in page and "only be changed while the connector is paused" in page
    assert "<fieldset disabled>" in page
    refused = client.post(post, data)
    assert refused.status_code == 400 and "[R37]" in refused.content.decode()
    services.pause(admin_access, connector)
    assert "<fieldset disabled>" not in client.get(url).content.decode()
    bad = client.post(post, {**data, "contact_field": "", "contact_value": ""})
    assert bad.status_code == 400 and "defined together" in bad.content.decode()
    bad = client.post(post, {**data, "contact_field": ""})
    assert bad.status_code == 400 and "Contact: choose the CRM field" in bad.content.decode()
    assert client.post(post, data).status_code == 302
    connector.refresh_from_db()
    assert sharing.rules_of(connector)["Contact"].value == "Unit A"
    assert 'value="Unit A"' in client.get(url).content.decode()
