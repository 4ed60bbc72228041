from __future__ import annotations

from django.db import models


class Campaign(models.Model):
    class Status(models.TextChoices):
        PLANNED = "planned", "Planned"
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"
        ABORTED = "aborted", "Aborted"

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="campaigns")
    name = models.CharField(max_length=200)
    type = models.CharField(max_length=60, blank=True, help_text="e.g. Webinar, Email, Trade show, Paid search")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PLANNED)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    budgeted_cost = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    actual_cost = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    crm_campaign_id = models.CharField(max_length=18, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["bu", "name"], name="campaign_name_unique_per_bu")]

    def __str__(self) -> str:
        return self.name


class CampaignMember(models.Model):
    """A prospect's membership of a campaign ([M33], CRM CampaignMember [R38]). ``added_at`` is when the prospect joined:
    attribution ([M34]) orders touches by it and ignores memberships added after an opportunity closed."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="members")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="campaign_memberships")
    status = models.CharField(max_length=40, default="Sent")
    has_responded = models.BooleanField(default=False)
    first_responded_at = models.DateTimeField(null=True, blank=True)
    added_at = models.DateTimeField()
    crm_id = models.CharField(max_length=18, blank=True)
    source = models.CharField(max_length=20, default="loopline")  # loopline | crm | action | tracking

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "prospect"], name="campaign_member_unique")]
        indexes = [
            models.Index(fields=["prospect", "added_at"], name="campaign_member_prospect"),
            models.Index(fields=["bu", "campaign", "added_at"], name="campaign_member_campaign"),
        ]

    def __str__(self) -> str:
        return f"{self.prospect_id} in {self.campaign_id} ({self.status})"


class Opportunity(models.Model):
    """A read-only mirror of a CRM opportunity ([R40]). ``created_day`` and ``close_cutoff`` are derived on write so the
    set-based attribution and daily aggregates need no date arithmetic that differs between SQLite and PostgreSQL."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    crm_id = models.CharField(max_length=18)
    name = models.CharField(max_length=255, blank=True)
    amount = models.DecimalField(max_digits=18, decimal_places=2, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    stage = models.CharField(max_length=80, blank=True)
    is_closed = models.BooleanField(default=False)
    is_won = models.BooleanField(default=False)
    close_date = models.DateField(null=True, blank=True)
    crm_created_at = models.DateTimeField()
    created_day = models.DateField()
    close_cutoff = models.DateTimeField(null=True, blank=True, help_text="Start of the day after close (closed only).")
    campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                 help_text="The CRM's primary campaign source.")
    crm_campaign_id = models.CharField(max_length=18, blank=True)
    synced_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-crm_created_at", "-id"]
        verbose_name_plural = "opportunities"
        constraints = [models.UniqueConstraint(fields=["bu", "crm_id"], name="opportunity_crm_id_unique")]
        indexes = [
            models.Index(fields=["bu", "created_day"], name="opportunity_bu_created"),
            models.Index(fields=["bu", "is_won", "close_date"], name="opportunity_bu_won"),
        ]

    def __str__(self) -> str:
        return self.name or self.crm_id

    @property
    def outcome(self) -> str:
        return "won" if self.is_won else "lost" if self.is_closed else "open"


class OpportunityContactRole(models.Model):
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE, related_name="contact_roles")
    crm_id = models.CharField(max_length=18, blank=True)
    crm_contact_id = models.CharField(max_length=18)
    prospect = models.ForeignKey("prospects.Prospect", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="opportunity_roles")
    role = models.CharField(max_length=80, blank=True)
    is_primary = models.BooleanField(default=False)
    # Timeline bookkeeping: which opportunity activities this contact has already been given.
    announced_created = models.BooleanField(default=False)
    announced_outcome = models.CharField(max_length=4, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["opportunity", "crm_contact_id"], name="opp_contact_role_unique")]
        indexes = [models.Index(fields=["prospect"], name="opp_contact_role_prospect"),
                   models.Index(fields=["bu", "crm_contact_id"], name="opp_contact_role_contact")]


class AttributionModel(models.IntegerChoices):
    FIRST_TOUCH = 1, "First touch"
    LAST_TOUCH = 2, "Last touch"
    EVEN_SPLIT = 3, "Even split"


