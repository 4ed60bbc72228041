"""Matching ([R9], [R19]), creation ([R10]–[R12], [R15], [R31]) and lifecycle ([R13], [R31], [R32], [R35]) decisions."""

from __future__ import annotations

from loopline.connector.engine.creation import (
    PushAction,
    decide_crm_creation,
    decide_prospect_creation,
    plan_prospect_push,
    sync_gate,
)
from loopline.connector.engine.lifecycle import LifecycleAction, SharingRule, decide_lifecycle, is_visible
from loopline.connector.engine.matching import (
    CrmMatchOutcome,
    EmailAction,
    Link,
    ProspectMatchOutcome,
    choose_crm_record,
    decide_email_change,
    match_prospect,
)
from loopline.connector.engine.model import CrmObject, FieldKind, MatchingMode, SkipReason, SyncState
from loopline.connector.engine.values import field_digest

from .factories import (
    ACCOUNT_ID,
    CONNECTOR_USER,
    CONTACT_ID,
    CONTACT_ID_2,
    LEAD_ID,
    LEAD_ID_2,
    at,
    contact,
    lead,
    prospect,
    settings,
)

CRM_ID = settings(matching_mode=MatchingMode.CRM_ID)

# --- prospect → CRM [R9] ----------------------------------------------------------------------------------------


def test_unique_email_contact_beats_lead():
    # [R9] a contact beats a lead even if the lead changed later; case-insensitive email
    candidates = [lead(modstamp=at(10)), contact({"Email": "ANN@example.com"}, modstamp=at(0))]
    match = choose_crm_record(prospect(), candidates, settings())
    assert (
        match.outcome is CrmMatchOutcome.BY_EMAIL
        and match.record is not None
        and match.record.id == CONTACT_ID
    )
    assert match.link == Link(crm_contact_id=CONTACT_ID, crm_account_id=None)


def test_unique_email_most_recent_of_one_kind_wins():
    candidates = [contact(modstamp=at(1)), contact(rid=CONTACT_ID_2, modstamp=at(5))]
    assert choose_crm_record(prospect(), candidates, settings()).record.id == CONTACT_ID_2


def test_deleted_and_converted_records_never_match():
    candidates = [lead(is_converted=True, converted_contact_id=CONTACT_ID), contact(is_deleted=True)]
    assert choose_crm_record(prospect(), candidates, settings()).outcome is CrmMatchOutcome.NONE


def test_own_id_wins_over_email():
    p = prospect(crm_lead_id="00Q000000000002")  # 15-char form; the API returns the 18-char one
    candidates = [contact(), lead(rid="00Q000000000002EAA", values={"Email": "other@example.com"})]
    match = choose_crm_record(p, candidates, settings())
    assert match.outcome is CrmMatchOutcome.LINKED and match.record.id == "00Q000000000002EAA"


def test_crm_id_mode_ignores_email_unless_fallback_enabled():
    # [R9] CRM id mode: the id is the key; optional email fallback for prospects without a CRM id
    assert choose_crm_record(prospect(), [lead()], CRM_ID).outcome is CrmMatchOutcome.NONE
    fallback = settings(matching_mode=MatchingMode.CRM_ID, match_by_email_when_no_crm_id=True)
    match = choose_crm_record(
        prospect(), [lead(modstamp=at(1)), lead(rid=LEAD_ID_2, modstamp=at(9))], fallback
    )
    assert match.record.id == LEAD_ID_2
    linked = prospect(crm_lead_id="00Q000000000777AAA")
    assert choose_crm_record(linked, [lead()], fallback).outcome is CrmMatchOutcome.NONE


# --- CRM → prospect [R9] ----------------------------------------------------------------------------------------


def test_match_prospect_by_id_then_email():
    p = prospect(crm_lead_id=LEAD_ID)
    assert match_prospect(lead({"Email": "x@y.z"}), [p], settings()).prospect_id == 1
    m = match_prospect(lead(), [prospect()], settings())
    assert m.outcome is ProspectMatchOutcome.MATCHED and m.link == Link(crm_lead_id=LEAD_ID)


def test_incoming_contact_takes_over_lead_linked_prospect():
    # [R9] contact beats lead
    p = prospect(crm_lead_id=LEAD_ID)
    m = match_prospect(contact(account_id=ACCOUNT_ID), [p], settings())
    assert m.outcome is ProspectMatchOutcome.MATCHED and m.relinked
    assert m.link == Link(crm_contact_id=CONTACT_ID, crm_account_id=ACCOUNT_ID)


def test_incoming_lead_is_ignored_for_contact_linked_prospect():
    p = prospect(crm_contact_id=CONTACT_ID)
    m = match_prospect(lead(rid=LEAD_ID_2), [p], settings())
    assert m.outcome is ProspectMatchOutcome.IGNORED and m.skip_reason is SkipReason.LOSES_TO_OTHER_RECORD


