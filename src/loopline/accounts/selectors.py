from __future__ import annotations

from django.db.models import QuerySet

from .models import BusinessUnit, Membership, Role


def builtin_role(key: str) -> Role:
    return Role.objects.get(bu__isnull=True, key=key)


def roles_for(bu: BusinessUnit) -> QuerySet[Role]:
    return Role.objects.filter(bu__isnull=True) | Role.objects.filter(bu=bu)


def members_of(bu: BusinessUnit) -> QuerySet[Membership]:
    return Membership.objects.filter(bu=bu).select_related("user", "role").order_by("user__email")
