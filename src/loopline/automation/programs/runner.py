"""The program engine: claims due prospects in batches and moves them one step ([M20], [M21]).

For each claimed batch, prospects at the same step are handled together in ONE transaction: the step's work (set-based
where the step allows it: tags, score, lists, email queueing, rule and trigger checks are single statements), one ledger
row per (step, prospect) and the advance to the next step commit or roll back together. The claim's lease is the
fencing token: a worker whose lease ran out (it was presumed dead and the rows were claimed again) finds no rows of its
own and does nothing. So a crash at any point loses nothing and repeats nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from loopline.platform import actions, events
from loopline.platform.bulk import insert_rows
from loopline.platform.queues import backoff_delay, claim_due
from loopline.prospects.models import Activity, Prospect, ProspectTag

from . import services
from .models import Program, ProgramMember, ProgramStep, ProgramStepLog

logger = logging.getLogger("loopline.programs")

BATCH_SIZE = 2000
LEASE_SECONDS = 300.0
SYNC_EVERY = dt.timedelta(minutes=2)
MAX_ERROR_BACKOFF = 3600.0

Outcome = ProgramStepLog.Outcome


@dataclass
class RunStats:
    processed: int = 0
    advanced: int = 0
    rescheduled: int = 0
    failed: int = 0
    batches: int = 0
    by_program: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {"processed": self.processed, "advanced": self.advanced, "rescheduled": self.rescheduled,
                "failed": self.failed, "batches": self.batches}


@dataclass
class _Row:
    pk: int
    prospect_id: int
    entered_at: dt.datetime
    deadline_at: dt.datetime | None


@dataclass
class _Plan:
    """What a step decided: the same outcome and target for everyone (set-based), or per member (outcome, detail,
    target), or a later time (no ledger row yet)."""

    everyone: tuple[str, ProgramStep | None] | None = None
    moves: dict[int, tuple[str, str, ProgramStep | None]] = field(default_factory=dict)
    later: dict[int, dt.datetime] = field(default_factory=dict)


# --- Entry points -----------------------------------------------------------------------------------------------------


def run_due(*, batch_size: int = BATCH_SIZE, time_budget: float | None = None, max_batches: int | None = None,
            program_ids: Iterable[int] | None = None, sync: bool = True) -> dict[str, int]:
    """Process due prospects of every running program until none are due, the time budget (seconds) is spent or
    ``max_batches`` batches were done. Safe to run in any number of processes at once."""
    stats = RunStats()
    deadline = time.monotonic() + time_budget if time_budget else None
    programs = Program.objects.filter(status=Program.Status.RUNNING).select_related("bu").order_by("pk")
    if program_ids is not None:
        programs = programs.filter(pk__in=list(program_ids))
    for program in programs:
        if sync and (program.synced_at is None or program.synced_at < timezone.now() - SYNC_EVERY):
            try:
                services.sync_recipients(program)
            except Exception:
                logger.exception("program %s: recipient sync failed", program.pk)
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return stats.as_dict()
            if max_batches is not None and stats.batches >= max_batches:
                return stats.as_dict()
            if not run_batch(program, batch_size=batch_size, stats=stats):
                break
    return stats.as_dict()


def run_batch(program: Program, *, batch_size: int = BATCH_SIZE, stats: RunStats | None = None,
              lease_seconds: float | None = None) -> int:
    """Claim one batch of the program's due prospects and process it. Returns the number claimed."""
    stats = stats if stats is not None else RunStats()
    # Re-read the status: a program paused since the caller loaded it is left alone.
    if not Program.objects.filter(pk=program.pk, status=Program.Status.RUNNING).exists():
        return 0
    queryset = ProgramMember.objects.filter(program_id=program.pk, status=ProgramMember.Status.ACTIVE).only(
        "id", "attempts", "locked_until")
    rows = claim_due(queryset, limit=batch_size, lease_seconds=lease_seconds or LEASE_SECONDS)
    if not rows:
        return 0
    stats.batches += 1
    # Every row of one claim carries the same lease time: from here on the lease names the batch (no id lists).
    lease = rows[0].locked_until
    step_ids = set(ProgramMember.objects.filter(program_id=program.pk, locked_until=lease)
                   .values_list("step_id", flat=True).distinct())
    steps = {s.pk: s for s in ProgramStep.objects.filter(program_id=program.pk, pk__in=[k for k in step_ids if k])}
    for step_id in step_ids:
        step = steps.get(step_id) if step_id else None
        if step is None:  # should not happen (PROTECT); park the rows with an error rather than loop
            ProgramMember.objects.filter(program_id=program.pk, locked_until=lease, step_id=step_id).update(
                next_run_at=None, locked_until=None, last_error="step missing")
            continue
        _run_group(program, step, lease, stats)
    return len(rows)


