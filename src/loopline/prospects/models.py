from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower

# Standard prospect fields a person can edit, import, export and map to the CRM, in display order.
STANDARD_FIELDS = (
    "email", "salutation", "first_name", "last_name", "company", "website", "job_title", "department",
    "address_one", "address_two", "city", "state", "zip", "country", "phone", "fax", "industry",
    "annual_revenue", "employees", "source", "comments", "opted_out", "do_not_email", "do_not_call",
    "starred", "reviewed",
)


class Prospect(models.Model):
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="prospects")
    # Stored lower-cased: email addresses are matched case-insensitively everywhere ([R9]).
    email = models.EmailField(max_length=254, blank=True)
    # Equal to ``email`` in unique-email BUs (enforced by a unique constraint), NULL where duplicates are allowed.
    email_key = models.CharField(max_length=254, null=True, blank=True, editable=False)

    salutation = models.CharField(max_length=20, blank=True)
    first_name = models.CharField(max_length=80, blank=True)
    last_name = models.CharField(max_length=80, blank=True)
    company = models.CharField(max_length=255, blank=True)
    website = models.CharField(max_length=255, blank=True)
    job_title = models.CharField(max_length=128, blank=True)
    department = models.CharField(max_length=80, blank=True)
    address_one = models.CharField(max_length=255, blank=True)
    address_two = models.CharField(max_length=255, blank=True)
    city = models.CharField(max_length=40, blank=True)
    state = models.CharField(max_length=80, blank=True)
    zip = models.CharField(max_length=20, blank=True)
    country = models.CharField(max_length=80, blank=True)
    phone = models.CharField(max_length=40, blank=True)
    fax = models.CharField(max_length=40, blank=True)
    industry = models.CharField(max_length=80, blank=True)
    annual_revenue = models.DecimalField(max_digits=18, decimal_places=2, null=True, blank=True)
    employees = models.PositiveIntegerField(null=True, blank=True)
    source = models.CharField(max_length=80, blank=True)
    comments = models.TextField(blank=True)

    score = models.IntegerField(default=0)
    grade = models.CharField(max_length=2, default="D")
    last_activity_at = models.DateTimeField(null=True, blank=True)

    # Lifecycle stage dates ([M36]): set once, never moved backwards (campaigns.services owns the writes).
    mql_at = models.DateTimeField(null=True, blank=True, help_text="Became marketing-qualified.")
    sql_at = models.DateTimeField(null=True, blank=True, help_text="Became sales-qualified (assigned or synced).")
    opportunity_at = models.DateTimeField(null=True, blank=True, help_text="First opportunity created.")
    won_at = models.DateTimeField(null=True, blank=True, help_text="First opportunity won.")

    # Mailability ([M26]): emails.services owns the writes.
    email_undeliverable = models.BooleanField(default=False, help_text="Hard bounce or too many soft bounces.")
    soft_bounce_count = models.PositiveSmallIntegerField(default=0)
    email_bounced_at = models.DateTimeField(null=True, blank=True)

    opted_out = models.BooleanField(default=False)
    do_not_email = models.BooleanField(default=False)
    do_not_call = models.BooleanField(default=False)
    starred = models.BooleanField(default=False)
    reviewed = models.BooleanField(default=False)

    assigned_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="assigned_prospects"
    )
    assigned_at = models.DateTimeField(null=True, blank=True)
    source_campaign = models.ForeignKey(
        "campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL, related_name="sourced_prospects"
    )

    # CRM linkage (the connector owns these).
    crm_lead_id = models.CharField(max_length=18, blank=True)
    crm_contact_id = models.CharField(max_length=18, blank=True)
    crm_account_id = models.CharField(max_length=18, blank=True)
    crm_owner_id = models.CharField(max_length=18, blank=True)
    crm_last_sync_at = models.DateTimeField(null=True, blank=True)
    do_not_sync = models.BooleanField(default=False, help_text="Never sync this prospect with the CRM ([R15]).")
    crm_deleted = models.BooleanField(default=False, help_text="Deleted in the CRM; will not be re-created ([R31]).")

    custom = models.JSONField(default=dict, blank=True)
    # Per-field change times (ISO strings), used by the connector's "most recently updated field" rule ([R16]).
    field_changed_at = models.JSONField(default=dict, blank=True, editable=False)

    is_deleted = models.BooleanField(default=False, help_text="In the recycle bin.")
    deleted_at = models.DateTimeField(null=True, blank=True)
    merged_into = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    tags: models.ManyToManyField = models.ManyToManyField("Tag", through="ProspectTag", related_name="prospects", blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["bu", "email_key"], name="prospect_unique_email_per_bu"),
        ]
        indexes = [
            models.Index(fields=["bu", "is_deleted", "-id"], name="prospect_bu_list"),
            models.Index(fields=["bu", "email"], name="prospect_bu_email"),
            models.Index(fields=["bu", "assigned_user", "is_deleted"], name="prospect_bu_assigned"),
            models.Index(fields=["bu", "crm_lead_id"], name="prospect_bu_crm_lead"),
            models.Index(fields=["bu", "crm_contact_id"], name="prospect_bu_crm_contact"),
            models.Index(fields=["bu", "last_activity_at"], name="prospect_bu_last_activity"),
            models.Index(fields=["bu", "score"], name="prospect_bu_score"),
            models.Index(Lower("last_name"), "bu", name="prospect_bu_last_name"),
            models.Index(Lower("company"), "bu", name="prospect_bu_company"),
        ]

    def __str__(self) -> str:
        return self.full_name or self.email or f"Prospect {self.pk}"

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def crm_id(self) -> str:
        return self.crm_contact_id or self.crm_lead_id

    @property
    def is_mailable(self) -> bool:
        return bool(self.email) and not (self.opted_out or self.do_not_email or self.is_deleted)


