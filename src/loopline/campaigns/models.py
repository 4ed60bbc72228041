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
