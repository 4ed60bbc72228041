from __future__ import annotations

from django.db import models


class ProspectList(models.Model):
    """A list of prospects ([M16]). Static lists change only by explicit adds/removes; dynamic lists follow their
    criteria. Any list can be used as a suppression list at send time; public lists appear in the preference center."""

    class Kind(models.TextChoices):
        STATIC = "static", "Static"
        DYNAMIC = "dynamic", "Dynamic"

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="prospect_lists")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.STATIC)
    criteria = models.JSONField(default=dict, blank=True, help_text="Rule tree of a dynamic list ([M17]).")
    is_public = models.BooleanField(default=False, help_text="Shown in the email preference center.")
    public_name = models.CharField(max_length=200, blank=True)
    public_description = models.TextField(blank=True)
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL)
    member_count = models.PositiveIntegerField(default=0, editable=False)
    refreshed_at = models.DateTimeField(null=True, blank=True, editable=False)
    is_archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["bu", "name"], name="prospect_list_name_unique_per_bu")]

    def __str__(self) -> str:
        return self.name


class ListMembership(models.Model):
    """One prospect on one list. ``opted_out`` is the per-list unsubscribe: the row stays so a dynamic refresh or an
    automation cannot silently re-add someone who left the list."""

    class Source(models.TextChoices):
        MANUAL = "manual", "Added by a user"
        IMPORT = "import", "Import"
        ACTION = "action", "Completion or automation action"
        DYNAMIC = "dynamic", "Dynamic list criteria"
        API = "api", "API"
        PREFERENCE = "preference", "Email preference center"

    prospect_list = models.ForeignKey(ProspectList, on_delete=models.CASCADE, related_name="memberships")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="list_memberships")
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.MANUAL)
    opted_out = models.BooleanField(default=False)
    opted_out_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["prospect_list", "prospect"], name="list_membership_unique"),
        ]
        indexes = [models.Index(fields=["prospect", "prospect_list"], name="list_membership_prospect_idx")]
        # (prospect_list, prospect) is served by the unique constraint's index.


class AutomationRule(models.Model):
    """A segmentation rule ([M18], runs once over the current prospects) or an automation rule ([M19], evaluates every
    prospect when resumed, then re-checks every prospect that changes). Both are created paused."""

    class Kind(models.TextChoices):
        AUTOMATION = "automation", "Automation rule"
        SEGMENTATION = "segmentation", "Segmentation rule"

    class Status(models.TextChoices):
        PAUSED = "paused", "Paused"
        ACTIVE = "active", "Active"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="automation_rules")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.AUTOMATION)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PAUSED)
    criteria = models.JSONField(default=dict, blank=True)
    actions = models.JSONField(default=list, blank=True)
    repeat = models.BooleanField(default=False, help_text="Match a prospect again after some days.")
    repeat_after_days = models.PositiveIntegerField(default=30, help_text="Days before a prospect is eligible again.")
    max_repeats = models.PositiveIntegerField(null=True, blank=True,
                                              help_text="How many times a prospect may match in all (empty: no limit).")
    job = models.ForeignKey("platform.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    matched_total = models.PositiveIntegerField(default=0, editable=False)
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    resumed_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["bu", "kind", "name"], name="automation_rule_name_unique")]
        indexes = [models.Index(fields=["bu", "kind", "status"], name="automation_rule_bu_status")]

    def __str__(self) -> str:
        return self.name


class RuleMatch(models.Model):
    """That a rule matched a prospect, how often and when last: decides match-once / repeat eligibility ([M19])."""

    rule = models.ForeignKey(AutomationRule, on_delete=models.CASCADE, related_name="matches")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="+")
    times = models.PositiveIntegerField(default=1)
    first_matched_at = models.DateTimeField()
    last_matched_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "prospect"], name="rule_match_unique")]
        indexes = [models.Index(fields=["prospect", "rule"], name="rule_match_prospect_idx")]


class RuleLog(models.Model):
    """What a rule did to whom: one row per application (the per-rule page shows them)."""

    rule = models.ForeignKey(AutomationRule, on_delete=models.CASCADE, related_name="logs")
    prospect = models.ForeignKey("prospects.Prospect", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    prospect_label = models.CharField(max_length=255, blank=True)
    at = models.DateTimeField()
    ok = models.BooleanField(default=True)
    outcomes = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["rule", "-at"], name="rule_log_rule_time")]
