"""Scoring ([M12], [M13], [M15]) and grading ([M14]) use cases.

Scoring is incremental: each human activity adds its points (from the BU's rules) to the prospect's score, to its
``ScoreState.activity_points`` and to the matching category scores. A rules change starts a background rescore that
moves each score by (activity points under the new rules - ``activity_points``): set-based SQL, in chunks, resumable.
Manual adjustments (actions, people) are not activity points, so they survive every rescore. There is no hidden decay
([M15]): decay is an automation rule with a negative "adjust score" action.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F

from loopline.platform import audit, events
from loopline.platform import tasks as platform_tasks
from loopline.platform.models import Job
from loopline.prospects.models import Activity, Prospect

from . import grading
from .models import (
    CategoryScore,
    GradingProfile,
    ProspectGrading,
    RescoreDelta,
    ScoreAdjustment,
    ScoreCategory,
    ScoreState,
    ScoringRules,
)
from .scoring import MAX_POINTS, SCORABLE_TYPES, effective_points

logger = logging.getLogger("loopline.qualification")

RESCORE_JOB = "rescore"
REGRADE_JOB = "regrade"
CHUNK = 5000
RESCORE_CHUNK = 10000


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


# --- Rules -------------------------------------------------------------------------------------------------------------


def points_table(bu_id: int) -> dict[int, int]:
    stored = ScoringRules.objects.filter(bu_id=bu_id).values_list("points", flat=True).first()
    return effective_points(stored)


def clean_points(raw: Mapping[Any, Any]) -> dict[int, int]:
    """Validate a {type: points} mapping from a form; raises ValidationError naming the bad row."""
    from loopline.prospects.models import ActivityType

    cleaned: dict[int, int] = {}
    errors = []
    for t in SCORABLE_TYPES:
        value = raw.get(t, raw.get(str(t)))
        if value in (None, ""):
            errors.append(f"{ActivityType(t).label}: enter a number of points (0 for none)")
            continue
        try:
            points = int(str(value).strip())
        except ValueError:
            errors.append(f"{ActivityType(t).label}: '{str(value)[:20]}' is not a whole number")
            continue
        if abs(points) > MAX_POINTS:
            errors.append(f"{ActivityType(t).label}: points must be between -{MAX_POINTS} and {MAX_POINTS}")
            continue
        cleaned[t] = points
    if errors:
        raise ValidationError(errors)
    return cleaned


@transaction.atomic
def save_rules(bu, points: Mapping[int, int], *, actor=None) -> Job | None:
    """Store the BU's points table; if anything changed, rescore every prospect in the background ([M12])."""
    rules, _ = ScoringRules.objects.select_for_update().get_or_create(bu=bu)
    before = effective_points(rules.points)
    after = effective_points({str(k): v for k, v in points.items()})
    if before == after:
        return None
    rules.points = {str(k): v for k, v in after.items()}
    rules.version += 1
    rules.updated_by = actor if getattr(actor, "is_authenticated", False) else None
    rules.save()
    audit.record("scoring.rules_changed", actor=actor, bu=bu, obj=rules, summary="Scoring rules changed",
                 before={str(t): before[t] for t in after if before[t] != after[t]},
                 after={str(t): after[t] for t in after if before[t] != after[t]})
    return start_rescore(bu, actor=actor)


def reset_rules(bu, *, actor=None) -> Job | None:
    return save_rules(bu, effective_points({}), actor=actor)


# --- Incremental scoring -----------------------------------------------------------------------------------------------


def _upsert_state(bu_id: int, prospect_id: int, points: int) -> None:
    with connection.cursor() as cur:
        t = _table(ScoreState)
        cur.execute(
            f"INSERT INTO {t} (prospect_id, bu_id, activity_points) VALUES (%s, %s, %s) "
            f"ON CONFLICT (prospect_id) DO UPDATE SET activity_points = {t}.activity_points + excluded.activity_points",
            [prospect_id, bu_id, points],
        )