# --- One step, many prospects -------------------------------------------------------------------------------------------


def _batch(program: Program, step: ProgramStep, lease, only_pk: int | None = None):
    """The members of this claim at this step: the fence (a worker whose lease was taken over matches nothing)."""
    qs = ProgramMember.objects.filter(program_id=program.pk, step_id=step.pk, status=ProgramMember.Status.ACTIVE,
                                      locked_until=lease)
    return qs.filter(pk=only_pk) if only_pk is not None else qs


def _run_group(program: Program, step: ProgramStep, lease, stats: RunStats, only_pk: int | None = None) -> None:
    try:
        with transaction.atomic():
            _process(program, step, lease, stats, only_pk)
        return
    except Exception as exc:
        if only_pk is not None:
            raise
        logger.warning("program %s step %s: batch failed (%s); retrying one by one", program.pk, step.pk, exc)
    # One bad prospect never stops the others: each gets its own transaction.
    for pk in list(_batch(program, step, lease).values_list("pk", flat=True)):
        try:
            _run_group(program, step, lease, stats, only_pk=pk)
        except Exception as exc:
            logger.exception("program %s step %s member %s failed", program.pk, step.pk, pk)
            _failed(pk, exc)
            stats.failed += 1


def _failed(pk: int, exc: BaseException) -> None:
    member = ProgramMember.objects.filter(pk=pk).only("attempts").first()
    attempts = member.attempts if member else 1
    ProgramMember.objects.filter(pk=pk).update(
        locked_until=None, last_error=f"{type(exc).__name__}: {exc}"[:2000],
        next_run_at=timezone.now() + dt.timedelta(seconds=backoff_delay(attempts, base=30, cap=MAX_ERROR_BACKOFF)))


def _process(program: Program, step: ProgramStep, lease, stats: RunStats, only_pk: int | None = None) -> None:
    now = timezone.now()
    batch = _batch(program, step, lease, only_pk)
    # Prospects deleted (recycle bin) since they entered leave the program instead of going on.
    batch.filter(Q(prospect__is_deleted=True) | ~Q(prospect__bu_id=program.bu_id)).update(
        status=ProgramMember.Status.REMOVED, locked_until=None)
    # Lock the batch (PostgreSQL) and read what the step needs — without building model instances.
    rows = [_Row(*r) for r in batch.select_for_update(of=("self",)).values_list(
        "pk", "prospect_id", "entered_at", "deadline_at")]
    if not rows:
        return
    handler = {"action": _action, "trigger": _trigger, "rule": _rule, "end": _end}[step.kind]
    plan = _Plan()
    handler(program, step, rows, plan, now, batch)
    _apply(program, step, rows, plan, now, stats, batch)


def _apply(program: Program, step: ProgramStep, rows: list[_Row], plan: _Plan, now: dt.datetime,
           stats: RunStats, batch) -> None:
    later: dict[dt.datetime, list[int]] = defaultdict(list)
    for pk, when in plan.later.items():
        later[when].append(pk)
    for when, pks in later.items():
        ProgramMember.objects.filter(pk__in=pks).update(next_run_at=when, locked_until=None, attempts=0)
        stats.rescheduled += len(pks)
    if plan.everyone is not None:
        # The common case (an action step): one outcome and one target for the whole batch, all set-based.
        outcome, target = plan.everyone
        _log_batch(program, step, batch, outcome, now)
        _advance(program, batch, target, now)
        moved = len(rows)
    else:
        by_pk = {r.pk: r for r in rows}
        insert_rows(ProgramStepLog, [
            {"program_id": program.pk, "step_id": step.pk, "prospect_id": by_pk[pk].prospect_id, "outcome": outcome,
             "detail": detail[:300], "at": now} for pk, (outcome, detail, _) in plan.moves.items()], batch_size=2000)
        targets: dict[int | None, list[int]] = defaultdict(list)
        target_steps: dict[int | None, ProgramStep | None] = {}
        for pk, (_, _, target) in plan.moves.items():
            key = target.pk if target is not None else None
            targets[key].append(pk)
            target_steps[key] = target
        for key, pks in targets.items():
            _advance(program, ProgramMember.objects.filter(pk__in=pks), target_steps[key], now)
        moved = len(plan.moves)
    stats.processed += moved
    stats.advanced += moved
    stats.by_program[program.pk] = stats.by_program.get(program.pk, 0) + moved


