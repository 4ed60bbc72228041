from __future__ import annotations

from typing import Any

from .models import AuditLog


def record(
    action: str,
    *,
    actor=None,
    bu=None,
    obj: Any = None,
    object_type: str = "",
    object_id: str | int = "",
    summary: str = "",
    before: dict | None = None,
    after: dict | None = None,
    ip: str | None = None,
) -> AuditLog:
    """Record an admin action. Call it from services, inside the same transaction as the change."""
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or obj.pk
    return AuditLog.objects.create(
        bu=bu,
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        action=action,
        object_type=object_type,
        object_id=str(object_id or ""),
        summary=summary[:300],
        before=_jsonable(before),
        after=_jsonable(after),
        ip=ip,
    )


def diff(before: dict, after: dict) -> tuple[dict, dict]:
    """Keep only the keys whose values changed."""
    keys = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    return {k: before.get(k) for k in keys}, {k: after.get(k) for k in keys}


def _jsonable(value: dict | None) -> dict | None:
    if value is None:
        return None
    return {k: (v if isinstance(v, str | int | float | bool | list | dict | type(None)) else str(v)) for k, v in value.items()}
