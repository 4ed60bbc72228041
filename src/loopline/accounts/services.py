"""Business units, users, roles and memberships. Admin actions are audited."""

from __future__ import annotations

import datetime as dt
import secrets

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils.text import slugify

from loopline.platform import audit

from .abilities import validate_abilities
from .access import Access
from .models import ApiKey, BusinessUnit, LoginAttempt, Membership, Role, User
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


# --- API keys ---------------------------------------------------------------------------------------------------------


def _hash_key(secret: str) -> str:
    import hashlib

    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def create_api_key(access: Access, name: str) -> tuple[ApiKey, str]:
    """Returns the key row and the full key (``ll_<prefix>_<secret>``), which is never shown again."""
    name = name.strip() or "API key"
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    key = ApiKey.objects.create(user=access.user, bu=access.bu, name=name[:80], prefix=prefix,
                                key_hash=_hash_key(secret))
    audit.record("api_key.create", actor=access.user, bu=access.bu, obj=key, after={"name": key.name, "prefix": prefix})
    return key, f"ll_{prefix}_{secret}"


def revoke_api_key(access: Access, key: ApiKey) -> None:
    from django.utils import timezone

    if key.user_id != access.user.pk and not access.can("users.edit"):
        raise PermissionDenied("You can only revoke your own keys")
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    audit.record("api_key.revoke", actor=access.user, bu=access.bu, obj=key, before={"prefix": key.prefix})


def authenticate_api_key(raw: str) -> Access | None:
    """The access context of a valid, unrevoked key whose user is still an active member of the key's BU."""
    import hmac

    from django.utils import timezone

    parts = raw.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != "ll":
        return None
    key = ApiKey.objects.select_related("user", "bu").filter(prefix=parts[1], revoked_at__isnull=True).first()
    if key is None or not hmac.compare_digest(key.key_hash, _hash_key(parts[2])) or not key.user.is_active:
        return None
    membership = Membership.objects.select_related("role", "bu", "user").filter(user=key.user, bu=key.bu).first()
    if membership is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return Access.for_membership(membership)


# --- Sign-in throttling ----------------------------------------------------------------------------------------------


def _login_window_start():
    from django.conf import settings
    from django.utils import timezone

    return timezone.now() - dt.timedelta(seconds=settings.LOGIN_LOCKOUT_SECONDS)


def check_login_allowed(email: str, ip: str | None) -> bool:
    """False once LOGIN_MAX_FAILURES failed attempts were made for this email, or LOGIN_MAX_FAILURES_PER_IP from this
    IP (higher: an office shares one address), inside the window.

    The answer never depends on whether an account exists, so a lockout reveals nothing.
    """
    from django.conf import settings

    recent = LoginAttempt.objects.filter(kind=LoginAttempt.Kind.FAILED_LOGIN, created_at__gte=_login_window_start())
    email = (email or "").strip().lower()
    if email and recent.filter(email=email).count() >= settings.LOGIN_MAX_FAILURES:
        return False
    return not (ip and recent.filter(ip=ip).count() >= settings.LOGIN_MAX_FAILURES_PER_IP)


def record_failed_login(email: str, ip: str | None) -> None:
    LoginAttempt.objects.create(email=(email or "").strip().lower()[:254], ip=ip or None)
    # Keep the table small: attempts older than the window no longer count.
    LoginAttempt.objects.filter(created_at__lt=_login_window_start()).delete()


def clear_failed_logins(email: str, ip: str | None = None) -> None:
    """After a successful sign-in, forget that email's failures (and that IP's failures for the email)."""
    LoginAttempt.objects.filter(kind=LoginAttempt.Kind.FAILED_LOGIN, email=(email or "").strip().lower()).delete()


def allow_password_reset(email: str, ip: str | None) -> bool:
    """Count a password-reset request; False when this email or IP asked too often in the last hour.

    A refused request still shows the usual "check your inbox" page, so throttling reveals nothing; it only stops
    someone from flooding a person's inbox (or our mail reputation) with reset emails.
    """
    from django.conf import settings
    from django.utils import timezone

    since = timezone.now() - dt.timedelta(hours=1)
    email = (email or "").strip().lower()[:254]
    recent = LoginAttempt.objects.filter(kind=LoginAttempt.Kind.PASSWORD_RESET, created_at__gte=since)
    allowed = recent.filter(email=email).count() < settings.PASSWORD_RESET_MAX_PER_EMAIL and not (
        ip and recent.filter(ip=ip).count() >= settings.PASSWORD_RESET_MAX_PER_IP
    )
    LoginAttempt.objects.create(kind=LoginAttempt.Kind.PASSWORD_RESET, email=email, ip=ip or None)
    LoginAttempt.objects.filter(kind=LoginAttempt.Kind.PASSWORD_RESET, created_at__lt=since).delete()
    return allowed


# --- Business-unit switching and member administration (called by the UI) ------------------------------------------


@transaction.atomic
def switch_business_unit(user: User, bu_id: int | str, *, ip: str | None = None) -> Membership:
    """The user's membership in that BU, audited; PermissionDenied when they are not a member (or no such BU)."""
    try:
        pk = int(bu_id)
    except (TypeError, ValueError):
        raise PermissionDenied("Not a member of this business unit") from None
    membership = Membership.objects.select_related("bu", "role").filter(user=user, bu_id=pk).first()
    if membership is None:
        raise PermissionDenied("Not a member of this business unit")
    audit.record("bu.switch", actor=user, bu=membership.bu, obj=membership.bu, ip=ip,
                 summary=f"{user.email} switched to {membership.bu.name}")
    return membership


@transaction.atomic
def invite_user(access: Access, email: str, role: Role, *, first_name: str = "", last_name: str = "",
                password: str | None = None) -> tuple[User, str | None]:
    """Add a person to the acting admin's BU with a role. Creates the user when new.

    Returns the user and the generated password for a new user (shown once), or None for an existing user.
    """
    access.require("users.create")
    email = (email or "").strip().lower()
    if not email:
        raise ValidationError("An email address is required")
    user = User.objects.filter(email=email).first()
    generated = None
    if user is None:
        generated = password or generate_password()
        user = create_user(email, password=generated, first_name=first_name.strip(), last_name=last_name.strip(),
                           actor=access.user, bu=access.bu)
    elif Membership.objects.filter(bu=access.bu, user=user).exists():
        raise ValidationError(f"{email} is already a member of {access.bu.name}")
    set_membership(access.bu, user, role, actor=access.user)
    return user, generated


@transaction.atomic
def change_member_role(access: Access, membership: Membership, role: Role) -> Membership:
    access.require("users.edit")
    if membership.bu_id != access.bu.pk:
        raise PermissionDenied("Not in your business unit")
    if membership.role.key == "administrator" and role.key != "administrator":
        admins = Membership.objects.filter(bu=access.bu, role__key="administrator", role__bu__isnull=True)
        if admins.count() <= 1:
            raise ValidationError("A business unit keeps at least one administrator")
    return set_membership(access.bu, membership.user, role, actor=access.user)