def _advance(program: Program, members, target: ProgramStep | None, now: dt.datetime) -> None:
    if target is not None and target.kind == ProgramStep.Kind.END:
        # Arriving at an end step ends the program for these prospects at once (its ledger row too).
        _log_batch(program, target, members, Outcome.DONE, now)
        members.update(**{**services.arrival(None, now), "step_id": target.pk})
    else:
        members.update(**services.arrival(target, now))


def _log_batch(program: Program, step: ProgramStep, members, outcome: str, now: dt.datetime) -> None:
    """INSERT ... SELECT one ledger row per member (the unique (step, prospect) key refuses a repeat)."""
    from django.db import connection

    qn = connection.ops.quote_name
    sub_sql, sub_params = members.values("prospect_id").query.sql_with_params()
    table = qn(ProgramStepLog._meta.db_table)
    sql = (f"INSERT INTO {table} ({qn('program_id')}, {qn('step_id')}, {qn('prospect_id')}, {qn('outcome')}, "
           f"{qn('detail')}, {qn('at')}) SELECT %s, %s, s.prospect_id, %s, '', %s FROM ({sub_sql}) s")
    with connection.cursor() as cursor:
        cursor.execute(sql, [program.pk, step.pk, outcome, connection.ops.adapt_datetimefield_value(now),
                             *sub_params])


def _target(step: ProgramStep, attr: str) -> ProgramStep | None:
    return getattr(step, attr) if getattr(step, f"{attr}_id") else None


# --- Step kinds ----------------------------------------------------------------------------------------------------------


def _end(program, step, rows, plan: _Plan, now, batch) -> None:
    plan.everyone = (Outcome.DONE, None)


def _rule(program, step, rows, plan: _Plan, now, batch) -> None:
    from loopline.automation import criteria

    matched = set(criteria.matching_prospects(program.bu, step.config.get("criteria") or {})
                  .filter(pk__in=batch.values("prospect_id")).values_list("pk", flat=True))
    yes, no = _target(step, "yes_step"), _target(step, "no_step")
    for r in rows:
        plan.moves[r.pk] = (Outcome.YES, "", yes) if r.prospect_id in matched else (Outcome.NO, "", no)


def _trigger_activities(program: Program, config: dict, prospect_ids, since: dt.datetime):
    _, types, asset_type = services.TRIGGERS[config["event"]]
    qs = Activity.objects.filter(bu_id=program.bu_id, prospect_id__in=prospect_ids, type__in=types, is_machine=False,
                                 occurred_at__gte=since)
    asset_id = config.get("asset_id")
    if asset_type == "email":
        if asset_id:
            from loopline.emails.models import EmailSend

            sends = EmailSend.objects.filter(bu_id=program.bu_id, email_id=asset_id).values("pk")
            qs = qs.filter(asset_type="email_send", asset_id__in=sends)
    elif asset_type and asset_id:
        qs = qs.filter(asset_type=asset_type, asset_id=asset_id)
    if config.get("url_contains"):
        qs = qs.filter(url__icontains=config["url_contains"])
    return qs


def _trigger(program, step, rows, plan: _Plan, now, batch) -> None:
    """Fired since entering the program → yes at once; not fired by the deadline → no; otherwise wait for the deadline
    (an activity that matches wakes the prospect earlier, see ``services.on_activity``)."""
    since = min(r.entered_at for r in rows)
    seen: dict[int, dt.datetime] = {}
    for pid, at in _trigger_activities(program, step.config, batch.values("prospect_id"), since).values_list(
            "prospect_id", "occurred_at"):
        if pid not in seen or at < seen[pid]:
            seen[pid] = at
    yes, no = _target(step, "yes_step"), _target(step, "no_step")
    for r in rows:
        fired = r.prospect_id in seen and seen[r.prospect_id] >= r.entered_at
        if fired:
            plan.moves[r.pk] = (Outcome.YES, "", yes)
        elif r.deadline_at is None or r.deadline_at <= now:
            plan.moves[r.pk] = (Outcome.NO, "", no)
        else:
            plan.later[r.pk] = r.deadline_at