def _upsert_category(category_id: int, prospect_id: int, points: int) -> None:
    with connection.cursor() as cur:
        t = _table(CategoryScore)
        cur.execute(
            f"INSERT INTO {t} (category_id, prospect_id, score) VALUES (%s, %s, %s) "
            f"ON CONFLICT (category_id, prospect_id) DO UPDATE SET score = {t}.score + excluded.score",
            [category_id, prospect_id, points],
        )


def category_matches(category: ScoreCategory, asset_type: str, asset_id: int | None, url: str) -> bool:
    for asset in category.assets or []:
        if asset_type and asset.get("asset_type") == asset_type and asset_id is not None \
                and int(asset.get("asset_id") or 0) == asset_id:
            return True
    return bool(url) and any(url.startswith(prefix) for prefix in category.url_prefixes or [] if prefix)


def on_activity_recorded(event: events.ActivityRecorded) -> None:
    """Score one activity as it arrives. Machine events score nothing ([M7])."""
    if event.prospect_id is None:
        return
    row = Activity.objects.filter(pk=event.activity_id).values("points", "asset_type", "asset_id", "url").first()
    if row is None:
        return
    points = 0 if event.is_machine else points_table(event.bu_id).get(int(event.type), 0)
    given = row["points"] or 0
    if points != given:
        Activity.objects.filter(pk=event.activity_id).update(points=points)
    if points:
        _upsert_state(event.bu_id, event.prospect_id, points)
        for category in ScoreCategory.objects.filter(bu_id=event.bu_id).only("id", "assets", "url_prefixes"):
            if category_matches(category, row["asset_type"], row["asset_id"], row["url"]):
                _upsert_category(category.pk, event.prospect_id, points)
    if points != given:
        Prospect.objects.filter(pk=event.prospect_id).update(score=F("score") + (points - given))
        events.publish(events.ProspectChanged(bu_id=event.bu_id, prospect_id=event.prospect_id,
                                              changed_fields=frozenset({"score"}), source="system"))


def apply_score_delta(bu, prospect_id: int, points: int, reason: str = "") -> bool:
    """Add ``points`` (may be negative) to a prospect's score: actions, people, decay rules ([M12], [M15]).
    Returns False if the prospect is not in this BU."""
    return _add_score(bu, prospect_id, points, reason) is not None


def _add_score(bu, prospect_id: int, points: int, reason: str) -> int | None:
    """The score change, its history row and the event; returns the new score (None: not a prospect of this BU).
    UPDATE ... RETURNING reads the new score in the same statement (rules run this on every match)."""
    points = int(points)
    table = _table(Prospect)
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET score = score + %s WHERE id = %s AND bu_id = %s RETURNING score",
                       [points, prospect_id, bu.pk])
        row = cursor.fetchone()
        if row is None:
            return None
        ScoreAdjustment.objects.create(bu_id=bu.pk, prospect_id=prospect_id, points=points, reason=reason[:200])
        events.publish(events.ProspectChanged(bu_id=bu.pk, prospect_id=prospect_id,
                                              changed_fields=frozenset({"score"}), source="system"))
    return int(row[0])


def on_prospects_merged(event: events.ProspectsMerged) -> None:
    """The survivor takes the loser's score (prospects.services adds it) and so its activity points and categories."""
    loser = ScoreState.objects.filter(pk=event.loser_id).values_list("activity_points", flat=True).first()
    if loser:
        _upsert_state(event.bu_id, event.survivor_id, loser)
    ScoreState.objects.filter(pk=event.loser_id).delete()
    for category_id, score in CategoryScore.objects.filter(prospect_id=event.loser_id).values_list("category_id",
                                                                                                   "score"):
        _upsert_category(category_id, event.survivor_id, score)
    CategoryScore.objects.filter(prospect_id=event.loser_id).delete()


# --- Retroactive rescoring ---------------------------------------------------------------------------------------------


def start_rescore(bu, *, actor=None) -> Job:
    """Queue a rescore of every prospect of the BU (one waiting job at most: it reads the rules when it starts)."""
    waiting = Job.objects.filter(bu=bu, kind=RESCORE_JOB, status=Job.Status.QUEUED).first()
    if waiting is not None:
        return waiting
    job = platform_tasks.create_job(bu, RESCORE_JOB, title="Rescoring all prospects", created_by=actor)
    from . import tasks

    platform_tasks.enqueue_on_commit(tasks.rescore, job_id=job.pk)
    return job


