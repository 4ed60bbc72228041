"""Reads for the scoring and grading pages."""

from __future__ import annotations

from django.db.models import Count

from loopline.platform.models import Job
from loopline.prospects.models import ActivityType, Prospect

from . import grading
from .models import (
    CategoryScore,
    GradingProfile,
    ProspectGrading,
    ScoreAdjustment,
    ScoreCategory,
    ScoringRules,
)
from .scoring import DEFAULT_POINTS, SCORABLE_TYPES, effective_points


def rules_rows(bu_id: int) -> list[dict]:
    stored = ScoringRules.objects.filter(bu_id=bu_id).values_list("points", flat=True).first()
    table = effective_points(stored)
    return [{"type": t, "label": ActivityType(t).label, "points": table[t], "default": DEFAULT_POINTS.get(t, 0)}
            for t in SCORABLE_TYPES]


def latest_job(bu_id: int, kind: str) -> Job | None:
    return Job.objects.filter(bu_id=bu_id, kind=kind).order_by("-created_at", "-id").first()


def grade_distribution(bu_id: int) -> list[tuple[str, int]]:
    counts = dict(Prospect.objects.filter(bu_id=bu_id, is_deleted=False).values_list("grade").annotate(n=Count("id"))
                  .values_list("grade", "n"))
    return [(letter, counts.get(letter, 0)) for letter in reversed(grading.LETTERS)]


def categories(bu_id: int):
    return ScoreCategory.objects.filter(bu_id=bu_id).annotate(prospects=Count("scores"))


def profiles(bu_id: int):
    return GradingProfile.objects.filter(bu_id=bu_id)


def prospect_breakdown(prospect: Prospect) -> dict:
    """What makes this prospect's grade and scores: each criterion's outcome, the manual nudge, categories."""
    setting = ProspectGrading.objects.filter(prospect=prospect).select_related("profile").first()
    profile = (setting.profile if setting and setting.profile else
               GradingProfile.objects.filter(bu_id=prospect.bu_id, is_default=True).first())
    values = {f: getattr(prospect, f) for f in grading.GRADE_FIELDS} | {"custom": prospect.custom}
    rows = []
    for c in (profile.criteria if profile else []):
        outcome = grading.evaluate_criterion(c, grading.field_value(values, c.get("field", "")))
        rows.append({"criterion": c, "outcome": outcome, "value": grading.field_value(values, c.get("field", "")),
                     "weight_label": grading.WEIGHTS.get(int(c.get("weight") or 0), "")})
    return {
        "profile": profile,
        "rows": rows,
        "manual_thirds": setting.manual_thirds if setting else 0,
        "categories": CategoryScore.objects.filter(prospect=prospect).select_related("category"),
        "adjustments": ScoreAdjustment.objects.filter(prospect=prospect)[:20],
    }
