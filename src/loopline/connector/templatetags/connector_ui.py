"""Template helpers for connector bits shown on other apps' pages (the prospect page's CRM card)."""

from __future__ import annotations

from django import template

from ..models import Connector

register = template.Library()


@register.filter
def has_crm_connector(bu) -> bool:
    """Whether the business unit has a CRM connector set up (the CRM buttons make sense only then)."""
    return Connector.objects.filter(bu_id=getattr(bu, "pk", bu)).exclude(consumer_key="").exists()
