"""Rows → engine inputs: prospect snapshots and link state."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from loopline.prospects.models import Prospect

from ..engine import CrmRecord, ProspectSnapshot, SyncState
from ..engine.model import Direction, FieldMapping
from ..engine.resolve import adopt_pending_write
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


QUEUE_PREFIX = "00g"  # CRM queues are Group records (ids 00G…): an owner Loopline may assign to without a user


def snapshot(p: Prospect, mappings: Iterable[FieldMapping], owner_crm_id: str | None = None, *,
             use_assignment_rule: bool = False) -> ProspectSnapshot:
    """``owner_crm_id``: the CRM user the assigned user maps to. A prospect assigned to a CRM queue ([M22]) counts as
    assigned and its record is created owned by the queue; ``use_assignment_rule``: handed to the CRM's assignment
    rule ([M22]), so its record is created with the rule on and no owner."""
    queue = p.crm_owner_id if p.crm_owner_id.lower().startswith(QUEUE_PREFIX) else ""
    return ProspectSnapshot(
        id=p.pk,
        values=prospect_values(p, mappings),
        field_changed_at=_times(p.field_changed_at),
        updated_at=p.updated_at,
        crm_lead_id=p.crm_lead_id,
        crm_contact_id=p.crm_contact_id,
        crm_account_id=p.crm_account_id,
        assigned=p.assigned_user_id is not None or bool(queue) or use_assignment_rule,
        do_not_sync=p.do_not_sync,
        crm_deleted=p.crm_deleted,
        is_deleted=p.is_deleted,
        email=p.email,
        assigned_crm_owner_id=owner_crm_id or (queue if p.assigned_user_id is None else None) or None,
        use_assignment_rule=use_assignment_rule,
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


def settle_pending_write(link: CrmLink | None, record: CrmRecord, mappings: Iterable[FieldMapping]) -> None:
    """Fold a write whose answer was lost into ``link`` (in memory) once ``record`` shows it applied
    (:func:`~..engine.resolve.adopt_pending_write`); the next save of the link persists it."""
    if link is None or not link.pending_write:
        return
    baseline, written = adopt_pending_write(link.pending_write, record, mappings, link.baseline or None,
                                            link.last_written_hash)
    link.baseline = baseline or {}
    link.last_written_hash = written


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
    if value_type not in _MEMO_TYPES:  # equal values with different texts (0.0 / -0.0), unhashables
        return field_digest(kind, value)
    return _digest(kind, value_type, value)


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
    ``crm_to_loopline_values`` / ``record_hash`` / ``agreed_baseline(crm_side=True)``, only faster (initial import):
    the mapping is planned once per mapping and object, and what a value yields is memoised per (kind, value)."""
    import hashlib

    loopline: dict[str, Any] = {}
    canonical: list[tuple[str, str]] = []
    baseline: dict[str, str] = {}
    for name, cf, kind, to_loopline, first in _plan(mappings, object_type):
        raw = values.get(cf)
        facts = _value_facts(kind, raw)
        baseline[name] = facts[2]
        if facts[0] is None:  # blank
            continue
        if first:
            canonical.append((cf, facts[1]))
        if to_loopline:
            loopline[name] = facts[3]
    canonical.sort()
    # Same text as json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).
    payload = "{" + ",".join(f"{_encode_str(k)}:{text}" for k, text in canonical) + "}"
    return loopline, hashlib.sha256(payload.encode()).hexdigest(), baseline


_plans: dict[tuple[int, str], tuple[Any, list[tuple[str, str, Any, bool, bool]]]] = {}


def _plan(mappings: Iterable[FieldMapping], object_type: str) -> list[tuple[str, str, Any, bool, bool]]:
    """(Loopline field, CRM field, kind, flows to Loopline, first use of the CRM field) per mapped field."""
    key = (id(mappings), object_type)
    cached = _plans.get(key)
    if cached is not None and cached[0] is mappings:
        return cached[1]
    plan = []
    seen: set[str] = set()
    for m in mappings:
        cf = m.crm_field(object_type)
        if cf is None:
            continue
        plan.append((m.loopline_field, cf, m.kind, m.direction is not Direction.TO_CRM, cf not in seen))
        seen.add(cf)
    if len(_plans) > 64:
        _plans.clear()
    _plans[key] = (mappings, plan)  # the mapping object is kept, so its id cannot be reused while cached
    return plan


_facts: dict[tuple[Any, type, Any], tuple[Any, str, str, Any]] = {}
_MEMO_TYPES = frozenset({str, int, bool, type(None)})


def _value_facts(kind, raw: Any) -> tuple[Any, str, str, Any]:
    """(normalised value or None when blank, its compact JSON for the record hash, its baseline digest, the value a
    new prospect gets). Memoised: a page repeats owners, companies, countries and blanks."""
    cls = raw.__class__
    if cls not in _MEMO_TYPES:  # equal values with different texts (0.0 / -0.0, Decimal 1.0 / 1.00), unhashables
        return _compute_facts(kind, raw)
    key = (kind, cls, raw)  # the type is part of the key: 1 == True as dict keys
    hit = _facts.get(key)
    if hit is None:
        hit = _compute_facts(kind, raw)
        if len(_facts) >= 50_000:
            _facts.clear()
        _facts[key] = hit
    return hit


def _compute_facts(kind, raw: Any) -> tuple[Any, str, str, Any]:
    import hashlib
    import json
    from decimal import Decimal

    from ..engine.model import FieldKind
    from ..engine.values import _jsonable

    norm = normalise(kind, raw)
    jsonable = _jsonable(norm)
    if isinstance(jsonable, str):
        compact = spaced = _encode_str(jsonable)
    else:
        compact = json.dumps(jsonable, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        spaced = json.dumps(jsonable, sort_keys=True, ensure_ascii=False)
    digest_ = hashlib.sha256(spaced.encode()).hexdigest()[:20]  # == engine.values.field_digest(kind, raw)
    value: Any = norm
    if norm is not None:
        if kind in (FieldKind.TEXT, FieldKind.EMAIL):
            value = str(norm)
        elif kind is FieldKind.ID:
            value = str(raw).strip()
        elif kind is FieldKind.INTEGER and isinstance(norm, Decimal):
            value = int(norm)
    return norm, compact, digest_, value


def _encode_str(text: str) -> str:
    """``json.dumps(text, ensure_ascii=False)`` without the encoder set-up."""
    from json.encoder import encode_basestring

    return encode_basestring(text)