def _case_sql(table: Mapping[int, int]) -> tuple[str, list[int]]:
    parts, params = [], []
    for t, p in sorted(table.items()):
        if p:
            parts.append("WHEN %s THEN %s")
            params += [t, p]
    if not parts:
        return "0", []
    return "CASE a.type " + " ".join(parts) + " ELSE 0 END", params


def compute_rescore_deltas(job_id: int, bu_id: int) -> int:
    """Phase 1: one set-based statement writes (prospect, delta) for every prospect whose score must move."""
    table = points_table(bu_id)
    scoring = {t: p for t, p in table.items() if p}
    case, case_params = _case_sql(scoring)
    type_list = ", ".join(["%s"] * len(scoring)) or "NULL"
    sql = (
        f"INSERT INTO {_table(RescoreDelta)} (job_id, prospect_id, delta) "
        f"SELECT %s, pid, SUM(pts) FROM ("
        f" SELECT a.prospect_id AS pid, {case} AS pts FROM {_table(Activity)} a"
        f" WHERE a.bu_id = %s AND a.prospect_id IS NOT NULL AND a.is_machine = %s AND a.type IN ({type_list})"
        f" UNION ALL"
        f" SELECT s.prospect_id AS pid, -s.activity_points AS pts FROM {_table(ScoreState)} s WHERE s.bu_id = %s"
        # Ordered by prospect so each chunk of phase 2 touches one contiguous range of the prospect table.
        f") x GROUP BY pid HAVING SUM(pts) <> 0 ORDER BY pid"
    )
    params: list[Any] = [job_id, *case_params, bu_id, False, *scoring.keys(), bu_id]
    with connection.cursor() as cur:
        cur.execute(sql, params)
    return RescoreDelta.objects.filter(job_id=job_id).count()


def apply_rescore_chunk(job_id: int, bu_id: int, limit: int = RESCORE_CHUNK) -> int:
    """Phase 2: move a chunk of scores and activity points by their deltas, in one transaction. Returns rows done."""
    with transaction.atomic():
        ids = list(RescoreDelta.objects.filter(job_id=job_id).order_by("id").values_list("id", flat=True)[:limit])
        if not ids:
            return 0
        lo, hi = ids[0], ids[-1]
        d, p, s = _table(RescoreDelta), _table(Prospect), _table(ScoreState)
        with connection.cursor() as cur:
            cur.execute(
                f"UPDATE {p} SET score = {p}.score + d.delta FROM {d} d "
                f"WHERE d.job_id = %s AND d.id BETWEEN %s AND %s AND {p}.id = d.prospect_id",
                [job_id, lo, hi],
            )
            # Plain UPDATE for existing rows (cheaper than an upsert), then INSERT the missing ones.
            cur.execute(
                f"UPDATE {s} SET activity_points = {s}.activity_points + d.delta FROM {d} d "
                f"WHERE d.job_id = %s AND d.id BETWEEN %s AND %s AND {s}.prospect_id = d.prospect_id",
                [job_id, lo, hi],
            )
            cur.execute(
                f"INSERT INTO {s} (prospect_id, bu_id, activity_points) "
                f"SELECT d.prospect_id, %s, d.delta FROM {d} d WHERE d.job_id = %s AND d.id BETWEEN %s AND %s "
                f"AND NOT EXISTS (SELECT 1 FROM {s} x WHERE x.prospect_id = d.prospect_id) "
                f"ON CONFLICT (prospect_id) DO UPDATE SET activity_points = {s}.activity_points + excluded.activity_points",
                [bu_id, job_id, lo, hi],
            )
            cur.execute(f"SELECT prospect_id FROM {d} WHERE job_id = %s AND id BETWEEN %s AND %s", [job_id, lo, hi])
            prospect_ids = tuple(r[0] for r in cur.fetchall())
            cur.execute(f"DELETE FROM {d} WHERE job_id = %s AND id BETWEEN %s AND %s", [job_id, lo, hi])
        events.publish(events.ProspectsBulkChanged(bu_id=bu_id, prospect_ids=prospect_ids, source="system"))
    return len(ids)


