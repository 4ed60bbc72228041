"""Email: authored emails (templates), sends, the send ledger, consent records and the demo inbox ([M23]-[M31])."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from loopline.platform.queues import DueRow


class Email(models.Model):
    """An authored email: subject, sender, HTML (MJML or HTML) and an optional hand-written text part ([M23])."""

    class Format(models.TextChoices):
        MJML = "mjml", "MJML (responsive layout)"
        HTML = "html", "HTML"

    class Purpose(models.TextChoices):
        MARKETING = "marketing", "Marketing (needs unsubscribe and preference links)"
        OPERATIONAL = "operational", "Operational (transactional; reaches opted-out prospects)"

    class Sender(models.TextChoices):
        FIXED = "fixed", "A fixed sender"
        USER = "user", "A user"
        ASSIGNED = "assigned", "The prospect's assigned user (else the fixed sender)"

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="emails")
    name = models.CharField(max_length=200)
    purpose = models.CharField(max_length=12, choices=Purpose.choices, default=Purpose.MARKETING)
    subject = models.CharField(max_length=300)
    sender = models.CharField(max_length=10, choices=Sender.choices, default=Sender.FIXED)
    from_name = models.CharField(max_length=120, blank=True)
    from_email = models.EmailField(blank=True)
    from_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    reply_to = models.EmailField(blank=True)
    body_format = models.CharField(max_length=5, choices=Format.choices, default=Format.MJML)
    body = models.TextField(help_text="MJML or HTML with merge fields.")
    text_body = models.TextField(blank=True, help_text="Plain-text part; generated from the HTML when empty.")
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    is_archived = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["bu", "is_archived", "-updated_at"], name="email_bu_list")]

    def __str__(self) -> str:
        return self.name


class DynamicContent(models.Model):
    """A block whose HTML is chosen by a prospect field value, with a default ([M24]). Used as {{ dynamic("key") }}."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=120)
    key = models.SlugField(max_length=60)
    field = models.CharField(max_length=80, help_text="Prospect field (or custom field api name) that picks the block.")
    variations = models.JSONField(default=list, blank=True, help_text='[{"value": "...", "html": "..."}]')
    default_html = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bu", "key"], name="dynamic_content_key_unique")]

    def __str__(self) -> str:
        return self.name


class EmailSend(models.Model):
    """One sending of an email to a set of recipients. Content is frozen when the send starts."""

    class Kind(models.TextChoices):
        LIST = "list", "List email"
        ONE_TO_ONE = "one_to_one", "1:1 email"
        AUTORESPONDER = "autoresponder", "Autoresponder"
        PROGRAM = "program", "Program email"
        OPERATIONAL = "operational", "Operational email"
        TEST = "test", "Test send"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    email = models.ForeignKey(Email, on_delete=models.PROTECT, related_name="sends")
    kind = models.CharField(max_length=14, choices=Kind.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    include_list_ids = models.JSONField(default=list, blank=True)
    exclude_list_ids = models.JSONField(default=list, blank=True)
    # Program steps and autoresponders reuse one send per dedupe key; deliveries are unique per (send, prospect).
    dedupe_key = models.CharField(max_length=200, null=True, blank=True)
    source = models.CharField(max_length=40, blank=True)
    source_id = models.BigIntegerField(null=True, blank=True)
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    scheduled_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    # Frozen content (compiled once per send): subject/html/text Jinja sources, link targets, sender.
    snapshot = models.JSONField(default=dict, blank=True)
    total = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["bu", "dedupe_key"], condition=Q(dedupe_key__isnull=False),
                                    name="email_send_dedupe_key_unique"),
        ]
        indexes = [models.Index(fields=["bu", "kind", "-created_at"], name="email_send_bu_kind")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} of {self.email_id}"


class Delivery(DueRow):
    """The send ledger: one row per (send, recipient). A row is sent at most once ([M30]).

    queued --claim (lease + owner)--> committed (written BEFORE the SMTP end-of-data) --> sent | failed.
    A worker that dies before the commit leaves the row queued (its message was never completed on the wire, so it is
    safely sent again); after the commit the message counts as handed over and is never sent again.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        COMMITTED = "committed", "Handed to the mail server"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"
        CANCELLED = "cancelled", "Cancelled"

    send = models.ForeignKey(EmailSend, on_delete=models.CASCADE, related_name="deliveries")
    prospect = models.ForeignKey("prospects.Prospect", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    address = models.CharField(max_length=254, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    reason = models.CharField(max_length=300, blank=True)
    owner = models.CharField(max_length=32, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["send", "prospect"], condition=Q(prospect__isnull=False),
                                    name="delivery_once_per_send_prospect"),
        ]
        indexes = [
            models.Index(fields=["send", "status"], name="delivery_send_status"),
            models.Index(fields=["send", "next_run_at"], name="delivery_send_due"),
            models.Index(fields=["prospect", "send"], name="delivery_prospect"),
        ]


class ConsentRecord(models.Model):
    """Each opt-in / opt-out: when, how, the consent text shown and the IP ([M28])."""

    class Kind(models.TextChoices):
        OPT_IN = "opt_in", "Opt-in"
        OPT_IN_PENDING = "opt_in_pending", "Opt-in awaiting confirmation"
        CONFIRMED = "confirmed", "Double opt-in confirmed"
        OPT_OUT = "opt_out", "Opt-out"
        RESUBSCRIBE = "resubscribe", "Resubscribe"
        LIST_CHANGE = "list_change", "List subscriptions changed"

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="consent_records")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    method = models.CharField(max_length=40, help_text="form, import, api, preference_center, one_click, ...")
    consent_text = models.TextField(blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["prospect", "-created_at"], name="consent_prospect_time")]


class CapturedMessage(models.Model):
    """A message received by the demo inbox (the local SMTP catcher that `loopline run` starts)."""

    mail_from = models.CharField(max_length=300, blank=True)
    rcpt_to = models.CharField(max_length=1000, blank=True)
    subject = models.CharField(max_length=300, blank=True)
    raw = models.TextField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at", "-id"]
