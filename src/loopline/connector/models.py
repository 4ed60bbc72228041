"""The connector's durable state: every watermark, queued change, link and error is a database row ([R22]–[R29])."""

from __future__ import annotations

from django.conf import settings
from django.db import models

CONNECTOR_VERSION = 2


class Connector(models.Model):
    """At most one per business unit ([R1]); created paused ([R2])."""

    class Status(models.TextChoices):
        PAUSED = "paused", "Paused"
        ACTIVE = "active", "Active"
        ERROR = "error", "Error"

    bu = models.OneToOneField("accounts.BusinessUnit", on_delete=models.CASCADE, related_name="connector")
    version = models.PositiveSmallIntegerField(default=CONNECTOR_VERSION)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PAUSED)
    login_url = models.URLField(max_length=300, blank=True, help_text="Token endpoint host, e.g. https://login.salesforce.com")
    consumer_key = models.CharField(max_length=300, blank=True)
    username = models.CharField(max_length=255, blank=True, help_text="The CRM connector user ([R7]).")
    api_version = models.CharField(max_length=8, default="59.0")
    ca_file = models.CharField(max_length=500, blank=True, help_text="Extra CA bundle to trust (sandbox only).")
    private_key = models.TextField(blank=True, help_text="Encrypted at rest.")
    certificate = models.TextField(blank=True)
    instance_url = models.URLField(max_length=300, blank=True)
    org_id = models.CharField(max_length=18, blank=True)
    connector_user_id = models.CharField(max_length=18, blank=True)
    settings = models.JSONField(default=dict, blank=True)
    last_verified_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    paused_until = models.DateTimeField(null=True, blank=True, help_text="Set when the CRM's API limit is exhausted.")
    api_usage = models.JSONField(default=dict, blank=True, help_text="Last Sforce-Limit-Info reading.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"CRM connector of {self.bu}"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class FieldMapping(models.Model):
    class Behaviour(models.TextChoices):
        USE_LOOPLINE = "use_loopline", "Use Loopline's value"
        USE_CRM = "use_crm", "Use the CRM's value"
        MOST_RECENT_RECORD = "most_recent_record", "Use the most recently updated record"
        MOST_RECENT_FIELD = "most_recent_field", "Use the most recently updated field"

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="mappings")
    loopline_field = models.CharField(max_length=80, help_text="Prospect field, or custom.<api_name>.")
    lead_field = models.CharField(max_length=80, blank=True)
    contact_field = models.CharField(max_length=80, blank=True)
    person_account_field = models.CharField(max_length=80, blank=True)
    behaviour = models.CharField(max_length=24, choices=Behaviour.choices, default=Behaviour.USE_CRM)
    fixed = models.BooleanField(default=False, help_text="Direction fixed by the connector ([R18]).")

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["connector", "loopline_field"], name="mapping_field_unique")]

    def __str__(self) -> str:
        return f"{self.loopline_field} ↔ {self.lead_field or self.contact_field}"


class CrmLink(models.Model):
    """Which CRM record a prospect syncs with, and what was last written/read (echo suppression, [R24])."""

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="links")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="crm_links")
    crm_object = models.CharField(max_length=20)  # Lead | Contact | Account (person account)
    crm_id = models.CharField(max_length=18)
    last_written_hash = models.CharField(max_length=64, blank=True)
    last_read_hash = models.CharField(max_length=64, blank=True)
    last_crm_modstamp = models.DateTimeField(null=True, blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    baseline = models.JSONField(default=dict, blank=True, help_text="Field digests at the last sync (engine).")
    # Recorded before a write is sent, cleared when its outcome is saved: if the answer is lost, the next read of
    # the record still recognises our own write ({"hash": expected echo, "baseline": baseline after the write}).
    pending_write = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connector", "crm_id"], name="link_crm_id_unique"),
        ]
        indexes = [models.Index(fields=["connector", "prospect"], name="link_prospect")]

    def __str__(self) -> str:
        return f"{self.prospect_id} ↔ {self.crm_object} {self.crm_id}"