def rebuild_category_scores(bu_id: int, category_ids: Iterable[int] | None = None) -> None:
    """Recompute category scores from the activities ([M13]), one INSERT ... SELECT per category."""
    table = points_table(bu_id)
    scoring = {t: p for t, p in table.items() if p}
    categories = ScoreCategory.objects.filter(bu_id=bu_id)
    if category_ids is not None:
        categories = categories.filter(pk__in=list(category_ids))
    case, case_params = _case_sql(scoring)
    for category in categories:
        with transaction.atomic():
            CategoryScore.objects.filter(category=category).delete()
            conditions: list[str] = []
            params: list[Any] = []
            by_type: dict[str, list[int]] = defaultdict(list)
            for asset in category.assets or []:
                by_type[str(asset.get("asset_type"))].append(int(asset.get("asset_id") or 0))
            for asset_type, asset_ids in by_type.items():
                conditions.append(f"(a.asset_type = %s AND a.asset_id IN ({', '.join(['%s'] * len(asset_ids))}))")
                params += [asset_type, *asset_ids]
            for prefix in category.url_prefixes or []:
                if prefix:
                    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                    conditions.append("a.url LIKE %s ESCAPE '\\'")
                    params.append(escaped + "%")
            if not conditions or not scoring:
                continue
            sql = (
                f"INSERT INTO {_table(CategoryScore)} (category_id, prospect_id, score) "
                f"SELECT %s, a.prospect_id, SUM({case}) FROM {_table(Activity)} a "
                f"WHERE a.bu_id = %s AND a.prospect_id IS NOT NULL AND a.is_machine = %s "
                f"AND a.type IN ({', '.join(['%s'] * len(scoring))}) AND ({' OR '.join(conditions)}) "
                f"GROUP BY a.prospect_id"
            )
            with connection.cursor() as cur:
                cur.execute(sql, [category.pk, *case_params, bu_id, False, *scoring.keys(), *params])


def run_rescore(job_id: int) -> None:
    """The rescore job: phase 1 (deltas, once), phase 2 (chunks, with progress), then category scores."""
    job = Job.objects.get(pk=job_id)
    if job.is_finished:
        return
    with platform_tasks.running_job(job) as job:
        if job.params.get("phase") != "apply":
            with transaction.atomic():
                RescoreDelta.objects.filter(job_id=job.pk).delete()
                total = compute_rescore_deltas(job.pk, job.bu_id)
                Job.objects.filter(pk=job.pk).update(params={**job.params, "phase": "apply"}, total=total)
            job.refresh_from_db()
        moved = 0
        while True:
            n = apply_rescore_chunk(job.pk, job.bu_id)
            if not n:
                break
            moved += n
            platform_tasks.advance(job, n)
        rebuild_category_scores(job.bu_id)
        platform_tasks.finish_job(job, result={"moved": moved})


# --- Score categories --------------------------------------------------------------------------------------------------


def clean_category(bu, data: Mapping[str, Any]) -> dict[str, Any]:
    name = str(data.get("name", "")).strip()
    if not name or len(name) > 80:
        raise ValidationError("A category needs a name of 1 to 80 characters.")
    prefixes = [line.strip() for line in str(data.get("url_prefixes", "")).splitlines() if line.strip()]
    for prefix in prefixes:
        if not prefix.lower().startswith(("http://", "https://")) or len(prefix) > 500:
            raise ValidationError(f"'{prefix[:60]}' is not a web address starting with http:// or https://")
    assets = []
    for line in str(data.get("assets", "")).splitlines():
        line = line.strip()
        if not line:
            continue
        kind, _, number = line.partition(":")
        if kind.strip() not in ASSET_TYPES or not number.strip().isdigit():
            raise ValidationError(f"'{line[:60]}': write one asset per line as type:id, for example form:12 "
                                  f"(types: {', '.join(ASSET_TYPES)})")
        assets.append({"asset_type": kind.strip(), "asset_id": int(number)})
    return {"name": name, "url_prefixes": prefixes, "assets": assets}


ASSET_TYPES = ("form", "form_handler", "landing_page", "custom_redirect", "file", "email")


