"""Lifecycle decisions only act on the record the prospect syncs with now ([R13], [R31], [R32])."""

from __future__ import annotations

from loopline.connector.engine.lifecycle import LifecycleAction, decide_lifecycle, is_current_record
from loopline.connector.engine.model import SkipReason, id18

from .factories import ACCOUNT_ID, CONTACT_ID, CONTACT_ID_2, LEAD_ID, LEAD_ID_2, contact, lead, prospect


def test_current_record_is_the_contact_when_there_is_one():
    converted = prospect(crm_lead_id=LEAD_ID, crm_contact_id=CONTACT_ID)
    assert is_current_record(converted, contact())
    assert not is_current_record(converted, lead())
    real = id18("00Q5g00000AbCdE")
    assert is_current_record(
        prospect(crm_lead_id=real[:15]), lead(rid=real)
    )  # 15- and 18-char forms: one record
    assert not is_current_record(prospect(), lead())  # unlinked: none


def test_deleting_a_history_record_does_nothing():  # [R31]
    converted = prospect(crm_lead_id=LEAD_ID, crm_contact_id=CONTACT_ID)
    d = decide_lifecycle(converted, lead(is_deleted=True))
    assert d.action is LifecycleAction.NONE and d.skip_reason is SkipReason.CRM_DELETED
    merged = decide_lifecycle(converted, lead(is_deleted=True, master_record_id=LEAD_ID_2))
    assert merged.action is LifecycleAction.NONE
    assert decide_lifecycle(converted, contact(is_deleted=True)).action is LifecycleAction.RECYCLE_CRM_DELETED
    flagged = prospect(crm_lead_id=LEAD_ID, crm_deleted=True)
    assert decide_lifecycle(flagged, lead(is_deleted=True)).action is LifecycleAction.NONE  # already flagged


def test_only_the_current_record_coming_back_restores():  # [R31]
    flagged = prospect(crm_lead_id=LEAD_ID, crm_contact_id=CONTACT_ID, crm_deleted=True)
    assert decide_lifecycle(flagged, contact()).action is LifecycleAction.RESTORE_UNDELETED
    assert decide_lifecycle(flagged, lead()).action is LifecycleAction.NONE


def test_conversion_is_followed_once_and_only_from_the_current_lead():  # [R13]
    p = prospect(crm_lead_id=LEAD_ID)
    converted_lead = lead(is_converted=True, converted_contact_id=CONTACT_ID, converted_account_id=ACCOUNT_ID)
    assert decide_lifecycle(p, converted_lead).action is LifecycleAction.FOLLOW_CONVERSION
    followed = prospect(crm_lead_id=LEAD_ID, crm_contact_id=CONTACT_ID)
    again = decide_lifecycle(followed, converted_lead)
    assert again.action is LifecycleAction.NONE and again.skip_reason is SkipReason.CONVERTED_LEAD
    # The prospect moved to another contact meanwhile: a late conversion of its old lead does not pull it back.
    moved = prospect(crm_lead_id=LEAD_ID, crm_contact_id=CONTACT_ID_2)
    assert decide_lifecycle(moved, converted_lead).action is LifecycleAction.NONE
