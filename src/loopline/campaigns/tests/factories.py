"""Small builders for reporting tests: CRM-shaped rows through the real upsert services."""

from __future__ import annotations

import datetime as dt
import itertools

from loopline.campaigns import services
from loopline.campaigns.models import Campaign
from loopline.prospects import services as prospect_services

_seq = itertools.count(1)


def crm_id(prefix: str) -> str:
    return f"{prefix}{next(_seq):015d}"[:18].ljust(18, "A")


def campaign(bu, name: str, *, cost=None, type_: str = "Webinar") -> Campaign:
    return Campaign.objects.create(bu=bu, name=name, type=type_, actual_cost=cost, crm_campaign_id=crm_id("701"))


def contact(bu, email: str, **extra):
    return prospect_services.create_prospect(bu, {"email": email}, extra={"crm_contact_id": crm_id("003"), **extra})


def member(bu, camp: Campaign, prospect, when: dt.datetime, status: str = "Responded") -> None:
    services.upsert_campaign_members(bu, [{"Id": crm_id("00v"), "CampaignId": camp.crm_campaign_id,
                                           "ContactId": prospect.crm_contact_id, "Status": status,
                                           "HasResponded": True, "FirstRespondedDate": when.isoformat(),
                                           "CreatedDate": when.isoformat()}])


def opportunity(bu, contacts, *, amount="1000", won=False, closed=None, close_date=None, created=None,
                currency="EUR", name="Deal"):
    oid = crm_id("006")
    created = created or dt.datetime(2026, 1, 10, 9, tzinfo=dt.UTC)
    services.upsert_opportunities(bu, [{
        "Id": oid, "Name": name, "Amount": amount, "CurrencyIsoCode": currency,
        "StageName": "Closed Won" if won else ("Closed Lost" if closed else "Prospecting"),
        "IsClosed": bool(won or closed), "IsWon": won, "CloseDate": close_date.isoformat() if close_date else None,
        "CreatedDate": created.isoformat()}])
    services.upsert_contact_roles(bu, [{"Id": crm_id("00K"), "OpportunityId": oid, "ContactId": c.crm_contact_id,
                                        "Role": "Decision Maker", "IsPrimary": i == 0} for i, c in enumerate(contacts)])
    from loopline.campaigns.models import Opportunity

    return Opportunity.objects.get(bu=bu, crm_id=oid)
