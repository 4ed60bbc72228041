"""CRM → Loopline ([R9], [R10], [R13], [R17], [R19], [R22], [R24], [R31])."""

from __future__ import annotations

from loopline.connector.models import CrmLink, SyncRun
from loopline.prospects.models import Prospect

from .helpers import sync


def test_new_lead_creates_a_prospect_and_links_it(connector, crm, unique):  # [R10]
    email = f"ann.{unique}@example.test"
    lead_id = crm.create("Lead", FirstName="Ann", LastName="Lee", Company="Acme", Email=email.upper(), Title="CTO")
    sync(connector)
    p = Prospect.objects.get(bu=connector.bu, email=email)
    assert (p.first_name, p.last_name, p.company, p.job_title) == ("Ann", "Lee", "Acme", "CTO")
    assert p.crm_lead_id == lead_id and p.crm_owner_id
    link = CrmLink.objects.get(connector=connector, crm_id=lead_id)
    assert link.prospect_id == p.pk and link.baseline and link.last_read_hash
    run = SyncRun.objects.filter(connector=connector, kind="pull").first()
    assert run.counters["created"] >= 1
