"""Tracking: per-BU tracker settings, the hit staging table, email links, custom redirects and tracked files."""

from __future__ import annotations

import re
import secrets

from django.db import models

_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def new_key() -> str:
    return secrets.token_urlsafe(12)


def is_valid_key(key: str) -> bool:
    """Public asset keys are URL-safe tokens; anything else is rejected before touching the database."""
    return bool(_KEY_RE.fullmatch(key or ""))


class TrackerConfig(models.Model):
    """One per business unit: the tracker's public key, consent rules and the site origins allowed to send hits."""

    bu = models.OneToOneField("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="tracker")
    key = models.CharField(max_length=32, unique=True, default=new_key)
    require_consent = models.BooleanField(
        default=False, help_text="Track nothing (no cookie, no page views) until the visitor opts in ([M3]).")
    show_banner = models.BooleanField(default=True, help_text="Show Loopline's built-in opt-in banner.")
    banner_text = models.CharField(
        max_length=300, blank=True,
        default="We use a cookie to understand how our site is used. Allow tracking?")
    allowed_origins = models.JSONField(
        default=list, blank=True,
        help_text="Site origins (https://www.example.com) allowed to send hits and embed forms. Empty: any.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Tracker for {self.bu_id}"


class TrackingHit(models.Model):
    """Validated, acknowledged hits (one request's worth) waiting for the ingester. Compact on purpose: one multi-row INSERT per batch.

    Rows are deleted by the ingester in the same transaction that writes their visitors and activities, so a hit is
    turned into an activity exactly once, whatever crashes in between.
    """

    bu_id = models.BigIntegerField()
    cookie = models.CharField(max_length=32)  # visitor cookie UUID, hex without dashes
    received_at = models.FloatField()  # unix time, server clock
    hits = models.PositiveSmallIntegerField(default=1)
    # JSON: {"ip", "ua", "h": [{"t": kind, "u": url, "ti": title, "r": referrer, "c": campaign, "ts": client time}]}
    payload = models.TextField()

    class Meta:
        # Only ever read in id order and deleted by id: no other index, to keep inserts cheap.
        pass


class SpoolWatermark(models.Model):
    """How far the ingester has read one spool file (see spool.py); written with the activities, atomically."""

    name = models.CharField(max_length=200, primary_key=True)
    last_id = models.BigIntegerField(default=0)


class IngestLog(models.Model):
    """Recent ingester runs (for the tracking settings page and operations)."""

    ran_at = models.DateTimeField(auto_now_add=True, db_index=True)
    hits = models.PositiveIntegerField(default=0)
    activities = models.PositiveIntegerField(default=0)
    ms = models.PositiveIntegerField(default=0)


class EmailLink(models.Model):
    """The target of one link of one email send, stored at send time: clicks redirect only here ([M6])."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    send_id = models.BigIntegerField()
    link_id = models.PositiveIntegerField()
    url = models.CharField(max_length=2000)
    is_honeypot = models.BooleanField(default=False, help_text="Hidden link only machines follow ([M7]).")
    actions = models.JSONField(default=list, blank=True, help_text="Completion actions, once per prospect ([M10]).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["send_id", "link_id"], name="email_link_unique")]


class EmailLinkActionRun(models.Model):
    """Email-link completion actions fire once per prospect per link: this row is the guard."""

    link = models.ForeignKey(EmailLink, on_delete=models.CASCADE, related_name="+")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["link", "prospect"], name="email_link_action_once")]


class CustomRedirect(models.Model):
    """A short tracked link: /r/<key> records a click and redirects to the destination with UTM parameters."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=120)
    key = models.CharField(max_length=32, unique=True, default=new_key)
    destination = models.URLField(max_length=2000)
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    utm_source = models.CharField(max_length=100, blank=True)
    utm_medium = models.CharField(max_length=100, blank=True)
    utm_campaign = models.CharField(max_length=100, blank=True)
    utm_term = models.CharField(max_length=100, blank=True)
    utm_content = models.CharField(max_length=100, blank=True)
    actions = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TrackedFile(models.Model):
    """An uploaded file served through Loopline so each download is recorded."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=120)
    key = models.CharField(max_length=32, unique=True, default=new_key)
    file = models.FileField(upload_to="tracked_files/%Y/%m/")
    filename = models.CharField(max_length=200)
    content_type = models.CharField(max_length=100, default="application/octet-stream")
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    actions = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RateWindow(models.Model):
    """Shared rate-limit counters (ratelimit.py): how much of a key's limit was claimed in one time window.

    Every server process (and host) claims from the same rows, so a limit holds across processes. Rows expire after
    two windows and are swept by a scheduled task.
    """

    bucket = models.CharField(max_length=200)  # "<limit key>|<window seconds>"
    window_no = models.BigIntegerField()  # unix time // window length
    used = models.BigIntegerField(default=0)
    expires_at = models.FloatField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bucket", "window_no"], name="tracking_ratewindow_bucket")]
