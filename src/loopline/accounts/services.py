"""Business units, users, roles and memberships. Admin actions are audited."""

from __future__ import annotations

import secrets

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils.text import slugify

from loopline.platform import audit

from .abilities import validate_abilities
from .access import Access
from .models import BusinessUnit, Membership, Role, User
from .selectors import builtin_role


@transaction.atomic
def create_business_unit(name: str, *, slug: str = "", actor: User | None = None, **fields) -> BusinessUnit:
    name = name.strip()
    if not name:
        raise ValidationError("A business unit needs a name")
    base = slugify(slug or name)[:50] or "bu"
    candidate, n = base, 1
    while BusinessUnit.objects.filter(slug=candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    bu = BusinessUnit.objects.create(name=name, slug=candidate, **fields)
    audit.record("bu.create", actor=actor, bu=bu, obj=bu, after={"name": name, "slug": candidate})
    return bu


def generate_password() -> str:
    return secrets.token_urlsafe(12)


@transaction.atomic
def create_user(email: str, *, password: str | None = None, first_name: str = "", last_name: str = "",
                actor: User | None = None, bu: BusinessUnit | None = None) -> User:
    email = email.strip().lower()
    if User.objects.filter(email=email).exists():
        raise ValidationError(f"A user with the email {email} already exists")
    user = User.objects.create_user(email, password, first_name=first_name, last_name=last_name)
    audit.record("user.create", actor=actor, bu=bu, obj=user, after={"email": email})
    return user


@transaction.atomic
def set_membership(bu: BusinessUnit, user: User, role: Role | str, *, actor: User | None = None) -> Membership:
    """Add the user to the BU with a role, or change their role there."""
    if isinstance(role, str):
        role = builtin_role(role)
    if role.bu_id not in (None, bu.pk):
        raise ValidationError("That role belongs to another business unit")
    membership = Membership.objects.filter(bu=bu, user=user).first()
    before = {"role": membership.role.name} if membership else None
    if membership is None:
        membership = Membership.objects.create(bu=bu, user=user, role=role)
    elif membership.role_id != role.pk:
        membership.role = role
        membership.save(update_fields=["role"])
    audit.record("membership.set", actor=actor, bu=bu, obj=membership, before=before,
                 after={"user": user.email, "role": role.name}, summary=f"{user.email} is {role.name}")
    return membership


@transaction.atomic
def remove_membership(access: Access, membership: Membership) -> None:
    access.require("users.delete")
    if membership.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")
    admins = Membership.objects.filter(bu=access.bu, role__key="administrator")
    if membership.role.key == "administrator" and admins.count() <= 1:
        raise ValidationError("A business unit keeps at least one administrator")
    audit.record("membership.remove", actor=access.user, bu=access.bu, obj=membership,
                 before={"user": membership.user.email, "role": membership.role.name})
    membership.delete()


@transaction.atomic
def save_custom_role(access: Access, name: str, abilities: list[str], prospect_scope: str = "all",
                     role: Role | None = None) -> Role:
    access.require("users.edit")
    try:
        clean = validate_abilities(abilities)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if prospect_scope not in ("all", "assigned"):
        raise ValidationError("Prospect scope must be 'all' or 'assigned'")
    if role is not None and role.bu_id != access.bu.pk:
        raise PermissionDenied("Built-in roles cannot be changed")
    before = {"name": role.name, "abilities": role.abilities, "scope": role.prospect_scope} if role else None
    role = role or Role(bu=access.bu)
    role.name, role.abilities, role.prospect_scope = name.strip(), clean, prospect_scope
    if not role.name:
        raise ValidationError("A role needs a name")
    if Role.objects.filter(bu=access.bu, name__iexact=role.name).exclude(pk=role.pk).exists():
        raise ValidationError(f"A role named {role.name} already exists")
    role.save()
    audit.record("role.save", actor=access.user, bu=access.bu, obj=role, before=before,
                 after={"name": role.name, "abilities": clean, "scope": prospect_scope})
    return role