class CustomField(models.Model):
    class Type(models.TextChoices):
        TEXT = "text", "Text"
        NUMBER = "number", "Number"
        DATE = "date", "Date"
        CHECKBOX = "checkbox", "Checkbox"
        DROPDOWN = "dropdown", "Dropdown"
        MULTI_SELECT = "multiselect", "Multi-select"

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="custom_fields")
    name = models.CharField(max_length=80, help_text="Label shown to people.")
    api_name = models.SlugField(max_length=60, help_text="Used in imports, the API and merge fields.")
    type = models.CharField(max_length=20, choices=Type.choices, default=Type.TEXT)
    options = models.JSONField(default=list, blank=True, help_text="Values for dropdown and multi-select fields.")
    required = models.BooleanField(default=False)
    max_length = models.PositiveIntegerField(null=True, blank=True)
    min_value = models.DecimalField(max_digits=18, decimal_places=4, null=True, blank=True)
    max_value = models.DecimalField(max_digits=18, decimal_places=4, null=True, blank=True)
    pattern = models.CharField(max_length=200, blank=True, help_text="Regular expression the value must match.")
    default_merge_value = models.CharField(max_length=255, blank=True, help_text="Used in emails when empty.")
    crm_field = models.CharField(max_length=80, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["bu", "api_name"], name="custom_field_api_name_unique")]

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=80)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(Lower("name"), "bu", name="tag_name_unique_per_bu")]

    def __str__(self) -> str:
        return self.name


class ProspectTag(models.Model):
    prospect = models.ForeignKey(Prospect, on_delete=models.CASCADE)
    tag = models.ForeignKey(Tag, on_delete=models.CASCADE)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["prospect", "tag"], name="prospect_tag_unique")]


