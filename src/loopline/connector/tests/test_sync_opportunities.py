"""Opportunities and contact roles pulled read-only from a real crmsandbox ([R40]): amount, stage, close date and
won/lost reach Loopline through a synced contact's role, with opportunity activities on the prospect's timeline."""

from __future__ import annotations

from decimal import Decimal

from loopline.campaigns.models import Opportunity, OpportunityContactRole
from loopline.connector.models import Watermark
from loopline.prospects.models import Activity, ActivityType, Prospect

from .helpers import sync


def _synced_contact(crm, connector, unique: str, name: str) -> tuple[str, Prospect]:
    contact_id = crm.create("Contact", LastName=name, Email=f"{name.lower()}.{unique}@example.test")
    sync(connector)
    return contact_id, Prospect.objects.get(crm_contact_id=contact_id)


def _timeline(prospect: Prospect) -> list[int]:
    return list(
        Activity.objects.filter(
            prospect=prospect,
            type__in=(
                ActivityType.OPPORTUNITY_CREATED,
                ActivityType.OPPORTUNITY_WON,
                ActivityType.OPPORTUNITY_LOST,
            ),
        )
        .order_by("id")
        .values_list("type", flat=True)
    )


def test_opportunity_of_a_synced_contact_syncs_read_only_and_reaches_the_timeline(connector, crm, bu, unique):
    contact_id, prospect = _synced_contact(crm, connector, unique, "Buyer")
    opp_id = crm.create(
        "Opportunity", Name=f"Deal {unique}", StageName="Prospecting", CloseDate="2026-12-31", Amount=12500
    )
    crm.create(
        "OpportunityContactRole",
        OpportunityId=opp_id,
        ContactId=contact_id,
        Role="Decision Maker",
        IsPrimary=True,
    )
    sync(connector)

    opp = Opportunity.objects.get(bu=bu, crm_id=opp_id)
    assert (opp.name, opp.amount, opp.stage, opp.outcome) == (
        f"Deal {unique}",
        Decimal("12500.00"),
        "Prospecting",
        "open",
    )
    assert str(opp.close_date) == "2026-12-31"
    role = OpportunityContactRole.objects.get(opportunity=opp)
    assert (role.prospect_id, role.role, role.is_primary) == (prospect.pk, "Decision Maker", True)
    assert _timeline(prospect) == [ActivityType.OPPORTUNITY_CREATED]

    crm.update("Opportunity", opp_id, StageName="Closed Won", Amount=14000)
    sync(connector)
    opp.refresh_from_db()
    assert (opp.outcome, opp.amount, opp.is_closed) == ("won", Decimal("14000.00"), True)
    assert _timeline(prospect) == [ActivityType.OPPORTUNITY_CREATED, ActivityType.OPPORTUNITY_WON]
    # Read-only: the connector never wrote to the opportunity (the CRM still has its own values).
    assert crm.get("Opportunity", opp_id)["LastModifiedById"] != connector.connector_user_id


def test_a_deal_without_a_synced_contact_is_not_mirrored_until_a_role_links_one(connector, crm, bu, unique):
    stranger = crm.create("Contact", LastName="Stranger")  # no email: never a prospect ([R10])
    opp_id = crm.create(
        "Opportunity",
        Name=f"Other deal {unique}",
        StageName="Qualification",
        CloseDate="2026-10-01",
        Amount=900,
    )
    crm.create("OpportunityContactRole", OpportunityId=opp_id, ContactId=stranger, Role="Evaluator")
    sync(connector)
    assert not Opportunity.objects.filter(bu=bu, crm_id=opp_id).exists()

    # Later a synced contact gets a role on the unchanged deal: the role brings the deal with it.
    contact_id, prospect = _synced_contact(crm, connector, unique, "Latecomer")
    role_id = crm.create(
        "OpportunityContactRole", OpportunityId=opp_id, ContactId=contact_id, Role="Influencer"
    )
    sync(connector)
    opp = Opportunity.objects.get(bu=bu, crm_id=opp_id)
    assert opp.stage == "Qualification" and opp.amount == Decimal("900.00")
    assert list(
        OpportunityContactRole.objects.filter(opportunity=opp).values_list("prospect_id", flat=True)
    ) == [prospect.pk]

    crm.update("Opportunity", opp_id, StageName="Closed Lost")
    sync(connector)
    assert _timeline(prospect) == [ActivityType.OPPORTUNITY_CREATED, ActivityType.OPPORTUNITY_LOST]

    crm.delete("OpportunityContactRole", role_id)  # the role is removed in the CRM
    sync(connector)
    assert not OpportunityContactRole.objects.filter(crm_id=role_id).exists()


def test_related_objects_ride_on_the_prospect_poll(connector, crm, bu, unique):
    # [R22]/[R27]: the three related queries share the lead/contact poll's composite call — an idle poll is 1 call.
    from loopline.connector.sync import pull
    from loopline.connector.sync.context import shared_client

    sync(connector)  # describes cached, watermarks created
    client = shared_client(connector)
    before = client.usage.calls
    pull.poll(connector)
    assert client.usage.calls - before == 1
    polled = set(Watermark.objects.filter(connector=connector).values_list("object_type", flat=True))
    assert {"Lead", "Contact", "Opportunity", "OpportunityContactRole", "CampaignMember"} <= polled
    assert Watermark.objects.filter(
        connector=connector, object_type="Opportunity", last_success_at__isnull=False, last_error=""
    ).exists()


def test_the_initial_import_brings_existing_deals_and_memberships(admin_access, crm, crm_app, bu, unique):
    # Records that exist before automatic sync sees them arrive through the explicit initial import ([R10], [R40]).
    from loopline.campaigns.models import Campaign, CampaignMember
    from loopline.connector.sync import related

    from .conftest import make_connector

    connector = make_connector(admin_access, crm, crm_app, resume=False)
    contact_id = crm.create("Contact", LastName="Existing", Email=f"existing.{unique}@example.test")
    prospect = Prospect.objects.create(
        bu=bu,
        email=f"existing.{unique}@example.test",
        crm_contact_id=contact_id,
        email_key=f"existing.{unique}@example.test",
    )
    opp_id = crm.create(
        "Opportunity", Name=f"Old deal {unique}", StageName="Closed Won", CloseDate="2026-01-15", Amount=5000
    )
    crm.create("OpportunityContactRole", OpportunityId=opp_id, ContactId=contact_id, Role="Economic Buyer")
    campaign_id = crm.create("Campaign", Name=f"Old webinar {unique}", Status="Completed")
    crm.create("CampaignMember", CampaignId=campaign_id, ContactId=contact_id, Status="Responded")

    counters = related.initial_import(connector)
    assert counters.failed == 0
    opp = Opportunity.objects.get(bu=bu, crm_id=opp_id)
    assert opp.outcome == "won" and opp.amount == Decimal("5000.00")
    assert _timeline(prospect) == [ActivityType.OPPORTUNITY_CREATED, ActivityType.OPPORTUNITY_WON]
    member = CampaignMember.objects.get(
        prospect=prospect, campaign=Campaign.objects.get(crm_campaign_id=campaign_id)
    )
    assert member.status == "Responded" and member.has_responded
    # Running it again changes nothing and duplicates nothing.
    related.initial_import(connector)
    assert OpportunityContactRole.objects.filter(opportunity=opp).count() == 1
    assert CampaignMember.objects.filter(prospect=prospect).count() == 1
    assert _timeline(prospect) == [ActivityType.OPPORTUNITY_CREATED, ActivityType.OPPORTUNITY_WON]
