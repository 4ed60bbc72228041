"""Field mapping rows ↔ the engine's mapping ([R16]–[R21])."""

from __future__ import annotations

from django.db import transaction

from .engine import FieldMapping as EngineMapping
from .engine import SyncBehaviour, default_mapping
from .engine.model import CrmObject
from .models import Connector, FieldMapping

FIXED_SETTING = {"score": "score_field", "grade": "grade_field", "campaign": "campaign_field"}


@transaction.atomic
def install_default_mapping(connector: Connector) -> None:
    """The standard mapping ([R21]); fixed score/grade/campaign rows carry the CRM field names from the settings
    (empty until the admin names them — then nothing is written for them)."""
    settings = connector.settings or {}
    rows = []
    for m in default_mapping():
        lead = m.crm_field(CrmObject.LEAD.value) or ""
        contact = m.crm_field(CrmObject.CONTACT.value) or ""
        person = m.crm_field(CrmObject.PERSON_ACCOUNT.value) or ""
        if m.loopline_field in FIXED_SETTING:
            lead = contact = settings.get(FIXED_SETTING[m.loopline_field], "")
            person = _person_field(lead)
        rows.append(FieldMapping(
            connector=connector, loopline_field=m.loopline_field, lead_field=lead, contact_field=contact,
            person_account_field=person, behaviour=m.behaviour.value, fixed=m.fixed,
        ))
    FieldMapping.objects.filter(connector=connector).delete()
    FieldMapping.objects.bulk_create(rows)
    from .outbox import clear_cache

    clear_cache()  # bulk_create sends no post_save


def _person_field(name: str) -> str:
    return name[:-3] + "__pc" if name.endswith("__c") else name


def apply_fixed_field_names(connector: Connector) -> None:
    """Point the fixed score/grade/campaign rows at the CRM field names from the settings ([R18])."""
    settings = connector.settings or {}
    for field, key in FIXED_SETTING.items():
        name = str(settings.get(key, "") or "")
        FieldMapping.objects.filter(connector=connector, loopline_field=field, fixed=True).update(
            lead_field=name, contact_field=name, person_account_field=_person_field(name)
        )


def load_mappings(connector: Connector) -> tuple[EngineMapping, ...]:
    """The connector's mapping for the engine. Rows that name no CRM field at all are left out."""
    result = []
    for row in FieldMapping.objects.filter(connector=connector).order_by("id"):
        if not (row.lead_field or row.contact_field or row.person_account_field):
            continue
        result.append(EngineMapping.from_columns(
            row.loopline_field, lead_field=row.lead_field, contact_field=row.contact_field,
            person_account_field=row.person_account_field, behaviour=SyncBehaviour(row.behaviour), fixed=row.fixed,
        ))
    return tuple(result)