class Visitor(models.Model):
    """An anonymous browser, known by its first-party cookie ([M2]); may belong to a prospect ([M4])."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="visitors")
    cookie_id = models.UUIDField(default=uuid.uuid4)
    prospect = models.ForeignKey(Prospect, null=True, blank=True, on_delete=models.SET_NULL, related_name="visitors")
    ip = models.GenericIPAddressField(null=True, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL)
    page_views = models.PositiveIntegerField(default=0)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-last_seen_at"]
        constraints = [models.UniqueConstraint(fields=["bu", "cookie_id"], name="visitor_cookie_unique")]
        indexes = [models.Index(fields=["bu", "prospect", "-last_seen_at"], name="visitor_bu_prospect")]

    def __str__(self) -> str:
        return f"Visitor {self.pk}"


class ActivityType(models.IntegerChoices):
    """Activity types ([M8]). Values are stored; never renumber."""

    PAGE_VIEW = 1, "Page view"
    VISIT = 2, "Visit"
    FORM_VIEW = 3, "Form view"
    FORM_SUCCESS = 4, "Form success"
    FORM_ERROR = 5, "Form error"
    FORM_HANDLER_SUCCESS = 6, "Form handler success"
    FORM_HANDLER_ERROR = 7, "Form handler error"
    LANDING_PAGE_SUCCESS = 8, "Landing page success"
    LANDING_PAGE_ERROR = 9, "Landing page error"
    CUSTOM_REDIRECT_CLICK = 10, "Custom redirect click"
    FILE_ACCESS = 11, "File access"
    EMAIL_SENT = 12, "Email sent"
    EMAIL_OPEN = 13, "Email open"
    EMAIL_CLICK = 14, "Email click"
    EMAIL_HARD_BOUNCE = 15, "Email hard bounce"
    EMAIL_SOFT_BOUNCE = 16, "Email soft bounce"
    SPAM_COMPLAINT = 17, "Spam complaint"
    UNSUBSCRIBE = 18, "Unsubscribe"
    RESUBSCRIBE = 19, "Resubscribe"
    PREFERENCE_PAGE_VIEW = 20, "Preference page view"
    OPPORTUNITY_CREATED = 21, "Opportunity created"
    OPPORTUNITY_WON = 22, "Opportunity won"
    OPPORTUNITY_LOST = 23, "Opportunity lost"
    SITE_SEARCH = 24, "Site search"
    PROSPECT_CREATED = 25, "Prospect created"
    IMPORTED = 26, "Imported"
    MERGED = 27, "Merged"
    CRM_SYNC = 28, "CRM sync"
    NOTE = 29, "Note"


class Activity(models.Model):
    """Something a visitor or prospect did. Immutable once written; the timeline is read by (prospect, time)."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    prospect = models.ForeignKey(Prospect, null=True, blank=True, on_delete=models.CASCADE, related_name="activities")
    visitor = models.ForeignKey(Visitor, null=True, blank=True, on_delete=models.SET_NULL, related_name="activities")
    type = models.PositiveSmallIntegerField(choices=ActivityType.choices)
    occurred_at = models.DateTimeField()
    title = models.CharField(max_length=255, blank=True)
    url = models.CharField(max_length=2000, blank=True)
    asset_type = models.CharField(max_length=40, blank=True)
    asset_id = models.BigIntegerField(null=True, blank=True)
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    is_machine = models.BooleanField(default=False, help_text="Bot, scanner or privacy proxy ([M7]).")
    points = models.IntegerField(default=0)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        verbose_name_plural = "activities"
        indexes = [
            models.Index(fields=["prospect", "-occurred_at"], name="activity_prospect_time"),
            models.Index(fields=["visitor", "-occurred_at"], name="activity_visitor_time"),
            models.Index(fields=["bu", "type", "-occurred_at"], name="activity_bu_type_time"),
            models.Index(fields=["bu", "asset_type", "asset_id", "type"], name="activity_asset"),
        ]

    def __str__(self) -> str:
        return f"{self.get_type_display()} at {self.occurred_at:%Y-%m-%d %H:%M}"