def test_rivals_decide_most_recent_of_one_kind():
    p = prospect(crm_lead_id=LEAD_ID)
    newer = lead(rid=LEAD_ID_2, modstamp=at(10))
    assert match_prospect(newer, [p], settings(), rivals=[lead(modstamp=at(1))]).relinked
    older = lead(rid=LEAD_ID_2, modstamp=at(0))
    m = match_prospect(older, [p], settings(), rivals=[lead(modstamp=at(5))])
    assert m.outcome is ProspectMatchOutcome.IGNORED


def test_crm_id_mode_new_record_creates_new_prospect_even_with_same_email():
    # [R9] CRM id mode: a new lead carries its id into a new prospect
    m = match_prospect(lead(), [prospect(crm_lead_id=LEAD_ID_2)], CRM_ID)
    assert m.outcome is ProspectMatchOutcome.NO_MATCH
    fallback = settings(matching_mode=MatchingMode.CRM_ID, match_by_email_when_no_crm_id=True)
    assert match_prospect(lead(), [prospect()], fallback).outcome is ProspectMatchOutcome.MATCHED
    assert (
        match_prospect(lead(), [prospect(crm_lead_id=LEAD_ID_2)], fallback).outcome
        is ProspectMatchOutcome.NO_MATCH
    )


def test_person_account_link():
    # [R14] the person contact id is stored as the prospect's contact id
    pa = lead(object_type="PersonAccount", rid=ACCOUNT_ID, person_contact_id=CONTACT_ID)
    assert Link.for_record(pa) == Link(crm_contact_id=CONTACT_ID, crm_account_id=ACCOUNT_ID)
    assert pa.email == "ann@example.com"
    assert prospect(crm_contact_id=CONTACT_ID).links_to(pa)


# --- email changes [R19] ----------------------------------------------------------------------------------------


def test_email_change_decisions():
    old_p = prospect({"email": "old@example.com"}, changed={"email": at(0)})
    r_new = lead({"Email": "new@example.com"}, modstamp=at(5))
    assert decide_email_change(old_p, r_new, settings()).action is EmailAction.UPDATE_PROSPECT
    assert (
        decide_email_change(old_p, r_new, settings(update_email_from_crm=False)).action is EmailAction.UNLINK
    )
    assert decide_email_change(old_p, r_new, CRM_ID).action is EmailAction.NONE
    assert decide_email_change(prospect({"email": ""}), r_new, settings()).action is EmailAction.FILL_LOOPLINE
    assert decide_email_change(old_p, lead({"Email": None}), settings()).action is EmailAction.FILL_CRM


def test_email_change_baseline_beats_clock():
    p = prospect({"email": "new@example.com"}, changed={"email": at(0)})
    r = lead({"Email": "old@example.com"}, modstamp=at(9))
    state = SyncState(baseline={"email": field_digest(FieldKind.EMAIL, "old@example.com")})
    assert decide_email_change(p, r, settings(), state).action is EmailAction.PUSH_TO_CRM


# --- creation [R10]–[R12], [R15], [R31] -------------------------------------------------------------------------


def test_prospect_creation_rules():
    # [R10]
    assert decide_prospect_creation(lead(), settings()).create
    off = decide_prospect_creation(lead(), settings(auto_create_prospects=False))
    assert not off.create and off.skip_reason is SkipReason.AUTO_CREATE_OFF
    assert decide_prospect_creation(lead(), settings(auto_create_prospects=False), explicit=True).create
    no_email = decide_prospect_creation(lead({"Email": ""}), settings())
    assert not no_email.create and no_email.skip_reason is SkipReason.NO_EMAIL
    converted = decide_prospect_creation(lead(is_converted=True), settings())
    assert converted.skip_reason is SkipReason.CONVERTED_LEAD


def test_crm_creation_needs_assignment():
    # [R11] unassigned prospects never create CRM records
    d = decide_crm_creation(prospect(), settings())
    assert not d.create and d.skip_reason is SkipReason.UNASSIGNED
    d = decide_crm_creation(prospect(assigned=True, assigned_crm_owner_id="005000000000003AAA"), settings())
    assert d.create and d.object_type is CrmObject.LEAD and d.owner_id == "005000000000003AAA"


def test_crm_creation_owner_fallbacks_and_object():
    # [R11] a user with no CRM mapping → connector user; assignment rule → no owner; BU setting picks the object
    d = decide_crm_creation(prospect(assigned=True), settings(new_record_object=CrmObject.CONTACT))
    assert d.owner_id == CONNECTOR_USER and d.object_type is CrmObject.CONTACT
    d = decide_crm_creation(prospect(assigned=True, use_assignment_rule=True), settings())
    assert d.create and d.use_assignment_rule and d.owner_id is None


def test_do_not_sync_and_crm_deleted_never_create():
    # [R15][R31]
    assert (
        decide_crm_creation(prospect(assigned=True, do_not_sync=True), settings()).skip_reason
        is SkipReason.DO_NOT_SYNC
    )
    d = decide_crm_creation(prospect(assigned=True, crm_deleted=True), settings())
    assert d.skip_reason is SkipReason.CRM_DELETED
    assert sync_gate(prospect(crm_deleted=True)).message == "Deleted in the CRM; will not be re-synced."