@transaction.atomic
def save_category(bu, data: Mapping[str, Any], instance: ScoreCategory | None = None, *, actor=None) -> ScoreCategory:
    cleaned = clean_category(bu, data)
    clash = ScoreCategory.objects.filter(bu=bu, name__iexact=cleaned["name"])
    if instance is not None:
        clash = clash.exclude(pk=instance.pk)
    if clash.exists():
        raise ValidationError(f"A category named {cleaned['name']} already exists.")
    category = instance or ScoreCategory(bu=bu)
    for key, value in cleaned.items():
        setattr(category, key, value)
    category.save()
    audit.record("scoring.category_saved", actor=actor, bu=bu, obj=category, summary=f"Score category {category.name}")
    category_id = category.pk
    transaction.on_commit(lambda: rebuild_category_scores(bu.pk, [category_id]))
    return category


def delete_category(bu, category: ScoreCategory, *, actor=None) -> None:
    audit.record("scoring.category_deleted", actor=actor, bu=bu, obj=category, summary=f"Score category {category.name}")
    category.delete()


# --- Grading -----------------------------------------------------------------------------------------------------------


def default_profile(bu) -> GradingProfile:
    profile = GradingProfile.objects.filter(bu=bu, is_default=True).first()
    if profile is None:
        profile, _ = GradingProfile.objects.get_or_create(
            bu=bu, name="Default", defaults={"is_default": True, "criteria": grading.DEFAULT_CRITERIA})
    return profile


