"""Rows → engine inputs: prospect snapshots and link state."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from loopline.prospects.models import Prospect

from ..engine import ProspectSnapshot, SyncState
from ..engine.model import Direction, FieldMapping
from ..engine.values import field_digest, normalise, to_loopline_value
from ..models import CrmLink, CrmUser

#: Loopline "fields" of the mapping that are not prospect form fields: written through ``extra=``.
SYSTEM_FIELDS = frozenset({"crm_owner_id"})


def prospect_values(p: Prospect, mappings: Iterable[FieldMapping]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for m in mappings:
        name = m.loopline_field
        if name.startswith("custom."):
            values[name] = (p.custom or {}).get(name.removeprefix("custom."))
        elif name == "campaign":
            campaign = p.source_campaign if p.source_campaign_id else None
            values[name] = campaign.name if campaign is not None else None
        elif hasattr(p, name):
            values[name] = getattr(p, name)
    values.setdefault("email", p.email)
    return values


def _times(raw: Mapping[str, str] | None) -> dict[str, dt.datetime]:
    out = {}
    for key, value in (raw or {}).items():
        try:
            out[key] = dt.datetime.fromisoformat(value)
        except (TypeError, ValueError):
            continue
    return out


def snapshot(p: Prospect, mappings: Iterable[FieldMapping], owner_crm_id: str | None = None) -> ProspectSnapshot:
    return ProspectSnapshot(
        id=p.pk,
        values=prospect_values(p, mappings),
        field_changed_at=_times(p.field_changed_at),
        updated_at=p.updated_at,
        crm_lead_id=p.crm_lead_id,
        crm_contact_id=p.crm_contact_id,
        crm_account_id=p.crm_account_id,
        assigned=p.assigned_user_id is not None,
        do_not_sync=p.do_not_sync,
        crm_deleted=p.crm_deleted,
        is_deleted=p.is_deleted,
        email=p.email,
        assigned_crm_owner_id=owner_crm_id,
    )


def owner_ids(connector_id: int, prospects: Iterable[Prospect]) -> dict[int, str]:
    """Loopline user id → CRM user id (User Sync mapping, [R11])."""
    users = {p.assigned_user_id for p in prospects if p.assigned_user_id}
    if not users:
        return {}
    return dict(CrmUser.objects.filter(connector_id=connector_id, user_id__in=users, is_active=True)
                .values_list("user_id", "crm_id"))


def state_of(link: CrmLink | None) -> SyncState | None:
    if link is None:
        return None
    return SyncState(last_written_hash=link.last_written_hash, last_read_hash=link.last_read_hash,
                     last_crm_modstamp=link.last_crm_modstamp, last_synced_at=link.last_synced_at,
                     baseline=link.baseline if link.baseline else None)


def split_writes(to_loopline: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Form data (validated by the prospect services) vs system fields (``extra=``)."""
    data: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in to_loopline.items():
        (extra if key in SYSTEM_FIELDS else data)[key] = value
    return data, extra


def crm_to_loopline_values(values: Mapping[str, Any], mappings: Iterable[FieldMapping], object_type: str
                           ) -> dict[str, Any]:
    """Initial Loopline values for a prospect created from a CRM record ([R10]): every field that may flow to
    Loopline and is not blank."""
    out: dict[str, Any] = {}
    for m in mappings:
        cf = m.crm_field(object_type)
        if cf is None or m.direction is Direction.TO_CRM:
            continue
        if normalise(m.kind, values.get(cf)) is None:
            continue
        out[m.loopline_field] = to_loopline_value(m.kind, values.get(cf))
    return out


@functools.lru_cache(maxsize=65536)
def _digest(kind, value_type, value) -> str:  # the type is part of the key: 1 == 1.0 == True as dict keys
    return field_digest(kind, value)


def digest(kind, value: Any) -> str:
    value_type: type = type(value)  # plain ``type``: mypy does not see ``type[Any]`` as Hashable
    try:
        return _digest(kind, value_type, value)
    except TypeError:  # unhashable
        return field_digest(kind, value)


def agreed_baseline(values: Mapping[str, Any], mappings: Iterable[FieldMapping], object_type: str,
                    *, crm_side: bool) -> dict[str, str]:
    """Baseline digests when both sides hold the same values (right after a create on either side)."""
    out = {}
    for m in mappings:
        cf = m.crm_field(object_type)
        if cf is None:
            continue
        out[m.loopline_field] = digest(m.kind, values.get(cf if crm_side else m.loopline_field))
    return out


def crm_side(values: Mapping[str, Any], mappings: Iterable[FieldMapping], object_type: str
             ) -> tuple[dict[str, Any], str, dict[str, str]]:
    """For a record read from the CRM, in one pass over the mapping (each value normalised once): the Loopline values
    of a new prospect ([R10]), the record hash (``engine.record_hash``) and the agreed baseline. Equal to
    ``crm_to_loopline_values`` / ``record_hash`` / ``agreed_baseline(crm_side=True)``, only faster (initial import)."""
    import hashlib
    import json
    from decimal import Decimal

    from ..engine.model import FieldKind
    from ..engine.values import _jsonable

    loopline: dict[str, Any] = {}
    canonical: dict[str, Any] = {}
    seen: set[str] = set()
    baseline: dict[str, str] = {}
    for m in mappings:
        cf = m.crm_field(object_type)
        if cf is None:
            continue
        raw = values.get(cf)
        norm = normalise(m.kind, raw)
        jsonable = _jsonable(norm)
        baseline[m.loopline_field] = _digest_json(json.dumps(jsonable, sort_keys=True, ensure_ascii=False))
        if cf not in seen:
            seen.add(cf)
            if norm is not None:
                canonical[cf] = jsonable
        if norm is None or m.direction is Direction.TO_CRM:
            continue
        if m.kind in (FieldKind.TEXT, FieldKind.EMAIL):
            loopline[m.loopline_field] = str(norm)
        elif m.kind is FieldKind.ID:
            loopline[m.loopline_field] = str(raw).strip()
        elif m.kind is FieldKind.INTEGER and isinstance(norm, Decimal):
            loopline[m.loopline_field] = int(norm)
        else:
            loopline[m.loopline_field] = norm
    payload = json.dumps(dict(sorted(canonical.items())), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return loopline, hashlib.sha256(payload.encode()).hexdigest(), baseline


@functools.lru_cache(maxsize=65536)
def _digest_json(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:20]
