from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from .abilities import BUILTIN_ROLES
from .models import BusinessUnit, Membership, Role


def builtin_role(key: str) -> Role:
    """The row of a built-in role. Built-in roles are defined in code (abilities.BUILTIN_ROLES); the row is created
    by a migration and re-created here if it is missing (e.g. after a database flush)."""
    role = Role.objects.filter(bu__isnull=True, key=key).first()
    if role is not None:
        return role
    if key not in BUILTIN_ROLES:
        raise ValueError(f"Unknown built-in role: {key}")
    spec = BUILTIN_ROLES[key]
    try:
        with transaction.atomic():
            return Role.objects.create(bu=None, key=key, name=spec["name"], prospect_scope=spec["prospect_scope"])
    except IntegrityError:  # created concurrently
        return Role.objects.get(bu__isnull=True, key=key)


def roles_for(bu: BusinessUnit) -> QuerySet[Role]:
    return Role.objects.filter(bu__isnull=True) | Role.objects.filter(bu=bu)


def members_of(bu: BusinessUnit) -> QuerySet[Membership]:
    return Membership.objects.filter(bu=bu).select_related("user", "role").order_by("user__email")