def clean_criteria(raw: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    from loopline.prospects.fields import field_specs  # noqa: F401  (custom fields are checked by name only)

    cleaned, errors = [], []
    for i, item in enumerate(raw, 1):
        label = str(item.get("label", "")).strip()[:80]
        field = str(item.get("field", "")).strip()
        op = str(item.get("op", "")).strip()
        values = item.get("value")
        if isinstance(values, str):
            values = [v.strip() for v in values.replace("\n", ",").split(",") if v.strip()]
        values = [str(v)[:200] for v in (values or [])][:100]
        if not field and not label and not values:
            continue
        if field not in grading.GRADE_FIELDS and not (field.startswith("custom.") and len(field) > 7):
            errors.append(f"Criterion {i}: choose a field")
        if op not in grading.OPS:
            errors.append(f"Criterion {i}: choose a condition")
        try:
            weight = int(item.get("weight") or 0)
        except (TypeError, ValueError):
            weight = 0
        if weight not in grading.WEIGHTS:
            errors.append(f"Criterion {i}: the weight must be 1/3, 2/3 or 1 letter")
        if op in ("gte", "lte", "between") and any(grading._number(v) is None for v in values):
            errors.append(f"Criterion {i}: '{op}' needs numbers")
        cleaned.append({"label": label or grading.GRADE_FIELDS.get(field, field), "field": field, "op": op,
                        "value": values, "weight": weight})
    if errors:
        raise ValidationError(errors)
    return cleaned


@transaction.atomic
def save_profile(bu, name: str, criteria: Iterable[Mapping[str, Any]], instance: GradingProfile | None = None,
                 *, actor=None) -> tuple[GradingProfile, Job]:
    """Save a profile and regrade its prospects in the background ([M14])."""
    name = (name or "").strip()
    if not name or len(name) > 80:
        raise ValidationError("A profile needs a name of 1 to 80 characters.")
    clash = GradingProfile.objects.filter(bu=bu, name__iexact=name)
    if instance is not None:
        clash = clash.exclude(pk=instance.pk)
    if clash.exists():
        raise ValidationError(f"A profile named {name} already exists.")
    cleaned = clean_criteria(criteria)
    profile = instance or GradingProfile(bu=bu, is_default=not GradingProfile.objects.filter(bu=bu).exists())
    profile.name, profile.criteria = name, cleaned
    profile.save()
    audit.record("grading.profile_saved", actor=actor, bu=bu, obj=profile, summary=f"Grading profile {name}")
    return profile, start_regrade(bu, actor=actor)


def start_regrade(bu, *, actor=None) -> Job:
    waiting = Job.objects.filter(bu=bu, kind=REGRADE_JOB, status=Job.Status.QUEUED).first()
    if waiting is not None:
        return waiting
    job = platform_tasks.create_job(bu, REGRADE_JOB, title="Regrading prospects", created_by=actor)
    from . import tasks

    platform_tasks.enqueue_on_commit(tasks.regrade, job_id=job.pk)
    return job


_VALUE_FIELDS = ("id", "grade", "custom", *grading.GRADE_FIELDS)


def _grades_for(bu_id: int, rows: list[dict]) -> dict[int, str]:
    """New grade per prospect id for these rows (values of _VALUE_FIELDS)."""
    profiles = {p.pk: p for p in GradingProfile.objects.filter(bu_id=bu_id)}
    default = next((p for p in profiles.values() if p.is_default), None)
    settings = {g["prospect_id"]: g for g in ProspectGrading.objects.filter(
        prospect_id__in=[r["id"] for r in rows]).values("prospect_id", "profile_id", "manual_thirds")}
    out = {}
    for row in rows:
        setting: Mapping[str, Any] = settings.get(row["id"]) or {}
        profile = profiles.get(setting.get("profile_id") or 0) or default
        criteria = profile.criteria if profile else []
        out[row["id"]] = grading.compute_grade(criteria, row, setting.get("manual_thirds", 0))
    return out


def regrade_ids(bu_id: int, prospect_ids: Iterable[int], *, publish: bool = True) -> int:
    """Regrade these prospects; returns how many grades changed."""
    ids = list(prospect_ids)
    changed = 0
    for start in range(0, len(ids), CHUNK):
        rows = list(Prospect.objects.filter(bu_id=bu_id, pk__in=ids[start:start + CHUNK]).values(*_VALUE_FIELDS))
        changed += _write_grades(bu_id, rows, publish=publish)
    return changed


def _write_grades(bu_id: int, rows: list[dict], *, publish: bool) -> int:
    new = _grades_for(bu_id, rows)
    by_letter: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        if new[row["id"]] != row["grade"]:
            by_letter[new[row["id"]]].append(row["id"])
    for value, ids in by_letter.items():
        Prospect.objects.filter(pk__in=ids).update(grade=value)
    moved = [pk for ids in by_letter.values() for pk in ids]
    if moved and publish:
        if len(moved) == 1:
            events.publish(events.ProspectChanged(bu_id=bu_id, prospect_id=moved[0],
                                                  changed_fields=frozenset({"grade"}), source="system"))
        else:
            events.publish(events.ProspectsBulkChanged(bu_id=bu_id, prospect_ids=tuple(moved), source="system"))
    return len(moved)


def run_regrade(job_id: int) -> None:
    job = Job.objects.get(pk=job_id)
    if job.is_finished:
        return
    with platform_tasks.running_job(job) as job:
        base = Prospect.objects.filter(bu_id=job.bu_id)
        Job.objects.filter(pk=job.pk).update(total=base.count())
        last, changed = int(job.params.get("last_id") or 0), 0
        while True:
            rows = list(base.filter(pk__gt=last).order_by("pk").values(*_VALUE_FIELDS)[:CHUNK])
            if not rows:
                break
            with transaction.atomic():
                changed += _write_grades(job.bu_id, rows, publish=True)
                last = rows[-1]["id"]
                Job.objects.filter(pk=job.pk).update(params={**job.params, "last_id": last})
            platform_tasks.advance(job, len(rows))
        platform_tasks.finish_job(job, result={"changed": changed})


_GRADE_INPUTS = frozenset(grading.GRADE_FIELDS) | {"custom"}


def on_prospect_changed(event: events.ProspectChanged) -> None:
    if event.created or event.changed_fields & _GRADE_INPUTS:
        regrade_ids(event.bu_id, [event.prospect_id])


INLINE_REGRADE = 200  # larger bulk changes are regraded by a background task


def on_prospects_bulk_changed(event: events.ProspectsBulkChanged) -> None:
    if event.source in ("system", "lifecycle"):
        return  # our own rescore/regrade batches; lifecycle stage dates never change a grade
    if len(event.prospect_ids) <= INLINE_REGRADE:
        regrade_ids(event.bu_id, event.prospect_ids)
    elif len(event.prospect_ids) <= 2000:
        # A page of an import or a CRM pull: graded by the worker, so the load itself runs at full speed.
        from loopline.platform.tasks import enqueue_on_commit

        from .tasks import regrade_prospects

        enqueue_on_commit(regrade_prospects, event.bu_id, [int(i) for i in event.prospect_ids])
    else:
        from loopline.accounts.models import BusinessUnit

        start_regrade(BusinessUnit.objects.get(pk=event.bu_id))


def thumbs(bu, prospect: Prospect, up: bool, *, actor=None) -> str:
    """A person nudges the grade a third of a letter up or down ([M14]); returns the new grade."""
    grade = change_grade(bu, prospect.pk, 1 if up else -1)
    audit.record("grading.thumbs", actor=actor, bu=bu, obj=prospect,
                 summary=f"Grade {'up' if up else 'down'} a third of a letter")
    return grade


def change_grade(bu, prospect_id: int, thirds: int) -> str:
    """Move a prospect's grade ``thirds`` thirds of a letter (negative: down) on top of its profile's verdict, the
    same lever as thumbs up/down ([M14]): the shift is kept, so a later regrade keeps it. Returns the new grade."""
    with transaction.atomic():
        setting, _ = ProspectGrading.objects.select_for_update().get_or_create(prospect_id=prospect_id,
                                                                             defaults={"bu_id": bu.pk})
        setting.manual_thirds = max(-grading.TOP, min(grading.TOP, setting.manual_thirds + int(thirds)))
        setting.save(update_fields=["manual_thirds"])
        regrade_ids(bu.pk, [prospect_id])
    return Prospect.objects.filter(pk=prospect_id).values_list("grade", flat=True).get()


def set_prospect_profile(bu, prospect: Prospect, profile: GradingProfile | None) -> str:
    with transaction.atomic():
        ProspectGrading.objects.update_or_create(prospect=prospect, defaults={"bu_id": bu.pk, "profile": profile})
        regrade_ids(bu.pk, [prospect.pk])
    return Prospect.objects.filter(pk=prospect.pk).values_list("grade", flat=True).get()


# --- Action types ------------------------------------------------------------------------------------------------------


def _run_adjust_score(ctx, params) -> str:
    reason = f"{ctx.source.replace('_', ' ') or 'action'}" + (f" #{ctx.source_id}" if ctx.source_id else "")
    score = _add_score(ctx.bu, ctx.prospect.pk, params["points"], reason)
    if score is not None:
        ctx.prospect.score = score
    return f"score {params['points']:+d}"


_GRADE_WORDS = {"up": 1, "down": -1}


def _validate_change_grade(bu, params) -> dict[str, int]:
    raw = str(params.get("thirds", "")).strip().lower()
    try:
        thirds = _GRADE_WORDS[raw] if raw in _GRADE_WORDS else int(raw.replace(" ", ""))
    except ValueError:
        raise ValidationError("thirds must be a whole number of thirds of a letter, e.g. 1, -2, up or down") from None
    if thirds == 0 or abs(thirds) > grading.TOP:
        raise ValidationError(f"thirds must be between -{grading.TOP} and {grading.TOP}, and not 0")
    return {"thirds": thirds}


def _run_change_grade(ctx, params) -> str:
    grade = change_grade(ctx.bu, ctx.prospect.pk, params["thirds"])
    ctx.prospect.grade = grade
    return f"grade {params['thirds']:+d}/3 → {grade}"


def register_actions() -> None:
    from loopline.platform import actions

    existing = actions.REGISTRY.get("adjust_score")
    validate = existing.validate if existing else (lambda bu, p: {"points": int(p.get("points"))})
    actions.register(actions.ActionType("adjust_score", "Adjust score", validate, _run_adjust_score))
    actions.register(actions.ActionType("change_grade", "Change grade (thirds of a letter)", _validate_change_grade,
                                        _run_change_grade))
    # The action row editor's "argument" column holds the thirds ("1", "-2", "up", "down").
    actions.ROW_ARGS.setdefault("change_grade", ("thirds", None))
