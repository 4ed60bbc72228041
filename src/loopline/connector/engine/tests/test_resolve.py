"""Unit tests for field resolution and echo suppression ([R13], [R16]–[R19], [R24])."""

from __future__ import annotations

from decimal import Decimal

import pytest

from loopline.connector.engine.model import (
    NOT_PROVIDED,
    FieldKind,
    FieldMapping,
    MatchingMode,
    SkipReason,
    SyncBehaviour,
    SyncState,
    default_mapping,
)
from loopline.connector.engine.resolve import (
    EchoVerdict,
    FieldOutcome,
    adopt_pending_write,
    is_echo,
    record_hash,
    resolve,
)
from loopline.connector.engine.values import field_digest

from .factories import CONNECTOR_USER, CONTACT_ID, OWNER_ID, at, contact, lead, prospect, settings

MAPPINGS = default_mapping(behaviour=SyncBehaviour.MOST_RECENT_RECORD)


def mapping_with(field: str, behaviour: SyncBehaviour) -> tuple[FieldMapping, ...]:
    return tuple(m.with_behaviour(behaviour) if m.loopline_field == field else m for m in MAPPINGS)


def test_in_sync_record_produces_no_writes():
    p = prospect({"company": "Acme", "crm_owner_id": OWNER_ID}, crm_lead_id="00Q000000000001AAA")
    r = lead({"Loopline_Score__c": 10, "Loopline_Grade__c": "B"})
    res = resolve(p, r, MAPPINGS, settings())
    assert not res.has_writes
    assert res.reasons == ("no differences",)


def test_normalised_values_compare_equal():
    # emails case-insensitive, whitespace, number formats, 15 vs 18 char ids: no write
    p = prospect(
        {
            "email": "ANN@Example.com",
            "first_name": " Ann ",
            "annual_revenue": Decimal("1000.00"),
            "employees": 5,
            "crm_owner_id": "005000000000001",
            "score": 10,
            "grade": "B",
            "opted_out": False,
            "company": "Acme",
        },
    )
    r = lead(
        {
            "Email": "ann@example.com",
            "AnnualRevenue": 1000,
            "NumberOfEmployees": "5",
            "Loopline_Score__c": 10.0,
            "Loopline_Grade__c": "B",
            "HasOptedOutOfEmail": "false",
        }
    )
    res = resolve(p, r, MAPPINGS, settings())
    assert not res.has_writes, res.reasons


@pytest.mark.parametrize(
    ("behaviour", "loopline_time", "crm_time", "winner"),
    [
        (SyncBehaviour.USE_LOOPLINE, 0, 10, "loopline"),
        (SyncBehaviour.USE_CRM, 10, 0, "crm"),
        (SyncBehaviour.MOST_RECENT_RECORD, 10, 0, "loopline"),
        (SyncBehaviour.MOST_RECENT_RECORD, 0, 10, "crm"),
        (SyncBehaviour.MOST_RECENT_RECORD, 5, 5, "crm"),  # exact tie → CRM
    ],
)
def test_behaviours_on_conflict(behaviour, loopline_time, crm_time, winner):
    # [R16]
    mappings = mapping_with("job_title", behaviour)
    p = prospect({"job_title": "CEO"}, changed={"job_title": at(loopline_time)})
    r = lead({"Title": "CTO"}, modstamp=at(crm_time))
    res = resolve(p, r, mappings, settings())
    if winner == "loopline":
        assert res.to_crm["Title"] == "CEO" and "job_title" not in res.to_loopline
    else:
        assert res.to_loopline["job_title"] == "CTO" and "Title" not in res.to_crm


def test_most_recent_record_uses_mapped_field_times_not_updated_at():
    # Decision: the prospect's record time is max(field_changed_at of two-way mapped fields); a later score change or
    # updated_at does not make Loopline "newer".
    p = prospect(
        {"job_title": "CEO", "score": 99}, changed={"job_title": at(0), "score": at(30)}, updated_at=at(30)
    )
    r = lead({"Title": "CTO"}, modstamp=at(10))
    res = resolve(p, r, MAPPINGS, settings())
    assert res.to_loopline["job_title"] == "CTO"
    assert res.to_crm["Loopline_Score__c"] == 99