def _action(program, step, rows, plan: _Plan, now, batch) -> None:
    items = step.config.get("actions") or []
    if program.business_hours and any(i.get("type") == services.SEND_EMAIL for i in items):
        opens = services.next_business_time(program, now)
        if opens > now:
            for r in rows:
                plan.later[r.pk] = opens
            return
    ids = [r.prospect_id for r in rows]
    failures: dict[int, list[str]] = defaultdict(list)
    for item in items:
        params = {k: v for k, v in item.items() if k != "type"}
        kind = item.get("type", "")
        bulk = BULK.get(kind)
        if kind == services.SEND_EMAIL:
            from loopline.emails.services import send_to_prospects

            # Mailability ([M26]) is applied there: opted-out prospects move on but receive nothing ([M20]).
            send_to_prospects(program.bu, params["email_id"], ids, kind="program", source="program",
                              source_id=program.pk, dedupe_key=f"program:{program.pk}:email:{params['email_id']}")
        elif bulk is not None and bulk[0]():
            bulk[1](program, batch, ids, params)
        else:
            _per_prospect(program, item, ids, failures)
    target = _target(step, "next_step")
    if not failures:
        plan.everyone = (Outcome.DONE, target)
        return
    for r in rows:
        problems = failures.get(r.prospect_id)
        plan.moves[r.pk] = (Outcome.FAILED, "; ".join(problems), target) if problems else (Outcome.DONE, "", target)


def _per_prospect(program: Program, item: dict, ids: list[int], failures: dict[int, list[str]]) -> None:
    """Any registered action, one prospect at a time (each in its own savepoint, see ``actions.run_actions``)."""
    for prospect in Prospect.objects.filter(pk__in=ids).select_related("bu"):
        ctx = actions.ActionContext(bu=program.bu, prospect=prospect, source="program", source_id=program.pk)
        for outcome in actions.run_actions([item], ctx):
            if not outcome.ok:
                failures[prospect.pk].append(f"{outcome.type}: {outcome.detail}")


# --- Set-based versions of common actions (used while the registered action is the built-in one) ------------------------


def _builtin(name: str, module: str):
    def check() -> bool:
        registered = actions.REGISTRY.get(name)
        return registered is not None and registered.available and registered.run.__module__ == module

    return check


def _bulk_add_tag(program: Program, batch, ids: list[int], params: dict) -> None:
    """INSERT ... SELECT the tag for the whole batch (already tagged prospects are skipped by the unique key)."""
    from django.db import connection

    from loopline.prospects.services import get_or_create_tag

    tag = get_or_create_tag(program.bu, params["tag"])
    qn = connection.ops.quote_name
    sub_sql, sub_params = batch.values("prospect_id").query.sql_with_params()
    verb = "INSERT OR IGNORE INTO" if connection.vendor == "sqlite" else "INSERT INTO"
    tail = "" if connection.vendor == "sqlite" else " ON CONFLICT DO NOTHING"
    sql = (f"{verb} {qn(ProspectTag._meta.db_table)} ({qn('prospect_id')}, {qn('tag_id')}, {qn('created_at')}) "
           f"SELECT s.prospect_id, %s, %s FROM ({sub_sql}) s{tail}")
    with connection.cursor() as cursor:
        cursor.execute(sql, [tag.pk, connection.ops.adapt_datetimefield_value(timezone.now()), *sub_params])


def _bulk_remove_tag(program: Program, batch, ids: list[int], params: dict) -> None:
    ProspectTag.objects.filter(prospect_id__in=batch.values("prospect_id"), tag__bu_id=program.bu_id,
                               tag__name__iexact=params["tag"]).delete()


def _bulk_adjust_score(program: Program, batch, ids: list[int], params: dict) -> None:
    Prospect.objects.filter(pk__in=batch.values("prospect_id"), bu_id=program.bu_id).update(
        score=F("score") + params["points"])
    events.publish(events.ProspectsBulkChanged(bu_id=program.bu_id, prospect_ids=tuple(ids), source="program"))


def _list_action(name: str):
    def run(program: Program, batch, ids: list[int], params: dict) -> None:
        from loopline.automation import services as automation_services
        from loopline.automation.models import ProspectList

        prospect_list = ProspectList.objects.filter(bu_id=program.bu_id, pk=params["list_id"]).first()
        if prospect_list is None:
            return
        if name == "add_to_list":
            automation_services.add_to_list(program.bu, prospect_list, ids, "action")
        else:
            automation_services.remove_from_list(program.bu, prospect_list, ids)

    return run


def _registered_available(name: str):
    def check() -> bool:
        registered = actions.REGISTRY.get(name)
        return registered is not None and registered.available

    return check


BULK: dict[str, tuple[Any, Any]] = {
    "add_tag": (_builtin("add_tag", "loopline.platform.actions"), _bulk_add_tag),
    "remove_tag": (_builtin("remove_tag", "loopline.platform.actions"), _bulk_remove_tag),
    "adjust_score": (_builtin("adjust_score", "loopline.platform.actions"), _bulk_adjust_score),
    "add_to_list": (_registered_available("add_to_list"), _list_action("add_to_list")),
    "remove_from_list": (_registered_available("remove_from_list"), _list_action("remove_from_list")),
}
