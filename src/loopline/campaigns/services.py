"""Campaign writes (audited)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from loopline.accounts.access import Access
from loopline.platform import audit

from .models import Campaign

_AUDITED = ("name", "type", "status", "start_date", "end_date", "budgeted_cost", "actual_cost", "parent_id")


@transaction.atomic
def save_campaign(access: Access, campaign: Campaign) -> Campaign:
    """Save a campaign built (and validated) by a form, in the acting user's BU; a parent must not form a loop."""
    access.require("campaigns.edit" if campaign.pk else "campaigns.create")
    if campaign.pk and campaign.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")
    campaign.bu = access.bu
    parent = campaign.parent
    seen = {campaign.pk}
    while parent is not None:
        if parent.bu_id != access.bu.pk:
            raise ValidationError({"parent": "The parent campaign belongs to another business unit"})
        if parent.pk in seen:
            raise ValidationError({"parent": "A campaign can't be its own ancestor"})
        seen.add(parent.pk)
        parent = parent.parent
    before = None
    if campaign.pk:
        old = Campaign.objects.get(pk=campaign.pk)
        before = {k: getattr(old, k) for k in _AUDITED}
    if Campaign.objects.filter(bu=access.bu, name__iexact=campaign.name.strip()).exclude(pk=campaign.pk).exists():
        raise ValidationError({"name": f"A campaign named {campaign.name} already exists"})
    campaign.name = campaign.name.strip()
    campaign.save()
    after = {k: getattr(campaign, k) for k in _AUDITED}
    if before is not None:
        before, after = audit.diff(before, after)
    audit.record("campaign.save", actor=access.user, bu=access.bu, obj=campaign, before=before, after=after,
                 summary=campaign.name)
    return campaign