def test_most_recent_record_falls_back_to_updated_at():
    p = prospect({"job_title": "CEO"}, updated_at=at(20))
    r = lead({"Title": "CTO"}, modstamp=at(10))
    assert resolve(p, r, MAPPINGS, settings()).to_crm["Title"] == "CEO"


def test_most_recent_field_uses_field_history_then_modstamp():
    # [R16] opt-out: per-field times; CRM field history when available, else the record's SystemModstamp
    p = prospect({"opted_out": True}, changed={"opted_out": at(5), "first_name": at(50)})
    with_history = lead(
        {"HasOptedOutOfEmail": False}, modstamp=at(60), field_history={"HasOptedOutOfEmail": at(1)}
    )
    assert resolve(p, with_history, MAPPINGS, settings()).to_crm["HasOptedOutOfEmail"] is True
    without_history = lead({"HasOptedOutOfEmail": False}, modstamp=at(60))
    assert resolve(p, without_history, MAPPINGS, settings()).to_loopline["opted_out"] is False


def test_most_recent_field_is_only_allowed_for_opt_out():
    # [R16]
    with pytest.raises(ValueError, match="opt-out"):
        FieldMapping("first_name", {"Lead": "FirstName"}, SyncBehaviour.MOST_RECENT_FIELD)


@pytest.mark.parametrize("behaviour", list(SyncBehaviour)[:3])
def test_blank_loopline_never_overwrites_crm(behaviour):
    # [R17] even when Loopline is preferred, its blank is filled from the CRM
    mappings = mapping_with("job_title", behaviour)
    p = prospect({"job_title": ""}, changed={"job_title": at(10)})
    r = lead({"Title": "CTO"}, modstamp=at(0))
    res = resolve(p, r, mappings, settings())
    assert "Title" not in res.to_crm
    assert res.to_loopline["job_title"] == "CTO"


@pytest.mark.parametrize("behaviour", list(SyncBehaviour)[:3])
def test_blank_crm_never_overwrites_loopline(behaviour):
    # [R17]
    mappings = mapping_with("job_title", behaviour)
    p = prospect({"job_title": "CEO"}, changed={"job_title": at(0)})
    r = lead({"Title": None}, modstamp=at(10))
    res = resolve(p, r, mappings, settings())
    assert "job_title" not in res.to_loopline
    assert res.to_crm["Title"] == "CEO"


def test_blank_crm_values_overwrite_setting():
    # [R17] the BU setting turns it off for CRM → Loopline only
    mappings = mapping_with("job_title", SyncBehaviour.USE_CRM)
    p = prospect({"job_title": "CEO"})
    r = lead({"Title": ""})
    res = resolve(p, r, mappings, settings(blank_crm_values_overwrite=True))
    assert res.to_loopline["job_title"] == ""
    # ... but never Loopline → CRM
    mappings = mapping_with("job_title", SyncBehaviour.USE_LOOPLINE)
    res = resolve(
        prospect({"job_title": ""}),
        lead({"Title": "CTO"}),
        mappings,
        settings(blank_crm_values_overwrite=True),
    )
    assert res.to_loopline["job_title"] == "CTO" and "Title" not in res.to_crm


def test_fill_in_placeholder_counts_as_blank():
    # [R20] "[not provided]" sent for a required Lead.Company never flows back into the prospect
    p = prospect({"company": ""})
    r = lead({"Company": NOT_PROVIDED})
    res = resolve(p, r, MAPPINGS, settings(blank_crm_values_overwrite=True))
    assert "company" not in res.to_loopline
    res = resolve(prospect({"company": "Acme"}), r, MAPPINGS, settings(blank_crm_values_overwrite=True))
    assert res.to_crm["Company"] == "Acme"


