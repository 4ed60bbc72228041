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
