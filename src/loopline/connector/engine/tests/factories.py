"""Small builders shared by the engine tests."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from loopline.connector.engine.model import (
    ConnectorSettings,
    CrmRecord,
    ProspectSnapshot,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LEAD_ID = "00Q000000000001AAA"
LEAD_ID_2 = "00Q000000000002AAA"
CONTACT_ID = "003000000000001AAA"
CONTACT_ID_2 = "003000000000002AAA"
ACCOUNT_ID = "001000000000001AAA"
OWNER_ID = "005000000000001AAA"
CONNECTOR_USER = "005000000000009AAA"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def prospect(
    values: Mapping[str, Any] | None = None,
    *,
    changed: Mapping[str, datetime] | None = None,
    updated_at: datetime | None = None,
    pid: int = 1,
    **kwargs: Any,
) -> ProspectSnapshot:
    base = {"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee", "score": 10, "grade": "B"}
    base.update(values or {})
    return ProspectSnapshot(pid, base, changed or {}, updated_at, **kwargs)


def lead(
    values: Mapping[str, Any] | None = None,
    *,
    modstamp: datetime | None = None,
    rid: str = LEAD_ID,
    object_type: str = "Lead",
    **kwargs: Any,
) -> CrmRecord:
    if object_type == "Lead":
        base: dict[str, Any] = {
            "Email": "ann@example.com",
            "FirstName": "Ann",
            "LastName": "Lee",
            "Company": "Acme",
        }
    elif object_type == "PersonAccount":
        base = {"PersonEmail": "ann@example.com", "FirstName": "Ann", "LastName": "Lee"}
    else:
        base = {"Email": "ann@example.com", "FirstName": "Ann", "LastName": "Lee"}
    base["OwnerId"] = OWNER_ID
    base.update(values or {})
    return CrmRecord(object_type, rid, base, modstamp or T0, **kwargs)


def contact(values: Mapping[str, Any] | None = None, *, rid: str = CONTACT_ID, **kwargs: Any) -> CrmRecord:
    return lead(values, rid=rid, object_type="Contact", **kwargs)


def settings(**kwargs: Any) -> ConnectorSettings:
    kwargs.setdefault("connector_user_id", CONNECTOR_USER)
    return ConnectorSettings(**kwargs)
