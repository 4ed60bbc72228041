"""Scoring ([M12], [M13]) and grading ([M14]) state. Prospect.score / Prospect.grade hold the results; these tables
hold the rules and what is needed to recompute them exactly."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ScoringRules(models.Model):
    """Points per activity type for one business unit. Missing types use the default table ([M12])."""

    bu = models.OneToOneField("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="scoring_rules")
    points = models.JSONField(default=dict, blank=True, help_text="{activity type number: points}")
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")


class ScoreState(models.Model):
    """The part of a prospect's score that came from activities under the rules in force. A rescore adds
    (new activity points - this) to both the score and this, so manual adjustments, imports and merges survive."""

    prospect = models.OneToOneField("prospects.Prospect", on_delete=models.CASCADE, primary_key=True,
                                    related_name="+")
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    activity_points = models.IntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["bu"], name="qual_scorestate_bu")]


class ScoreAdjustment(models.Model):
    """A score change that did not come from an activity (automation actions, a person): kept for the history."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="+")
    points = models.IntegerField()
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["prospect", "-id"], name="qual_adjust_prospect")]


class ScoreCategory(models.Model):
    """A score per category ([M13]): activity on the listed assets or pages adds its points here too."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="score_categories")
    name = models.CharField(max_length=80)
    # [{"asset_type": "form", "asset_id": 3}, ...]
    assets = models.JSONField(default=list, blank=True)
    # Page/link URLs starting with one of these count too ("https://example.com/products/widgets/").
    url_prefixes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["bu", "name"], name="qual_category_name_unique")]

    def __str__(self) -> str:
        return self.name


class CategoryScore(models.Model):
    category = models.ForeignKey(ScoreCategory, on_delete=models.CASCADE, related_name="scores")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="+")
    score = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["category", "prospect"], name="qual_category_score_unique")]
        indexes = [models.Index(fields=["prospect"], name="qual_catscore_prospect")]


class RescoreDelta(models.Model):
    """Work list of a rescore job: per prospect, how much its score moves. Rows are applied in id order, in chunks,
    and deleted as they are applied, so a crashed job resumes where it stopped."""

    job_id = models.BigIntegerField()
    prospect_id = models.BigIntegerField()
    delta = models.IntegerField()

    class Meta:
        indexes = [models.Index(fields=["job_id", "prospect_id"], name="qual_rescore_job")]


class GradingProfile(models.Model):
    """Weighted criteria ([M14]). Each criterion: {"label", "field", "op", "value", "weight"} with weight in thirds of
    a letter (1, 2 or 3)."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="grading_profiles")
    name = models.CharField(max_length=80)
    is_default = models.BooleanField(default=False)
    criteria = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-is_default", "name"]
        constraints = [models.UniqueConstraint(fields=["bu", "name"], name="qual_profile_name_unique")]

    def __str__(self) -> str:
        return self.name


class ProspectGrading(models.Model):
    """Which profile grades a prospect (none: the BU's default) and the manual thumbs up/down, in thirds."""

    prospect = models.OneToOneField("prospects.Prospect", on_delete=models.CASCADE, primary_key=True, related_name="+")
    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    profile = models.ForeignKey(GradingProfile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    manual_thirds = models.SmallIntegerField(default=0)