def test_fixed_fields_flow_their_way():
    # [R18] score/grade/campaign Loopline → CRM even when the CRM changed last; owner CRM → Loopline
    p = prospect(
        {"score": 50, "grade": "A", "campaign": "Spring", "crm_owner_id": "005000000000002AAA"},
        changed={"score": at(0)},
    )
    r = lead(
        {"Loopline_Score__c": 10, "Loopline_Grade__c": "C", "Loopline_Campaign__c": "Old"}, modstamp=at(60)
    )
    res = resolve(p, r, MAPPINGS, settings())
    assert res.to_crm["Loopline_Score__c"] == 50
    assert res.to_crm["Loopline_Grade__c"] == "A"
    assert res.to_crm["Loopline_Campaign__c"] == "Spring"
    assert "OwnerId" not in res.to_crm  # never overrides an existing CRM owner
    assert res.to_loopline["crm_owner_id"] == OWNER_ID


def test_fixed_field_blank_in_loopline_does_not_clear_crm():
    # [R17][R18]
    res = resolve(prospect({"campaign": ""}), lead({"Loopline_Campaign__c": "Old"}), MAPPINGS, settings())
    assert "Loopline_Campaign__c" not in res.to_crm and "campaign" not in res.to_loopline


def test_fixed_fields_cannot_be_remapped():
    # [R18]
    score = next(m for m in MAPPINGS if m.loopline_field == "score")
    with pytest.raises(ValueError):
        score.with_behaviour(SyncBehaviour.USE_CRM)


def test_custom_fixed_field_names_and_person_account_suffix():
    mappings = default_mapping(score_field="pi__score__c")
    score = next(m for m in mappings if m.loopline_field == "score")
    assert score.crm_field("Lead") == "pi__score__c"
    assert score.crm_field("PersonAccount") == "pi__score__pc"


def test_contact_company_is_read_only_account_name():
    # [R21] Contact company is the account's name: CRM → Loopline only, whatever the behaviour
    mappings = mapping_with("company", SyncBehaviour.USE_LOOPLINE)
    p = prospect({"company": "Acme"}, changed={"company": at(10)})
    r = contact({"Account.Name": "Acme Corp"}, modstamp=at(0))
    res = resolve(p, r, mappings, settings())
    assert "Account.Name" not in res.to_crm
    assert res.to_loopline["company"] == "Acme Corp"


def test_person_account_uses_person_fields():
    # [R14]
    p = prospect({"job_title": "CEO", "opted_out": True}, changed={"job_title": at(10), "opted_out": at(10)})
    r = lead(
        {"PersonTitle": "CTO", "PersonHasOptedOutOfEmail": False},
        object_type="PersonAccount",
        rid="001000000000001AAA",
        modstamp=at(0),
    )
    res = resolve(p, r, MAPPINGS, settings())
    assert res.to_crm == {
        "PersonTitle": "CEO",
        "PersonHasOptedOutOfEmail": True,
        "Loopline_Score__pc": 10,
        "Loopline_Grade__pc": "B",
    }


def test_converted_lead_is_never_written():
    # [R13]
    r = lead({"Title": "CTO"}, is_converted=True, converted_contact_id=CONTACT_ID)
    res = resolve(prospect({"job_title": "CEO"}), r, MAPPINGS, settings())
    assert not res.has_writes and res.skip_reason is SkipReason.CONVERTED_LEAD


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"do_not_sync": True}, SkipReason.DO_NOT_SYNC), ({"crm_deleted": True}, SkipReason.CRM_DELETED)],
)
def test_prospect_level_blocks(kwargs, reason):
    # [R15][R31]
    res = resolve(prospect({"job_title": "CEO"}, **kwargs), lead({"Title": "CTO"}), MAPPINGS, settings())
    assert not res.has_writes and res.skip_reason is reason


def test_unique_email_crm_change_updates_prospect():
    # [R19] setting on (default): the CRM's new email becomes the prospect's
    p = prospect({"email": "old@example.com"}, changed={"email": at(0)})
    r = lead({"Email": "New@Example.com"}, modstamp=at(10))
    res = resolve(p, r, MAPPINGS, settings())
    assert res.to_loopline["email"] == "new@example.com"


