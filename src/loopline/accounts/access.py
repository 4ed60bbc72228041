"""The access context: who is acting, in which business unit, with which role. Passed to selectors and services."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import PermissionDenied

from .models import BusinessUnit, Membership, Role, User


@dataclass(frozen=True)
class Access:
    user: User
    bu: BusinessUnit
    role: Role

    @classmethod
    def for_membership(cls, membership: Membership) -> Access:
        return cls(user=membership.user, bu=membership.bu, role=membership.role)

    @classmethod
    def for_user(cls, user: User, bu: BusinessUnit) -> Access:
        membership = Membership.objects.select_related("role", "bu", "user").filter(user=user, bu=bu).first()
        if membership is None:
            raise PermissionDenied("Not a member of this business unit")
        return cls.for_membership(membership)

    def can(self, ability: str) -> bool:
        return ability in self.role.ability_set

    def require(self, ability: str) -> None:
        if not self.can(ability):
            raise PermissionDenied(f"Your role ({self.role.name}) does not allow {ability}")

    @property
    def sees_all_prospects(self) -> bool:
        return self.role.prospect_scope == "all"

    @property
    def is_admin(self) -> bool:
        return self.can("users.edit") and self.can("connector.edit")