class OutboxEntry(models.Model):
    """A prospect change that must reach the CRM, written in the change's own transaction ([R23])."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed (in the error queue)"

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="outbox")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="+")
    changed_fields = models.JSONField(default=list)
    reason = models.CharField(max_length=40, default="change")  # change | create | manual | retry
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_run_at = models.DateTimeField(db_index=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["connector", "status", "next_run_at"], name="outbox_due"),
            models.Index(fields=["prospect", "status"], name="outbox_prospect"),
        ]

    def __str__(self) -> str:
        return f"outbox {self.pk} prospect {self.prospect_id} {self.status}"


class Watermark(models.Model):
    """CRM → Loopline capture position per object ([R22])."""

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="watermarks")
    object_type = models.CharField(max_length=40)
    modstamp = models.DateTimeField(null=True, blank=True)
    deleted_checked_until = models.DateTimeField(null=True, blank=True)
    recent_keys = models.JSONField(default=list, blank=True, help_text="(id, SystemModstamp) seen inside the overlap.")
    last_poll_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connector", "object_type"], name="watermark_object_unique")]

    def __str__(self) -> str:
        return f"{self.object_type} @ {self.modstamp}"


class SyncError(models.Model):
    """The sync error queue ([R26])."""

    class Direction(models.TextChoices):
        TO_CRM = "to_crm", "Loopline → CRM"
        FROM_CRM = "from_crm", "CRM → Loopline"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RETRYING = "retrying", "Retrying automatically"
        DISMISSED = "dismissed", "Dismissed"
        RESOLVED = "resolved", "Resolved"

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="errors")
    prospect = models.ForeignKey("prospects.Prospect", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    crm_id = models.CharField(max_length=18, blank=True)
    direction = models.CharField(max_length=10, choices=Direction.choices)
    code = models.CharField(max_length=80)
    message = models.TextField()
    fields = models.JSONField(default=list, blank=True)
    transient = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    attempts = models.PositiveIntegerField(default=1)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(auto_now=True)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_attempt_at", "-id"]
        indexes = [models.Index(fields=["connector", "status"], name="sync_error_status")]

    def __str__(self) -> str:
        return f"{self.code}: {self.message[:60]}"


class SyncRun(models.Model):
    """Counters of one sync run ([R29]): a run that did nothing says why."""

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=20)  # pull | push | metadata | initial_import | manual
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    counters = models.JSONField(default=dict, blank=True)
    api_calls = models.PositiveIntegerField(default=0)
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["connector", "kind", "-started_at"], name="sync_run_recent")]

    def __str__(self) -> str:
        return f"{self.kind} run {self.pk}"


class CrmUser(models.Model):
    """CRM users (User Sync, [R2]) and the Loopline user they map to."""

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="crm_users")
    crm_id = models.CharField(max_length=18)
    username = models.CharField(max_length=255)
    email = models.CharField(max_length=255, blank=True)
    name = models.CharField(max_length=255, blank=True)
    profile = models.CharField(max_length=255, blank=True)
    is_active = models.BooleanField(default=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connector", "crm_id"], name="crm_user_unique")]

    def __str__(self) -> str:
        return self.username


class CrmDescribe(models.Model):
    """Cached describe metadata of a CRM object (mapping screens, value checks [R20])."""

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="describes")
    object_type = models.CharField(max_length=40)
    data = models.JSONField()
    fetched_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connector", "object_type"], name="describe_object_unique")]

    def __str__(self) -> str:
        return self.object_type


class CampaignMemberSync(models.Model):
    """Loopline → CRM state of one campaign membership in a connected campaign ([R38]): the CRM CampaignMember id and
    the status both sides agree on. A row is *pending* while Loopline's status differs and waits to be written."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed (in the error queue)"

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="member_syncs")
    member = models.ForeignKey("campaigns.CampaignMember", on_delete=models.CASCADE, related_name="+")
    crm_id = models.CharField(max_length=18, blank=True)
    synced_status = models.CharField(max_length=40, blank=True, help_text="The status the CRM holds.")
    target_status = models.CharField(max_length=40, blank=True, help_text="The status last queued or tried.")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_run_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connector", "member"], name="member_sync_unique")]
        indexes = [models.Index(fields=["connector", "state", "next_run_at"], name="member_sync_due"),
                   models.Index(fields=["connector", "crm_id"], name="member_sync_crm_id")]

    def __str__(self) -> str:
        return f"member {self.member_id} ↔ {self.crm_id or '(new)'} {self.state}"


class CrmTaskLog(models.Model):
    """One completed CRM Task to write for one email sent to a synced prospect ([R39]): the task's content is frozen
    when the row is queued; the row is claimed with a lease and marked done with the Task id, exactly once."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed (in the error queue)"

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="task_logs")
    delivery_id = models.BigIntegerField(help_text="The email send ledger row (emails.Delivery).")
    prospect = models.ForeignKey("prospects.Prospect", on_delete=models.CASCADE, related_name="+")
    who_id = models.CharField(max_length=18)
    subject = models.CharField(max_length=255)
    activity_date = models.DateField()
    description = models.TextField(blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_run_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    crm_id = models.CharField(max_length=18, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connector", "delivery_id"], name="task_log_once")]
        indexes = [models.Index(fields=["connector", "state", "next_run_at"], name="task_log_due")]

    def __str__(self) -> str:
        return f"task for delivery {self.delivery_id} {self.state}"


class BulkImportCheckpoint(models.Model):
    """Where a Bulk API 2.0 initial import of one object stands: the watermark recorded before the job, the query job,
    the result page being applied (its locator) and how many of its rows are applied. Updated in the same transaction
    as the records it counts, so a worker killed at any point resumes exactly after the last committed chunk."""

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="bulk_checkpoints")
    object_type = models.CharField(max_length=40)
    state = models.CharField(max_length=10, choices=State.choices, default=State.RUNNING)
    watermark_at = models.DateTimeField(help_text="Polling resumes from here once the import is done ([R22]).")
    job_id = models.CharField(max_length=18, blank=True, help_text="The Bulk API 2.0 query job.")
    locator = models.CharField(max_length=200, blank=True, help_text="Result page being applied ('' = the first).")
    page_offset = models.PositiveIntegerField(default=0, help_text="Rows of that page already applied.")
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    pages = models.PositiveIntegerField(default=0)
    counters = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connector", "object_type"], name="bulk_checkpoint_object")]

    def __str__(self) -> str:
        return f"bulk import {self.object_type} {self.state} {self.done}/{self.total}"