def test_unique_email_crm_change_unlinks_when_setting_off():
    # [R19] setting off: stop syncing with that record; nothing is written
    p = prospect({"email": "old@example.com"}, changed={"email": at(0)})
    r = lead({"Email": "new@example.com", "Title": "CTO"}, modstamp=at(10))
    res = resolve(p, r, MAPPINGS, settings(update_email_from_crm=False))
    assert res.unlink and not res.has_writes and res.skip_reason is SkipReason.EMAIL_CHANGED_UNLINKED


def test_unique_email_loopline_change_is_pushed():
    p = prospect({"email": "new@example.com"}, changed={"email": at(20)})
    r = lead({"Email": "old@example.com"}, modstamp=at(10))
    assert resolve(p, r, MAPPINGS, settings(update_email_from_crm=False)).to_crm["Email"] == "new@example.com"


def test_crm_id_mode_email_is_an_ordinary_field():
    # [R19]
    mappings = mapping_with("email", SyncBehaviour.USE_LOOPLINE)
    p = prospect({"email": "old@example.com"}, changed={"email": at(0)})
    r = lead({"Email": "new@example.com"}, modstamp=at(10))
    res = resolve(p, r, mappings, settings(matching_mode=MatchingMode.CRM_ID, update_email_from_crm=False))
    assert res.to_crm["Email"] == "old@example.com" and not res.unlink


def test_baseline_turns_one_sided_change_into_no_conflict():
    # With the last agreed values, a field only Loopline changed wins even under "use the CRM's value".
    mappings = mapping_with("job_title", SyncBehaviour.USE_CRM)
    state = SyncState(baseline={"job_title": field_digest(FieldKind.TEXT, "CTO")})
    res = resolve(prospect({"job_title": "CEO"}), lead({"Title": "CTO"}), mappings, settings(), state)
    assert res.to_crm["Title"] == "CEO"
    # both changed → a real conflict → the behaviour decides
    state = SyncState(baseline={"job_title": field_digest(FieldKind.TEXT, "VP")})
    res = resolve(prospect({"job_title": "CEO"}), lead({"Title": "CTO"}), mappings, settings(), state)
    assert res.to_loopline["job_title"] == "CTO"


def test_resolution_reports_hashes_baseline_and_change_times():
    p = prospect({"job_title": ""})
    r = lead({"Title": "CTO"}, modstamp=at(3), field_history={"Title": at(2)}, created_date=at(0))
    res = resolve(p, r, MAPPINGS, settings())
    assert res.loopline_changed_at["job_title"] == at(2)
    assert res.baseline_after["job_title"] == field_digest(FieldKind.TEXT, "CTO")
    assert res.crm_hash_after and res.loopline_hash_after
    decision = next(d for d in res.decisions if d.loopline_field == "industry")
    assert decision.outcome is FieldOutcome.EQUAL


def test_unmapped_object_fields_are_reported():
    res = resolve(prospect({"industry": "Tech"}), contact(), MAPPINGS, settings())
    decision = next(d for d in res.decisions if d.loopline_field == "industry")
    assert decision.outcome is FieldOutcome.NOT_MAPPED


# --- echo suppression [R24] -------------------------------------------------------------------------------------


def test_echo_of_our_own_write_is_skipped():
    r = lead({"Title": "CEO"}, modstamp=at(5), last_modified_by_id=CONNECTOR_USER)
    state = SyncState(last_written_hash=record_hash(r, MAPPINGS), last_crm_modstamp=at(1))
    check = is_echo(r, state, CONNECTOR_USER, MAPPINGS)
    assert check.skip and check.skip_reason is SkipReason.ECHO


def test_connector_user_with_new_values_is_processed():
    old = lead({"Title": "CEO"})
    new = lead({"Title": "CTO"}, modstamp=at(5), last_modified_by_id=CONNECTOR_USER)
    state = SyncState(last_written_hash=record_hash(old, MAPPINGS), last_read_hash=record_hash(old, MAPPINGS))
    assert is_echo(new, state, CONNECTOR_USER, MAPPINGS).verdict is EchoVerdict.NEW


