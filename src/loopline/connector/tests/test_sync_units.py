"""Fast checks of the sync core's helpers (no sandbox)."""

from __future__ import annotations

from loopline.connector.engine import CrmRecord, default_mapping, record_hash
from loopline.connector.sync.snapshots import agreed_baseline, crm_side, crm_to_loopline_values


def test_fused_crm_side_equals_the_engine_functions():  # [R24] hashes must match what echo checks compare
    mappings = default_mapping(score_field="Score__c")
    for raw in (
        {"FirstName": " Ann ", "LastName": "Lee", "Email": "A@B.C", "AnnualRevenue": 1200.5,
         "NumberOfEmployees": 12.0, "HasOptedOutOfEmail": False, "Company": "[not provided]"},
        {"LastName": "Only", "Email": None, "DoNotCall": "true", "Website": "", "Score__c": 3},
    ):
        record = CrmRecord.from_api("Lead", {"Id": "00Q000000000001EAA", "SystemModstamp": "2024-01-01T00:00:00Z",
                                             "OwnerId": "005000000000001AAA", **raw})
        values, read_hash, baseline = crm_side(record.values, mappings, "Lead")
        assert values == crm_to_loopline_values(record.values, mappings, "Lead")
        assert read_hash == record_hash(record, mappings)
        assert baseline == agreed_baseline(record.values, mappings, "Lead", crm_side=True)


def test_update_columns_and_insert_rows(db, bu):
    import datetime as dt

    from loopline.platform.bulk import update_columns
    from loopline.prospects import services
    from loopline.prospects.models import Prospect

    a = services.create_prospect(bu, {"email": "a@bulk.test"})
    b = services.create_prospect(bu, {"email": "b@bulk.test"})
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert services.set_crm_fields(bu.pk, {a.pk: {"crm_lead_id": "00Q000000000001EAA", "crm_last_sync_at": when},
                                           b.pk: {"crm_owner_id": "005000000000001AAA"}}) == 2
    a.refresh_from_db()
    b.refresh_from_db()
    assert a.crm_lead_id == "00Q000000000001EAA" and a.crm_last_sync_at == when
    assert b.crm_owner_id == "005000000000001AAA" and not b.crm_lead_id
    assert update_columns(Prospect, {}, ["crm_lead_id"]) == 0