class Attribution(models.Model):
    """One campaign's share of one opportunity under one model ([M34]); campaign NULL = no qualifying touch.

    The opportunity values used (days, amount, currency) are copied here so a later change can subtract exactly what
    was added to the daily aggregates."""

    # A derived table rewritten set-based (up to millions of rows): no database foreign-key checks and no per-column
    # indexes (the two composite indexes below cover the lookups); deletes still cascade through the ORM.
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+", db_constraint=False,
                           db_index=False)
    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE, related_name="attributions",
                                    db_constraint=False, db_index=False)
    campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
                                 db_constraint=False, db_index=False)
    model = models.PositiveSmallIntegerField(choices=AttributionModel.choices)
    weight = models.FloatField()
    touched_at = models.DateTimeField(null=True, blank=True)
    # The opportunity's days when this row was computed: the aggregates it fed, to be refreshed when it changes.
    created_day = models.DateField(null=True, blank=True)
    won_day = models.DateField(null=True, blank=True)
    amount = models.DecimalField(max_digits=18, decimal_places=2, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)

    class Meta:
        indexes = [models.Index(fields=["opportunity", "model"], name="attribution_opportunity"),
                   models.Index(fields=["bu", "campaign", "model"], name="attribution_campaign")]


class AttributionDaily(models.Model):
    """Precomputed per (campaign, model, day, currency) figures for the ROI report ([M35]). ``campaign_key`` 0 means
    unattributed. Opportunities count on their created day, wins on their close day."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+", db_constraint=False,
                           db_index=False)
    campaign_key = models.BigIntegerField()
    model = models.PositiveSmallIntegerField(choices=AttributionModel.choices)
    day = models.DateField()
    currency = models.CharField(max_length=3, blank=True)
    opportunities = models.FloatField(default=0)
    pipeline = models.FloatField(default=0)
    wins = models.FloatField(default=0)
    won_amount = models.FloatField(default=0)
    missing_amounts = models.IntegerField(default=0)
    negative_amounts = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bu", "campaign_key", "model", "day", "currency"],
                                               name="attribution_daily_unique")]
        indexes = [models.Index(fields=["bu", "model", "day"], name="attribution_daily_period")]


class LifecycleStage(models.TextChoices):
    VISITOR = "visitor", "Visitors"
    PROSPECT = "prospect", "Prospects"
    MQL = "mql", "Marketing-qualified"
    SQL = "sql", "Sales-qualified"
    OPPORTUNITY = "opportunity", "Opportunities"
    WON = "won", "Won"


class DailyMetric(models.Model):
    """Counters per (day, metric, campaign) kept current by event handlers and refreshed by set-based rebuilds.

    metrics: a lifecycle stage name (count = prospects reaching it that day, seconds = summed time since the
    previous stage) and ``prospect`` rows carry the source campaign (``campaign_key``, 0 = none)."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    metric = models.CharField(max_length=20)
    campaign_key = models.BigIntegerField(default=0)
    count = models.BigIntegerField(default=0)
    seconds = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bu", "metric", "day", "campaign_key"],
                                               name="daily_metric_unique")]


class ReportSettings(models.Model):
    """Per-BU reporting settings: the marketing-qualified threshold ([M36])."""

    class Rule(models.TextChoices):
        SCORE_OR_GRADE = "or", "Score OR grade reaches the threshold"
        SCORE_AND_GRADE = "and", "Score AND grade reach the threshold"

    bu = models.OneToOneField("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="report_settings")
    mql_score = models.IntegerField(null=True, blank=True, default=100,
                                    help_text="A prospect with at least this score is marketing-qualified.")
    mql_grade = models.CharField(max_length=2, blank=True, default="",
                                 help_text="A prospect with this grade or better is marketing-qualified.")
    mql_rule = models.CharField(max_length=3, choices=Rule.choices, default=Rule.SCORE_OR_GRADE)
    default_currency = models.CharField(max_length=3, blank=True, default="")


class ScheduledReport(models.Model):
    class Report(models.TextChoices):
        DASHBOARD = "dashboard", "Dashboard"
        ROI = "roi", "Campaign ROI"
        LIFECYCLE = "lifecycle", "Lifecycle"

    class Frequency(models.TextChoices):
        DAILY = "daily", "Every day"
        WEEKLY = "weekly", "Every Monday"
        MONTHLY = "monthly", "On the 1st of each month"

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    owner = models.ForeignKey("accounts.User", on_delete=models.CASCADE, related_name="+")
    report = models.CharField(max_length=20, choices=Report.choices)
    params = models.JSONField(default=dict, blank=True)
    frequency = models.CharField(max_length=10, choices=Frequency.choices, default=Frequency.WEEKLY)
    recipients = models.TextField(help_text="Email addresses, one per line or comma separated.")
    next_run_at = models.DateTimeField()
    last_sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["report", "id"]
        indexes = [models.Index(fields=["next_run_at"], name="scheduled_report_due")]
