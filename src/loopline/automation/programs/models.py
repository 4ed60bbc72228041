"""Engagement programs ([M20]–[M21]) and assignment groups ([M22]).

A program is a graph of steps. Each prospect in a program is one ``ProgramMember`` row holding its current step and
when that step is due (``next_run_at``, a :class:`~loopline.platform.queues.DueRow`). Workers claim due rows in
batches; every processed (step, prospect) writes one ``ProgramStepLog`` row in the same transaction as the advance,
so a crash or restart loses nothing and repeats nothing ([M21]).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from loopline.platform.queues import DueRow


class Program(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        ARCHIVED = "archived", "Archived"

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="programs")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    campaign = models.ForeignKey("campaigns.Campaign", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+", help_text="The campaign this program's touches count for ([M33]).")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    recipient_list_ids = models.JSONField(default=list, blank=True, help_text="Lists whose members enter.")
    suppression_list_ids = models.JSONField(default=list, blank=True, help_text="Lists whose members never enter.")
    start_step = models.ForeignKey("ProgramStep", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Business hours: email steps wait for the next opening in the program's time zone.
    business_hours = models.BooleanField(default=False)
    business_days = models.JSONField(default=list, blank=True, help_text="Weekdays 0 (Monday) to 6.")
    business_start = models.TimeField(null=True, blank=True)
    business_end = models.TimeField(null=True, blank=True)
    timezone = models.CharField(max_length=64, blank=True, help_text="Empty: the business unit's time zone.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True, help_text="Recipients last compared with the lists.")

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["bu", "name"], name="program_name_unique_per_bu")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_editable(self) -> bool:
        return self.status in (self.Status.DRAFT, self.Status.PAUSED)


class ProgramStep(models.Model):
    class Kind(models.TextChoices):
        ACTION = "action", "Action"
        TRIGGER = "trigger", "Trigger"
        RULE = "rule", "Rule"
        END = "end", "End"

    class Wait(models.TextChoices):
        NONE = "none", "Immediately"
        DELAY = "delay", "Wait for a time"
        UNTIL = "until", "Wait until a date and time"
        UP_TO = "up_to", "Listen for up to"

    class Unit(models.TextChoices):
        MINUTES = "minutes", "minutes"
        HOURS = "hours", "hours"
        DAYS = "days", "days"

    program = models.ForeignKey(Program, on_delete=models.CASCADE, related_name="steps")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    position = models.PositiveIntegerField(default=0, help_text="Order in the editor.")
    # action: {"actions": [{"type": "send_email", "email_id": 3}, {"type": "add_tag", "tag": "nurtured"}]}
    # trigger: {"event": "email_open", "asset_id": 3, "url_contains": ""};  rule: {"criteria": {...}}
    config = models.JSONField(default=dict, blank=True)
    wait_kind = models.CharField(max_length=8, choices=Wait.choices, default=Wait.NONE)
    wait_amount = models.PositiveIntegerField(default=0)
    wait_unit = models.CharField(max_length=8, choices=Unit.choices, default=Unit.DAYS)
    wait_until = models.DateTimeField(null=True, blank=True)
    next_step = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    yes_step = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    no_step = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return f"Step {self.position}: {self.get_kind_display()}"

    @property
    def branches(self) -> bool:
        return self.kind in (self.Kind.TRIGGER, self.Kind.RULE)


class ProgramMember(DueRow):
    """One prospect in one program: where it is and when its step is due."""

    class Status(models.TextChoices):
        ACTIVE = "active", "In the program"
        REMOVED = "removed", "Left the recipient list"
        FINISHED = "finished", "Finished"

    # Few indexes on purpose: every step rewrites the row, and each index is written again (the composite indexes
    # below cover the program and step lookups).
    program = models.ForeignKey(Program, on_delete=models.CASCADE, related_name="members", db_index=False)
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="+")
    # Lower-cased email: one prospect per email address per program ([M20]), even in duplicate-email BUs.
    email_key = models.CharField(max_length=254, null=True, blank=True)
    step = models.ForeignKey(ProgramStep, null=True, blank=True, on_delete=models.PROTECT, related_name="members",
                             db_index=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    entered_at = models.DateTimeField()
    step_entered_at = models.DateTimeField()
    deadline_at = models.DateTimeField(null=True, blank=True, help_text="End of a trigger's listening window.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta(DueRow.Meta):
        constraints = [
            models.UniqueConstraint(fields=["program", "prospect"], name="program_member_unique"),
            models.UniqueConstraint(fields=["program", "email_key"], condition=Q(email_key__isnull=False),
                                    name="program_member_email_unique"),
        ]
        indexes = [
            # claim_due orders by (next_run_at, id): the index gives that order without sorting.
            models.Index(fields=["program", "status", "next_run_at", "id"], name="program_member_claim"),
            models.Index(fields=["program", "step", "status"], name="program_member_step"),
            # A claimed batch is addressed by its lease (one timestamp per claim), see runner.
            models.Index(fields=["program", "locked_until"], name="program_member_lease"),
        ]


class ProgramStepLog(models.Model):
    """The ledger: one row per (step, prospect) processed, written with the advance. Its unique key is what makes a
    repeated batch harmless, and it is the per-step / per-path report."""

    class Outcome(models.TextChoices):
        DONE = "done", "Done"
        YES = "yes", "Yes"
        NO = "no", "No"
        FAILED = "failed", "Failed"

    program = models.ForeignKey(Program, on_delete=models.CASCADE, related_name="+", db_index=False)
    step = models.ForeignKey(ProgramStep, on_delete=models.CASCADE, related_name="logs", db_index=False)
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="+")
    outcome = models.CharField(max_length=8, choices=Outcome.choices, default=Outcome.DONE)
    detail = models.CharField(max_length=300, blank=True)
    at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["step", "prospect"], name="program_step_log_unique")]
        indexes = [models.Index(fields=["program", "step", "outcome"], name="program_step_log_report")]


# --- Assignment ([M22]) ---------------------------------------------------------------------------------------------


class AssignmentGroup(models.Model):
    """A round-robin group: the next prospect goes to the member assigned least recently."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="assignment_groups")
    name = models.CharField(max_length=120)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["bu", "name"], name="assignment_group_name_unique")]

    def __str__(self) -> str:
        return self.name


class AssignmentGroupMember(models.Model):
    group = models.ForeignKey(AssignmentGroup, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    is_active = models.BooleanField(default=True, help_text="Off: skipped (holiday), keeps its place.")
    position = models.PositiveIntegerField(default=0)
    # The persisted round-robin pointer: least recently assigned first, then position.
    last_assigned_at = models.DateTimeField(null=True, blank=True)
    assigned_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["group", "user"], name="assignment_group_member_unique")]


class CrmAssignmentRequest(models.Model):
    """A prospect handed to the CRM's active assignment rule ([M22]); the connector creates the record without an owner
    and with the auto-assign header, then clears ``pending``."""

    bu = models.ForeignKey("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="+")
    prospect = models.OneToOneField("prospects.Prospect", on_delete=models.CASCADE, related_name="+")
    pending = models.BooleanField(default=True)
    source = models.CharField(max_length=40, blank=True)
    requested_at = models.DateTimeField(auto_now_add=True)
