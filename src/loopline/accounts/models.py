from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.utils import timezone

from .abilities import BUILTIN_ROLES


class BusinessUnit(models.Model):
    """A fully isolated marketing account: its own prospects, assets, settings and connector."""

    class MatchingMode(models.TextChoices):
        UNIQUE_EMAIL = "unique_email", "Unique email"
        CRM_ID = "crm_id", "CRM id (allow multiple prospects with the same email)"

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True)
    allow_duplicate_emails = models.BooleanField(
        default=False, help_text="Allow several prospects with the same email (CRM id matching)."
    )
    postal_address = models.TextField(blank=True, help_text="Printed in every marketing email.")
    website = models.URLField(blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    settings = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def matching_mode(self) -> str:
        return self.MatchingMode.CRM_ID if self.allow_duplicate_emails else self.MatchingMode.UNIQUE_EMAIL


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra) -> User:
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    first_name = models.CharField(max_length=80, blank=True)
    last_name = models.CharField(max_length=80, blank=True)
    is_active = models.BooleanField(default=True)  # type: ignore[misc]  # a real column, not the base class flag
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    crm_user_id = models.CharField(max_length=18, blank=True, db_index=True)
    preferences = models.JSONField(default=dict, blank=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []  # type: ignore[misc]

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.get_full_name() or self.email

    def get_full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def get_short_name(self) -> str:
        return self.first_name or self.email


class Role(models.Model):
    """A built-in role (bu is null, key set) or a BU's custom role built from abilities."""

    bu = models.ForeignKey(BusinessUnit, null=True, blank=True, on_delete=models.CASCADE, related_name="roles")
    key = models.CharField(max_length=40, blank=True, help_text="Built-in role key; empty for custom roles.")
    name = models.CharField(max_length=80)
    abilities = models.JSONField(default=list)
    prospect_scope = models.CharField(
        max_length=10, choices=[("all", "All prospects"), ("assigned", "Only prospects assigned to the user")],
        default="all",
    )

    class Meta:
        ordering = ["bu_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["key"], condition=models.Q(bu__isnull=True), name="role_builtin_key_unique"),
            models.UniqueConstraint(fields=["bu", "name"], name="role_bu_name_unique"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_builtin(self) -> bool:
        return self.bu_id is None

    @property
    def ability_set(self) -> frozenset[str]:
        if self.key in BUILTIN_ROLES:
            return BUILTIN_ROLES[self.key]["abilities"]
        return frozenset(self.abilities)


class Membership(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    bu = models.ForeignKey(BusinessUnit, on_delete=models.CASCADE, related_name="memberships")
    role = models.ForeignKey(Role, on_delete=models.PROTECT, related_name="memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "bu"], name="membership_user_bu_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.bu} as {self.role}"

    def can(self, ability: str) -> bool:
        return ability in self.role.ability_set


class LoginAttempt(models.Model):
    """Failed logins (and password-reset requests) per (email, ip), for throttling."""

    class Kind(models.TextChoices):
        FAILED_LOGIN = "login", "Failed sign-in"
        PASSWORD_RESET = "reset", "Password reset request"

    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.FAILED_LOGIN)
    email = models.CharField(max_length=254, db_index=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)


class ApiKey(models.Model):
    """A user's API credential for one BU. Only a hash is stored; the key is shown once at creation."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    bu = models.ForeignKey(BusinessUnit, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=12, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