def test_connector_user_with_nothing_new_is_echo_and_others_unchanged():
    r = lead({"Title": "CEO"}, modstamp=at(5), last_modified_by_id=CONNECTOR_USER)
    state = SyncState(last_read_hash=record_hash(r, MAPPINGS))
    assert is_echo(r, state, CONNECTOR_USER, MAPPINGS).verdict is EchoVerdict.ECHO
    other = lead({"Title": "CEO"}, modstamp=at(5), last_modified_by_id="005OTHER")
    assert is_echo(other, state, CONNECTOR_USER, MAPPINGS).verdict is EchoVerdict.UNCHANGED


def test_a_lost_write_seen_applied_is_our_echo_and_its_fields_are_not_crm_changes():
    # [R24], [R25] we sent Title "CTO" (baseline said "CEO") and never heard back; the CRM applied it.
    title = field_digest(FieldKind.TEXT, "CTO")
    written = lead({"Title": "CTO"}, modstamp=at(5), last_modified_by_id=CONNECTOR_USER)
    pending = {"hash": record_hash(written, MAPPINGS), "baseline": {"job_title": title}}
    baseline, last_written = adopt_pending_write(pending, written, MAPPINGS, {"job_title": "old"}, "")
    assert baseline == {"job_title": title}
    state = SyncState(last_written_hash=last_written, baseline=baseline, last_crm_modstamp=at(1))
    assert is_echo(written, state, CONNECTOR_USER, MAPPINGS).verdict is EchoVerdict.ECHO
    # A later Loopline edit of the same field is a one-sided change, whatever the behaviour says.
    p = prospect({"job_title": "CFO"}, crm_lead_id=written.id)
    res = resolve(p, written, mapping_with("job_title", SyncBehaviour.USE_CRM), settings(), state)
    assert res.to_crm.get("Title") == "CFO" and "job_title" not in res.to_loopline


def test_a_lost_write_overtaken_by_a_crm_edit_adopts_only_the_fields_still_ours():
    # Another user changed the phone after our (applied) Title write: Title is ours, Phone a CRM change.
    title = field_digest(FieldKind.TEXT, "CTO")
    pending = {"hash": "not-this-one", "baseline": {"job_title": title, "phone": field_digest(FieldKind.TEXT, "1")}}
    r = lead({"Title": "CTO", "Phone": "2"}, modstamp=at(6), last_modified_by_id="005OTHER")
    baseline, last_written = adopt_pending_write(pending, r, MAPPINGS, {"job_title": "old", "phone": "old"}, "w")
    assert baseline == {"job_title": title, "phone": "old"} and last_written == "w"
    # A write that never landed adopts nothing.
    unapplied = lead({"Title": "CEO"}, modstamp=at(6))
    assert adopt_pending_write(pending, unapplied, MAPPINGS, {"job_title": "old"}, "")[0] == {"job_title": "old"}


def test_replayed_modstamp_is_already_seen():
    # [R25] replaying a poll window
    r = lead(modstamp=at(5))
    assert (
        is_echo(r, SyncState(last_crm_modstamp=at(5)), CONNECTOR_USER, MAPPINGS).verdict
        is EchoVerdict.ALREADY_SEEN
    )


def test_cdc_client_id_marks_our_change():
    r = lead({"Title": "CEO"}, modstamp=at(5), client_id="loopline", last_modified_by_id="005OTHER")
    state = SyncState(last_read_hash=record_hash(r, MAPPINGS))
    assert is_echo(r, state, CONNECTOR_USER, MAPPINGS).verdict is EchoVerdict.ECHO


def test_no_state_is_new():
    assert is_echo(lead(), None, CONNECTOR_USER, MAPPINGS).verdict is EchoVerdict.NEW


def test_written_hash_uses_the_validated_payload():
    # [R24] the echo carries what the CRM stored (validated/coerced), so that is what we remember
    from loopline.connector.engine.resolve import written_hash

    r = lead({"Industry": "tech"})
    sent = {"Industry": "Tech"}
    echo = lead({"Industry": "Tech"}, modstamp=at(5), last_modified_by_id=CONNECTOR_USER)
    state = SyncState(last_written_hash=written_hash(r, sent, MAPPINGS))
    assert is_echo(echo, state, CONNECTOR_USER, MAPPINGS).verdict is EchoVerdict.ECHO
