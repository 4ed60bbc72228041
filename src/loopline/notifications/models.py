"""In-app notifications and preferences ([M32]) and outgoing webhooks."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from loopline.platform.queues import DueRow


class Notification(models.Model):
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=40)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    url = models.CharField(max_length=500, blank=True)
    prospect = models.ForeignKey("prospects.Prospect", null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["user", "bu", "-id"], name="notif_user_bu"),
            models.Index(fields=["user", "bu", "read_at"], name="notif_user_unread"),
        ]


class Preference(models.Model):
    """One user's choices in one business unit. ``channels``: {kind: {"app": bool, "email": bool}}."""

    class Digest(models.TextChoices):
        NONE = "none", "No daily digest"
        MINE = "mine", "My prospects"
        ALL = "all", "All prospects"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    channels = models.JSONField(default=dict, blank=True)
    digest = models.CharField(max_length=10, choices=Digest.choices, default=Digest.MINE)
    last_digest_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "bu"], name="notif_pref_unique")]


class StarredProspect(models.Model):
    """A user follows a prospect: its activity alerts them even when it is not assigned to them."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "prospect"], name="notif_star_unique")]
        indexes = [models.Index(fields=["prospect"], name="notif_star_prospect")]


class WebhookEndpoint(models.Model):
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="webhooks")
    name = models.CharField(max_length=80)
    url = models.URLField(max_length=500)
    secret = models.TextField(help_text="Signing secret, encrypted at rest.")
    events = models.JSONField(default=list, blank=True)
    is_active = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WebhookDelivery(DueRow):
    class Status(models.TextChoices):
        PENDING = "pending", "Waiting"
        RETRYING = "retrying", "Will retry"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Gave up"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.UUIDField(default=uuid.uuid4)
    event = models.CharField(max_length=40)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_excerpt = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta(DueRow.Meta):
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["next_run_at"], name="notif_delivery_due"),
            models.Index(fields=["endpoint", "-id"], name="notif_delivery_endpoint"),
        ]