def test_plan_prospect_push():
    # [R11] unassigned prospects sync when a CRM record matches by email ...
    assert plan_prospect_push(prospect(), [lead()], settings()).action is PushAction.UPDATE
    # ... but no record is created for them
    skip = plan_prospect_push(prospect(), [], settings())
    assert skip.action is PushAction.SKIP and skip.skip_reason is SkipReason.UNASSIGNED
    assert plan_prospect_push(prospect(assigned=True), [], settings()).action is PushAction.CREATE
    # [R25] a linked prospect whose record was not found is never re-created
    linked = plan_prospect_push(prospect(assigned=True, crm_lead_id=LEAD_ID), [], settings())
    assert linked.action is PushAction.SKIP
    # [R12] imported prospects: same rules (there is no import flag to bypass them)
    assert (
        plan_prospect_push(prospect(do_not_sync=True, assigned=True), [lead()], settings()).action
        is PushAction.SKIP
    )


# --- lifecycle [R13], [R31], [R32], [R35], [R36] ----------------------------------------------------------------


def test_lifecycle_decisions():
    p = prospect(crm_lead_id=LEAD_ID)
    conv = decide_lifecycle(
        p, lead(is_converted=True, converted_contact_id=CONTACT_ID, converted_account_id=ACCOUNT_ID)
    )
    assert conv.action is LifecycleAction.FOLLOW_CONVERSION
    assert conv.link == Link(crm_contact_id=CONTACT_ID, crm_account_id=ACCOUNT_ID)
    assert decide_lifecycle(p, lead(is_deleted=True)).action is LifecycleAction.RECYCLE_CRM_DELETED
    merged = decide_lifecycle(p, lead(is_deleted=True, master_record_id=LEAD_ID_2))
    assert merged.action is LifecycleAction.MERGED_INTO and merged.merged_into_crm_id == LEAD_ID_2
    restored = decide_lifecycle(prospect(crm_lead_id=LEAD_ID, crm_deleted=True), lead())
    assert restored.action is LifecycleAction.RESTORE_UNDELETED
    assert decide_lifecycle(p, lead()).action is LifecycleAction.NONE


def test_sharing_rules():
    rules = [SharingRule("Lead", "Region__c", "EMEA"), SharingRule("Contact", "Region__c", "EMEA")]
    assert is_visible(lead({"Region__c": "EMEA"}), rules)
    assert not is_visible(lead({"Region__c": "emea"}), rules)  # case-sensitive
    assert is_visible(lead({"Region__c": None}, created_by_id=CONNECTOR_USER), rules, CONNECTOR_USER)
    d = decide_lifecycle(prospect(crm_lead_id=LEAD_ID), lead({"Region__c": "US"}), rules=rules)
    assert d.action is LifecycleAction.RECYCLE_NOT_VISIBLE


def test_creation_payload():
    # [R11][R18] a new record carries the writable mapped fields with values, the fixed Loopline → CRM ones and the
    # owner; never the read-only company of a contact, never the owner mapping, never blanks ([R17])
    from loopline.connector.engine.creation import creation_payload
    from loopline.connector.engine.model import default_mapping

    p = prospect(
        {"company": "Acme", "job_title": " ", "annual_revenue": "1000.00", "crm_owner_id": "005X"},
        assigned=True,
        assigned_crm_owner_id="005000000000003AAA",
    )
    creation = decide_crm_creation(p, settings())
    payload = creation_payload(p, default_mapping(), "Lead", creation)
    assert payload == {
        "FirstName": "Ann",
        "LastName": "Lee",
        "Email": "ann@example.com",
        "Company": "Acme",
        "AnnualRevenue": 1000,
        "Loopline_Score__c": 10,
        "Loopline_Grade__c": "B",
        "OwnerId": "005000000000003AAA",
    }
    contact_payload = creation_payload(p, default_mapping(), "Contact", extra={"AccountId": ACCOUNT_ID})
    assert "Account.Name" not in contact_payload and contact_payload["AccountId"] == ACCOUNT_ID


def test_converted_or_deleted_records_never_match_by_email():
    # [R13][R31] a converted lead does not link a prospect by email; by id it still matches (lifecycle follows it)
    converted = lead(is_converted=True, converted_contact_id=CONTACT_ID)
    m = match_prospect(converted, [prospect()], settings())
    assert m.outcome is ProspectMatchOutcome.NO_MATCH and m.skip_reason is SkipReason.CONVERTED_LEAD
    assert (
        match_prospect(converted, [prospect(crm_lead_id=LEAD_ID)], settings()).outcome
        is ProspectMatchOutcome.MATCHED
    )
    assert (
        match_prospect(lead(is_deleted=True), [prospect()], settings()).skip_reason is SkipReason.CRM_DELETED
    )


def test_link_cleared_for_unlink():
    # [R19]
    assert Link.cleared_for(lead()).as_dict() == {"crm_lead_id": ""}
    assert Link.cleared_for(contact()).as_dict() == {"crm_contact_id": "", "crm_account_id": ""}
