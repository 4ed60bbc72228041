"""Email use cases: save and check emails, preview, test sends, list / 1:1 / autoresponder / program / operational
sends through the ledger, unsubscribe and preferences, consent, bounces and complaints ([M23]-[M31])."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, mailers
from django.core.validators import validate_email
from django.db import connection, transaction
from django.db.models import Count, Field, Q
from django.utils import timezone

from loopline.platform import audit
from loopline.platform.tasks import enqueue_on_commit
from loopline.prospects import services as prospect_services
from loopline.prospects.models import Activity, ActivityType, CustomField, Prospect
from loopline.tracking import services as tracking_services

from . import rendering, sending, tokens
from .models import ConsentRecord, Delivery, Email, EmailSend

logger = logging.getLogger("loopline.emails")

KINDS = {k.value for k in EmailSend.Kind}
MARKETING_KINDS = {"list", "autoresponder", "program", "one_to_one"}
SOFT_BOUNCE_LIMIT = 5
QUEUE_CHUNK = 2000
PROSPECT_VALUES = (*tuple(f for f in rendering.PROSPECT_FIELDS if f not in ("full_name",)), "custom", "assigned_user_id", "is_deleted", "email_undeliverable", "bu_id")


# --- Authoring ---------------------------------------------------------------------------------------------------


def _custom_defaults(bu_id: int) -> dict[str, str]:
    return dict(CustomField.objects.filter(bu_id=bu_id).values_list("api_name", "default_merge_value"))


def _check_address(value: str, what: str) -> None:
    if not value:
        return
    try:
        validate_email(value)
    except ValidationError:
        raise ValidationError(f"{what} {value!r} is not a valid email address.") from None


def compile_for(email: Email, *, track: bool = True) -> rendering.Compiled:
    """Compile and check an email; raises ValidationError with a clear message ([M24]: refuse before sending)."""
    marketing = email.purpose == Email.Purpose.MARKETING
    try:
        compiled = rendering.compile_email(subject=email.subject, body=email.body, body_format=email.body_format,
                                           text_body=email.text_body, marketing=marketing, track=track)
        rendering.check(compiled, marketing=marketing, custom_fields=_custom_defaults(email.bu_id).keys(),
                        dynamic_keys=rendering.dynamic_blocks(email.bu_id).keys())
    except rendering.RenderError as exc:
        raise ValidationError(str(exc)) from None
    _check_address(email.from_email, "The sender address")
    _check_address(email.reply_to, "The reply-to address")
    if email.sender == Email.Sender.FIXED and not email.from_email:
        raise ValidationError("Choose a sender address.")
    if email.sender == Email.Sender.USER and email.from_user_id is None:
        raise ValidationError("Choose the user the email comes from.")
    if marketing and not (email.bu.postal_address or "").strip():
        raise ValidationError("Marketing email needs the business unit's postal address (Settings).")
    # A full merge against a sample prospect catches what static checks cannot.
    renderer = _renderer(email.bu, compiled)
    try:
        renderer.render(prospect={**rendering.sample_prospect(), **_custom_defaults(email.bu_id)},
                        user=rendering.user_context(None), unsubscribe_url="https://example.invalid/u",
                        preferences_url="https://example.invalid/p", link=lambda n: "https://example.invalid/l",
                        open_url="https://example.invalid/o.gif")
    except rendering.RenderError as exc:
        raise ValidationError(str(exc)) from None
    return compiled


EDITABLE = ("name", "purpose", "subject", "sender", "from_name", "from_email", "from_user", "reply_to",
            "body_format", "body", "text_body", "campaign")


def save_email(access, data: Mapping[str, Any], instance: Email | None = None) -> Email:
    """Create or update an email; it is saved only if it renders ([M24])."""
    email = instance or Email(bu=access.bu, created_by=access.user)
    for name in EDITABLE:
        if name in data:
            setattr(email, name, data[name])
    compile_for(email)
    with transaction.atomic():
        email.save()
        audit.record("email.saved", actor=access.user, bu=access.bu, obj=email, summary=email.name)
    return email


# --- Rendering for recipients --------------------------------------------------------------------------------------


def _bu_context(bu) -> dict[str, str]:
    return {"name": bu.name, "postal_address": bu.postal_address or "", "website": bu.website or ""}


def _renderer(bu, compiled: rendering.Compiled) -> rendering.Renderer:
    return rendering.Renderer(compiled, bu=_bu_context(bu), dynamic_blocks=rendering.dynamic_blocks(bu.pk))


def unsubscribe_url(bu_id: int, prospect_id: int, send_id: int = 0) -> str:
    return tracking_services.public_url(f"/u/{tokens.make('unsubscribe', bu_id=bu_id, prospect_id=prospect_id,
                                                           send_id=send_id)}")


def preferences_url(bu_id: int, prospect_id: int, send_id: int = 0) -> str:
    token = tokens.make("unsubscribe", bu_id=bu_id, prospect_id=prospect_id, send_id=send_id)
    return tracking_services.public_url(f"/email/preferences/{token}")


def preview(access, email: Email, prospect: Prospect | None = None) -> tuple[str, str, str]:
    """Subject, HTML and text as ``prospect`` would get them (links untracked)."""
    compiled = compile_for(email, track=False)
    renderer = _renderer(email.bu, compiled)
    if prospect is None:
        pdata, user = rendering.sample_prospect(), rendering.user_context(None)
    else:
        row = Prospect.objects.filter(pk=prospect.pk).values(*PROSPECT_VALUES).get()
        pdata = rendering.prospect_context(row, _custom_defaults(email.bu_id))
        user = rendering.user_context(prospect.assigned_user)
    try:
        return renderer.render(prospect=pdata, user=user,
                               unsubscribe_url=unsubscribe_url(email.bu_id, pdata.get("id") or 0),
                               preferences_url=preferences_url(email.bu_id, pdata.get("id") or 0),
                               link=lambda n: compiled.links[n - 1], open_url="")
    except rendering.RenderError as exc:
        raise ValidationError(str(exc)) from None


# --- Sends and the ledger ------------------------------------------------------------------------------------------


def _snapshot(email: Email, kind: str) -> dict:
    compiled = compile_for(email)
    return {**compiled.as_snapshot(), "purpose": email.purpose, "sender": email.sender,
            "from_name": email.from_name, "from_email": email.from_email,
            "from_user_id": email.from_user_id, "reply_to": email.reply_to, "email_name": email.name}


def _mailability(row: Mapping[str, Any], kind: str) -> str:
    """Why a prospect may not get this kind of email ([M26]); empty when mailable."""
    if row.get("is_deleted"):
        return "in the recycle bin"
    if not row.get("email"):
        return "no email address"
    if row.get("email_undeliverable"):
        return "undeliverable (bounced)"
    if kind not in ("operational", "test") and (row.get("opted_out") or row.get("do_not_email")):
        return "opted out"
    return ""


def _queue(send: EmailSend, prospect_ids: Iterable[int]) -> int:
    """Insert ledger rows for these prospects (once per (send, prospect), de-duplicated by address); returns the
    number newly queued. Unmailable recipients get a SKIPPED row with the reason."""
    from loopline.connector import selectors as connector_selectors  # [R36]

    queued = 0
    ids = list(dict.fromkeys(int(i) for i in prospect_ids))
    seen_addresses = set(Delivery.objects.filter(send=send).exclude(status=Delivery.Status.SKIPPED)
                         .values_list("address", flat=True)) if Delivery.objects.filter(send=send).exists() else set()
    for start in range(0, len(ids), QUEUE_CHUNK):
        chunk = ids[start:start + QUEUE_CHUNK]
        existing = set(Delivery.objects.filter(send=send, prospect_id__in=chunk).values_list("prospect_id", flat=True))
        rows = {r["id"]: r for r in Prospect.objects.filter(bu_id=send.bu_id, pk__in=chunk).values(
            "id", "email", "opted_out", "do_not_email", "email_undeliverable", "is_deleted")}
        new = []
        now = timezone.now()
        not_shared = connector_selectors.not_shared_prospect_ids(send.bu_id, chunk)
        for pid in chunk:
            if pid in existing or pid not in rows:
                continue
            row = rows[pid]
            address = (row["email"] or "").strip().lower()
            reason = connector_selectors.NOT_SHARED_REASON if pid in not_shared else _mailability(row, send.kind)
            if not reason and address in seen_addresses:
                reason = "duplicate address"
            if not reason:
                seen_addresses.add(address)
            new.append(Delivery(send=send, prospect_id=pid, address=address,
                                status=Delivery.Status.SKIPPED if reason else Delivery.Status.QUEUED,
                                reason=reason, next_run_at=None if reason else now))
            queued += 0 if reason else 1
        Delivery.objects.bulk_create(new, batch_size=1000, ignore_conflicts=True)
    EmailSend.objects.filter(pk=send.pk).update(total=Delivery.objects.filter(send=send).count())
    return queued


def send_to_prospects(bu, email_id: int, prospect_ids, *, kind: str, source: str, source_id: int | None,
                      dedupe_key: str) -> int:
    """Queue one delivery per (dedupe_key, prospect) exactly once (programs, autoresponders, 1:1, operational).
    Mailability is applied ([M26]); skipped recipients are recorded with a reason. Returns the number queued."""
    if kind not in KINDS - {"test"}:
        raise ValidationError(f"Unknown email kind {kind!r}")
    if not dedupe_key:
        raise ValidationError("A dedupe key is required")
    email = Email.objects.select_related("bu").get(pk=email_id, bu_id=bu.pk)
    with transaction.atomic():
        send = EmailSend.objects.select_for_update().filter(bu_id=bu.pk, dedupe_key=dedupe_key).first()
        if send is None:
            send = EmailSend.objects.create(bu_id=bu.pk, email=email, kind=kind, dedupe_key=dedupe_key, source=source,
                                            source_id=source_id, campaign=email.campaign,
                                            snapshot=_snapshot(email, kind), status=EmailSend.Status.SENDING,
                                            started_at=timezone.now())
        elif send.status != EmailSend.Status.SENDING:
            EmailSend.objects.filter(pk=send.pk).update(status=EmailSend.Status.SENDING, finished_at=None)
        queued = _queue(send, prospect_ids)
        if queued:
            from .tasks import process_send

            enqueue_on_commit(process_send, send_id=send.pk)
    return queued


def create_list_send(access, email: Email, include_list_ids: list[int], exclude_list_ids: list[int] | None = None,
                     *, scheduled_at: dt.datetime | None = None) -> EmailSend:
    """A list email ([M25]): to the lists, minus suppression lists, de-duplicated by address; now or scheduled."""
    from loopline.automation.models import ProspectList

    include = [int(i) for i in include_list_ids]
    exclude = [int(i) for i in exclude_list_ids or []]
    if not include:
        raise ValidationError("Choose at least one list to send to.")
    found = set(ProspectList.objects.filter(bu=access.bu, pk__in=include + exclude).values_list("pk", flat=True))
    if set(include + exclude) - found:
        raise ValidationError("One of the lists does not exist.")
    if email.purpose != Email.Purpose.MARKETING:
        raise ValidationError("List emails are marketing emails; this email is operational.")
    snapshot = _snapshot(email, "list")
    with transaction.atomic():
        send = EmailSend.objects.create(bu=access.bu, email=email, kind="list", include_list_ids=include,
                                        exclude_list_ids=exclude, scheduled_at=scheduled_at or timezone.now(),
                                        status=EmailSend.Status.SCHEDULED, created_by=access.user,
                                        campaign=email.campaign, snapshot=snapshot)
        audit.record("email.send_scheduled", actor=access.user, bu=access.bu, obj=send,
                     summary=f"{email.name} to lists {include}")
        if scheduled_at is None or scheduled_at <= timezone.now():
            from .tasks import start_send

            enqueue_on_commit(start_send, send_id=send.pk)
    return send


def cancel_send(access, send: EmailSend) -> None:
    """A scheduled send can be cancelled until it starts ([M30])."""
    n = EmailSend.objects.filter(pk=send.pk, bu=access.bu, status=EmailSend.Status.SCHEDULED).update(
        status=EmailSend.Status.CANCELLED, finished_at=timezone.now())
    if not n:
        raise ValidationError("This send has already started; it can no longer be cancelled.")
    audit.record("email.send_cancelled", actor=access.user, bu=access.bu, obj=send, summary=str(send))


ANALYZE_AFTER = 5000


def _refresh_planner_statistics() -> None:
    """PostgreSQL: statistics for the ledger and the prospects before a big send reads them. Autovacuum analyzes on
    its own schedule; a ledger that just grew by 100,000 rows (or prospects loaded minutes ago) can still carry the
    statistics of an empty table, and the planner then sorts the whole ledger for every claim of 250 rows and reads
    every prospect of the BU for every batch (tens of milliseconds each, while the connections wait)."""
    if connection.vendor != "postgresql":
        return
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        for model in (Delivery, Prospect):
            cursor.execute(f"ANALYZE {qn(model._meta.db_table)}")


def start_send(send_id: int) -> int:
    """Resolve the recipients of a scheduled list send and queue its ledger rows (idempotent)."""
    with transaction.atomic():
        send = EmailSend.objects.select_for_update().get(pk=send_id)
        if send.status != EmailSend.Status.SCHEDULED:
            return 0
        send.status = EmailSend.Status.SENDING
        send.started_at = timezone.now()
        send.save(update_fields=["status", "started_at"])
    from loopline.automation.selectors import list_recipient_ids

    ids = list(list_recipient_ids(send.bu, send.include_list_ids, send.exclude_list_ids))
    queued = _queue(send, ids)
    if queued >= ANALYZE_AFTER:
        _refresh_planner_statistics()
    from .tasks import process_send

    for _ in range(int(sending.setting("LOOPLINE_EMAIL_WORKERS_PER_SEND", 2))):
        enqueue_on_commit(process_send, send_id=send.pk)
    return queued


def start_due_sends() -> int:
    """Scheduler hook: start scheduled sends whose time has come, and resume sends whose workers went away."""
    from .tasks import process_send
    from .tasks import start_send as start_task

    n = 0
    for send_id in EmailSend.objects.filter(status=EmailSend.Status.SCHEDULED,
                                            scheduled_at__lte=timezone.now()).values_list("pk", flat=True):
        enqueue_on_commit(start_task, send_id=send_id)
        n += 1
    stale = timezone.now()
    for send_id in EmailSend.objects.filter(status=EmailSend.Status.SENDING).values_list("pk", flat=True):
        due = Delivery.objects.filter(send_id=send_id, status=Delivery.Status.QUEUED).filter(
            Q(locked_until__isnull=True) | Q(locked_until__lte=stale))
        if due.exists():
            enqueue_on_commit(process_send, send_id=send_id)
        elif not Delivery.objects.filter(send_id=send_id, status=Delivery.Status.QUEUED).exists():
            _finish(send_id)
    return n


def _finish(send_id: int) -> None:
    EmailSend.objects.filter(pk=send_id, status=EmailSend.Status.SENDING).update(
        status=EmailSend.Status.SENT, finished_at=timezone.now())


class _BatchRenderer:
    """Renders claimed ledger rows of one send: one query for the prospects, one for their users."""

    def __init__(self, send: EmailSend):
        self.send = send
        self.bu = send.bu
        snap = send.snapshot
        self.compiled = rendering.Compiled.from_snapshot(snap)
        self.renderer = _renderer(self.bu, self.compiled)
        self.custom_defaults = _custom_defaults(self.bu.pk)
        self.marketing = snap.get("purpose", "marketing") == "marketing" and send.kind != "operational"
        self.bounce_domain = self.domain = sending.bounce_domain()
        self.sent_at = timezone.now().timestamp()
        from loopline.accounts.models import User

        self._from_cache: dict[int | None, str] = {}
        self.fixed_user = None
        if snap.get("sender") == "user" and snap.get("from_user_id"):
            self.fixed_user = User.objects.filter(pk=snap["from_user_id"]).values(
                "first_name", "last_name", "email").first()
        for i, url in enumerate(self.compiled.links, start=1):
            tracking_services.register_link(self.bu.pk, send.pk, i, url)

    def _from(self, user: Mapping[str, Any] | None) -> str:
        # Per recipient only the assigned user can change it: formatted once per user.
        key = user.get("id") if user else None
        cached = self._from_cache.get(key)
        if cached is None:
            cached = self._from_cache[key] = self._format_from(user)
        return cached

    def _format_from(self, user: Mapping[str, Any] | None) -> str:
        snap = self.send.snapshot
        if snap.get("sender") == "user" and self.fixed_user:
            user = self.fixed_user
        if snap.get("sender") in ("user", "assigned") and user and user.get("email"):
            name = f"{user.get('first_name', '')} {user.get('last_name', '')}".strip()
            return sending.from_header(name, user["email"])
        if snap.get("from_email"):
            return sending.from_header(snap.get("from_name", ""), snap["from_email"])
        return settings.DEFAULT_FROM_EMAIL

    def __call__(self, rows: list[sending.LedgerRow]) -> Iterator[sending.Outgoing | sending.Result]:
        """Load the batch's prospects and users now (two queries, on the calling thread); the returned iterator
        renders one message or early result per row without touching the database (the engine runs it on its
        render thread)."""
        from loopline.accounts.models import User

        pids = [r.prospect_id for r in rows if r.prospect_id]
        # By primary key only, the business unit checked here: with "bu_id = X" in the query, PostgreSQL statistics
        # that lag a bulk load make the planner read every prospect of the BU for each batch.
        bu_id = self.bu.pk
        prospects = {p["id"]: p for p in Prospect.objects.filter(pk__in=pids).order_by().values(*PROSPECT_VALUES)
                     if p["bu_id"] == bu_id}
        user_ids = {p["assigned_user_id"] for p in prospects.values() if p["assigned_user_id"]}
        users = {u["id"]: u for u in User.objects.filter(pk__in=user_ids).values(
            "id", "first_name", "last_name", "email")} if user_ids else {}
        return self._render_rows(rows, prospects, users)

    def _render_rows(self, rows: list[sending.LedgerRow], prospects: Mapping[int, Mapping[str, Any]],
                     users: Mapping[int, Mapping[str, Any]]) -> Iterator[sending.Outgoing | sending.Result]:
        bu_id, send_id, kind = self.bu.pk, self.send.pk, self.send.kind
        link_fn = tracking_services.sign_click_url
        base_url = tracking_services.public_url("")
        for row in rows:
            p = prospects.get(row.prospect_id) if row.prospect_id else None
            if p is None and kind != "test":
                yield sending.Result(row.pk, "skipped", detail="prospect no longer exists")
                continue
            if p is not None:
                reason = _mailability(p, kind)
                if reason:
                    yield sending.Result(row.pk, "skipped", detail=reason, prospect_id=p["id"])
                    continue
            pid = p["id"] if p else 0
            pdata = rendering.prospect_context(p, self.custom_defaults) if p else rendering.sample_prospect()
            user = users.get(p["assigned_user_id"]) if p and p["assigned_user_id"] else None
            token = tokens.make("unsubscribe", bu_id=bu_id, prospect_id=pid, send_id=send_id)
            unsub = f"{base_url}/u/{token}"
            link: Callable[[int], str]
            if pid:
                def link(n: int, _pid: int = pid) -> str:
                    return link_fn(bu_id, send_id, _pid, n, sent_at=self.sent_at)
            else:
                def link(n: int) -> str:
                    return self.compiled.links[n - 1]
            try:
                subject, html, text = self.renderer.render(
                    prospect=pdata, user=rendering.user_context(user), unsubscribe_url=unsub,
                    preferences_url=f"{base_url}/email/preferences/{token}", link=link,
                    open_url=tracking_services.sign_open_url(bu_id, send_id, pid, sent_at=self.sent_at) if pid else "")
            except rendering.RenderError as exc:
                yield sending.Result(row.pk, "failed", detail=str(exc)[:300], prospect_id=pid or None)
                continue
            headers = [("X-Loopline-Send", str(send_id))]
            if self.marketing:
                mailto = f"mailto:unsubscribe@{self.bounce_domain}?subject=unsubscribe-{unsub.rsplit('/', 1)[-1]}"
                headers += [("List-Unsubscribe", f"<{unsub}>, <{mailto}>"),
                            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                            ("Precedence", "bulk")]
            verp = tokens.make("bounce", bu_id=bu_id, prospect_id=pid, send_id=send_id)
            msg = sending.Outgoing(delivery_id=row.pk, envelope_from=f"b-{verp}@{self.bounce_domain}",
                                   to=row.address, from_header=self._from(user), subject=subject, html=html,
                                   text=text, headers=headers, reply_to=self.send.snapshot.get("reply_to", ""),
                                   prospect_id=pid or None)
            msg.raw = sending.build_raw(msg, domain=self.domain)
            yield msg


def _sent_activities(send: EmailSend, prospect_ids: list[int], now: dt.datetime) -> None:
    """One "email sent" activity per recipient. Every column but the prospect is the same for the whole send, so
    the rows go in as one multi-row INSERT: Model instances would cost more than the insert itself."""
    if not prospect_ids:
        return
    meta = Activity._meta
    values = {"bu": send.bu_id, "type": ActivityType.EMAIL_SENT.value, "occurred_at": now,
              "title": send.snapshot.get("email_name", "")[:255], "url": "", "asset_type": "email_send",
              "asset_id": send.pk, "campaign": send.campaign_id, "is_machine": False, "points": 0, "data": {}}
    fields = [cast(Field, meta.get_field(name)) for name in ("prospect", *values)]
    qn = connection.ops.quote_name
    params = [f.get_db_prep_save(values[f.name], connection) for f in fields[1:]]
    row = "(%s, " + ", ".join(["%s"] * len(params)) + ")"
    for start in range(0, len(prospect_ids), 250):
        chunk = prospect_ids[start:start + 250]
        sql = (f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(str(f.column)) for f in fields)}) "
               f"VALUES {', '.join([row] * len(chunk))}")
        with connection.cursor() as cursor:
            cursor.execute(sql, [v for pid in chunk for v in (pid, *params)])


def _flush(send: EmailSend):
    def flush(results: list[sending.Result]) -> None:
        if not results:
            return
        now = timezone.now()
        by_outcome: dict[str, list[sending.Result]] = {}
        for r in results:
            by_outcome.setdefault(r.outcome, []).append(r)
        with transaction.atomic():
            sent = [r.delivery_id for r in by_outcome.get("sent", [])]
            if sent:
                Delivery.objects.filter(pk__in=sent).update(status=Delivery.Status.SENT, sent_at=now)
                if send.kind != "test":
                    _sent_activities(send, [r.prospect_id for r in by_outcome["sent"] if r.prospect_id], now)
            for outcome, status in (("failed", Delivery.Status.FAILED), ("bounced", Delivery.Status.FAILED),
                                    ("skipped", Delivery.Status.SKIPPED)):
                for r in by_outcome.get(outcome, []):
                    Delivery.objects.filter(pk=r.delivery_id).update(
                        status=status, reason=r.detail[:300], next_run_at=None, locked_until=None)
            for r in by_outcome.get("retry", []):
                # Never reached the commit point: safe to try again later.
                Delivery.objects.filter(pk=r.delivery_id, status=Delivery.Status.QUEUED).update(
                    locked_until=None, owner="", next_run_at=now + dt.timedelta(seconds=30), last_error=r.detail)
        for r in by_outcome.get("bounced", []):
            if r.prospect_id:
                record_bounce(send.bu_id, r.prospect_id, send_id=send.pk, hard=True, detail=r.detail,
                              source="smtp")

    return flush


def process_send(send_id: int, *, max_seconds: float | None = None, **engine_options) -> sending.Progress:
    """Work through the due ledger rows of a send (any number of workers may run this at once)."""
    send = EmailSend.objects.select_related("bu").get(pk=send_id)
    if send.status in (EmailSend.Status.CANCELLED, EmailSend.Status.DRAFT, EmailSend.Status.SCHEDULED):
        return sending.Progress()
    progress = sending.run_engine(send.pk, _BatchRenderer(send), _flush(send), max_seconds=max_seconds,
                                  **engine_options)
    if not Delivery.objects.filter(send_id=send.pk, status=Delivery.Status.QUEUED).exists():
        _finish(send.pk)
    return progress


def send_test(access, email: Email, to_address: str, prospect: Prospect | None = None) -> Delivery:
    """Send one test message now, merged as ``prospect`` (tracked links work when a prospect is chosen)."""
    to_address = (to_address or "").strip().lower()
    _check_address(to_address, "The test address")
    if not to_address:
        raise ValidationError("Enter an address for the test.")
    with transaction.atomic():
        send = EmailSend.objects.create(bu=access.bu, email=email, kind="test", created_by=access.user,
                                        snapshot=_snapshot(email, "test"), status=EmailSend.Status.SENDING,
                                        started_at=timezone.now())
        delivery = Delivery.objects.create(send=send, prospect=prospect, address=to_address)
        EmailSend.objects.filter(pk=send.pk).update(total=1)
    process_send(send.pk, connections=1, max_seconds=60)
    delivery.refresh_from_db()
    if delivery.status not in (Delivery.Status.SENT, Delivery.Status.COMMITTED):
        # A test is now or never: do not let the scheduler deliver it minutes later.
        Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.QUEUED).update(
            status=Delivery.Status.FAILED, next_run_at=None, locked_until=None, reason=delivery.last_error[:300])
        EmailSend.objects.filter(pk=send.pk).update(status=EmailSend.Status.FAILED, finished_at=timezone.now())
        raise ValidationError(f"The test was not sent: {delivery.reason or delivery.last_error or delivery.status}")
    return delivery


def send_operational(to_email: str, subject: str, text: str, html: str | None = None) -> None:
    """System mail (notifications, digests, password resets) through the configured mailer."""
    message = EmailMultiAlternatives(subject, text, settings.DEFAULT_FROM_EMAIL, [to_email])
    if html:
        message.attach_alternative(html, "text/html")
    mailers["default"].send_messages([message])


# --- Progress and reports ---------------------------------------------------------------------------------------


def send_counts(send_id: int) -> dict[str, int]:
    counts = dict(Delivery.objects.filter(send_id=send_id).values_list("status").annotate(n=Count("id"))
                  .values_list("status", "n"))
    return {s.value: counts.get(s.value, 0) for s in Delivery.Status}


# --- Unsubscribe, preferences, consent ([M27], [M28]) ----------------------------------------------------------------


def record_consent(prospect: Prospect, kind: str, method: str, *, consent_text: str = "", ip: str | None = None,
                   user_agent: str = "", data: dict | None = None) -> ConsentRecord:
    return ConsentRecord.objects.create(bu_id=prospect.bu_id, prospect=prospect, kind=kind, method=method,
                                        consent_text=consent_text, ip=ip or None, user_agent=user_agent[:300],
                                        data=data or {})


def prospect_for_token(token: str) -> tuple[Prospect, tokens.EmailToken] | None:
    tok = tokens.read(token, "unsubscribe")
    if tok is None:
        return None
    prospect = Prospect.objects.filter(pk=tok.prospect_id, bu_id=tok.bu_id, is_deleted=False).select_related(
        "bu").first()
    return (prospect, tok) if prospect else None


def opt_out(prospect: Prospect, *, method: str, send_id: int | None = None, ip: str | None = None,
            user_agent: str = "") -> bool:
    """Global opt-out, at once; through the prospects service so the connector's outbox carries it ([M27])."""
    with transaction.atomic():
        changed = prospect_services.update_prospect(prospect, {"opted_out": True}, source="system")
        record_consent(prospect, ConsentRecord.Kind.OPT_OUT, method, ip=ip, user_agent=user_agent,
                       data={"send_id": send_id} if send_id else {})
        if changed:
            prospect_services.record_activity(prospect.bu_id, ActivityType.UNSUBSCRIBE, prospect=prospect,
                                              asset_type="email_send" if send_id else "", asset_id=send_id or None,
                                              title="Unsubscribed", data={"method": method})
    return bool(changed)


def resubscribe(prospect: Prospect, *, consent_text: str, method: str = "preference_center", ip: str | None = None,
                user_agent: str = "") -> None:
    """Resubscribe needs fresh, recorded consent ([M27], [M28])."""
    if not consent_text.strip():
        raise ValidationError("Resubscribing needs your consent.")
    with transaction.atomic():
        prospect_services.update_prospect(prospect, {"opted_out": False}, source="system")
        record_consent(prospect, ConsentRecord.Kind.RESUBSCRIBE, method, consent_text=consent_text, ip=ip,
                       user_agent=user_agent)
        prospect_services.record_activity(prospect.bu_id, ActivityType.RESUBSCRIBE, prospect=prospect,
                                          title="Resubscribed", data={"method": method})


def set_list_preferences(prospect: Prospect, subscriptions: Mapping[int, bool], *, ip: str | None = None) -> None:
    from loopline.automation import services as automation_services

    with transaction.atomic():
        automation_services.set_list_subscriptions(prospect, dict(subscriptions))
        record_consent(prospect, ConsentRecord.Kind.LIST_CHANGE, "preference_center", ip=ip,
                       data={"lists": {str(k): v for k, v in subscriptions.items()}})


def double_opt_in_enabled(bu) -> bool:
    return bool((bu.settings or {}).get("double_opt_in"))


def request_double_opt_in(prospect: Prospect, *, consent_text: str, method: str, ip: str | None = None) -> str:
    """Record a pending opt-in and mail a signed confirmation link ([M28]). Returns the link."""
    token = tokens.make("confirm", bu_id=prospect.bu_id, prospect_id=prospect.pk)
    url = tracking_services.public_url(f"/email/confirm/{token}")
    record_consent(prospect, ConsentRecord.Kind.OPT_IN_PENDING, method, consent_text=consent_text, ip=ip)
    transaction.on_commit(lambda: send_operational(
        prospect.email, f"Please confirm your subscription to {prospect.bu.name}",
        f"Please confirm that you want email from {prospect.bu.name}:\n\n{url}\n\nIf you did not ask for this, "
        "ignore this message."))
    return url


def confirm_double_opt_in(token: str, *, ip: str | None = None) -> Prospect | None:
    tok = tokens.read(token, "confirm")
    if tok is None:
        return None
    prospect = Prospect.objects.filter(pk=tok.prospect_id, bu_id=tok.bu_id, is_deleted=False).first()
    if prospect is None:
        return None
    pending = ConsentRecord.objects.filter(prospect=prospect, kind=ConsentRecord.Kind.OPT_IN_PENDING).first()
    with transaction.atomic():
        if prospect.opted_out:
            prospect_services.update_prospect(prospect, {"opted_out": False}, source="system")
        record_consent(prospect, ConsentRecord.Kind.CONFIRMED, "double_opt_in",
                       consent_text=pending.consent_text if pending else "", ip=ip)
    return prospect


# --- Bounces and complaints ([M26], [M29]) ---------------------------------------------------------------------------


def record_bounce(bu_id: int, prospect_id: int, *, send_id: int | None, hard: bool, detail: str = "",
                  source: str = "dsn") -> None:
    """A hard bounce, or the fifth soft one, makes the prospect undeliverable."""
    prospect = Prospect.objects.filter(pk=prospect_id, bu_id=bu_id).first()
    if prospect is None:
        return
    with transaction.atomic():
        locked = Prospect.objects.select_for_update().get(pk=prospect.pk)
        soft = locked.soft_bounce_count + (0 if hard else 1)
        undeliverable = locked.email_undeliverable or hard or soft >= SOFT_BOUNCE_LIMIT
        Prospect.objects.filter(pk=prospect.pk).update(
            soft_bounce_count=min(soft, 32000), email_undeliverable=undeliverable, email_bounced_at=timezone.now())
        prospect_services.record_activity(
            bu_id, ActivityType.EMAIL_HARD_BOUNCE if hard else ActivityType.EMAIL_SOFT_BOUNCE, prospect=prospect,
            asset_type="email_send" if send_id else "", asset_id=send_id, title="Bounced",
            data={"detail": detail[:500], "source": source})


def record_complaint(bu_id: int, prospect_id: int, *, send_id: int | None, source: str = "feedback") -> None:
    """A spam complaint opts the prospect out ([M26])."""
    prospect = Prospect.objects.filter(pk=prospect_id, bu_id=bu_id).first()
    if prospect is None:
        return
    with transaction.atomic():
        prospect_services.record_activity(bu_id, ActivityType.SPAM_COMPLAINT, prospect=prospect,
                                          asset_type="email_send" if send_id else "", asset_id=send_id,
                                          title="Marked as spam", data={"source": source})
        opt_out(prospect, method=f"complaint:{source}", send_id=send_id)


def reset_mailability(access, prospect: Prospect) -> None:
    """Admins may reset the bounce counters ([M26])."""
    access.require("prospects.edit")
    Prospect.objects.filter(pk=prospect.pk, bu=access.bu).update(email_undeliverable=False, soft_bounce_count=0,
                                                                 email_bounced_at=None)
    audit.record("prospect.mailability_reset", actor=access.user, bu=access.bu, obj=prospect, summary=str(prospect))


def delivery_for_address(address: str) -> tuple[int, int, int] | None:
    """(bu, prospect, send) from a VERP bounce address b-TOKEN@domain."""
    local = address.split("@", 1)[0].lower()
    if not local.startswith("b-"):
        return None
    tok = tokens.read(local[2:], "bounce")
    return (tok.bu_id, tok.prospect_id, tok.send_id) if tok else None


# --- Visual builder, 1:1 compose, dynamic content editor (UI use cases) --------------------------------------------

import re  # noqa: E402  (this section is appended; the send path above is owned separately)

_MERGE_TAG_RE = rendering._JINJA_RE
_ENTITIES = (("&quot;", '"'), ("&#34;", '"'), ("&#039;", "'"), ("&#39;", "'"), ("&#x27;", "'"), ("&lt;", "<"),
             ("&gt;", ">"), ("&amp;", "&"))


def mjml_from_builder(source: str) -> str:
    """MJML exported by the visual builder, with merge fields restored: the browser's HTML serialiser may have
    entity-escaped quotes, ampersands or brackets inside ``{{ ... }}`` / ``{% ... %}`` (e.g. in an attribute value),
    which would otherwise break the merge fields ([M24])."""

    def unescape(match: re.Match) -> str:
        tag = match.group(0)
        for entity, char in _ENTITIES:
            tag = tag.replace(entity, char)
        return tag

    source = (source or "").strip()
    # Entity-escaped delimiters themselves are not expected, so only complete tags are touched.
    return _MERGE_TAG_RE.sub(unescape, source)


ONE_TO_ONE_FOOTER = ('<p style="font-size:12px;color:#666666">'
                     '<a href="{{ unsubscribe_url }}">Unsubscribe</a> · '
                     '<a href="{{ preferences_url }}">Email preferences</a></p>')


def message_to_html(message: str) -> str:
    """A plain-text 1:1 message as HTML paragraphs; text is escaped, merge fields are kept as written."""
    import html as html_lib

    out: list[str] = []
    for para in re.split(r"\n\s*\n", (message or "").strip().replace("\r\n", "\n")):
        pieces, last = [], 0
        for m in _MERGE_TAG_RE.finditer(para):
            pieces.append(html_lib.escape(para[last:m.start()], quote=False))
            pieces.append(m.group(0))
            last = m.end()
        pieces.append(html_lib.escape(para[last:], quote=False))
        text = "".join(pieces).strip()
        if text:
            out.append("<p>" + text.replace("\n", "<br>\n") + "</p>")
    return "\n".join(out)


def one_to_one_blocker(prospect: Prospect) -> str:
    """Why this prospect cannot get a 1:1 email ([M25], [M26]: 1:1 is marketing mail, so opted-out prospects get
    none); empty when mailable."""
    row = {"email": prospect.email, "opted_out": prospect.opted_out, "do_not_email": prospect.do_not_email,
           "email_undeliverable": prospect.email_undeliverable, "is_deleted": prospect.is_deleted}
    return _mailability(row, "one_to_one")


def build_one_to_one(access, prospect: Prospect, *, subject: str = "", message: str = "",
                     template: Email | None = None) -> Email:
    """An unsaved email holding a composed 1:1 message (or a copy of a template), sent from the acting user."""
    user = access.user
    if template is not None and template.bu_id != access.bu.pk:
        raise ValidationError("That email does not exist.")
    email = Email(bu=access.bu, created_by=user, sender=Email.Sender.USER, from_user=user, from_email=user.email,
                  from_name=user.get_full_name() or "", reply_to=user.email, is_archived=True,
                  purpose=Email.Purpose.MARKETING)
    if template is not None:
        email.subject = subject.strip() or template.subject
        email.body, email.body_format, email.text_body = template.body, template.body_format, template.text_body
        email.purpose = template.purpose
    else:
        if not subject.strip():
            raise ValidationError("Write a subject.")
        if not message.strip():
            raise ValidationError("Write a message.")
        email.subject = subject.strip()
        email.body, email.body_format = message_to_html(message) + "\n" + ONE_TO_ONE_FOOTER, Email.Format.HTML
    email.name = f"1:1 · {email.subject}"[:200]
    return email


def send_one_to_one(access, prospect: Prospect, *, subject: str = "", message: str = "",
                    template: Email | None = None, idempotency_key: str = "") -> tuple[EmailSend, Delivery]:
    """Send a 1:1 email now from the acting user to one prospect they can see ([M25]). The message is checked like
    any email before it is sent ([M24]); one idempotency key sends at most once (a double-clicked Send)."""
    from loopline.prospects.selectors import scoped_prospects

    access.require("one_to_one_email.create")
    if not scoped_prospects(access).filter(pk=prospect.pk).exists():
        raise ValidationError("You cannot email this prospect.")
    dedupe_key = f"one_to_one:{access.user.pk}:{idempotency_key}" if idempotency_key else ""
    existing = EmailSend.objects.filter(bu=access.bu, dedupe_key=dedupe_key).first() if dedupe_key else None
    if existing is None:
        reason = one_to_one_blocker(prospect)
        if reason:
            raise ValidationError(f"This prospect cannot get a 1:1 email: {reason}.")
        email = build_one_to_one(access, prospect, subject=subject, message=message, template=template)
        compile_for(email)
        with transaction.atomic():
            email.save()
            send_to_prospects(access.bu, email.pk, [prospect.pk], kind="one_to_one", source="one_to_one",
                              source_id=access.user.pk, dedupe_key=dedupe_key or f"one_to_one:email:{email.pk}")
            send = EmailSend.objects.get(bu=access.bu, email=email)
            EmailSend.objects.filter(pk=send.pk).update(created_by=access.user)
            send.created_by = access.user
            audit.record("email.one_to_one_sent", actor=access.user, bu=access.bu, obj=send,
                         summary=f"{email.subject} to {prospect.email}")
    else:
        send = existing
    # Sent now, in the request, so the user sees the outcome; the queued task finds nothing left to do.
    process_send(send.pk, connections=1, max_seconds=30)
    delivery = Delivery.objects.filter(send=send, prospect=prospect).first()
    if delivery is None:
        raise ValidationError("The email was not queued.")
    return send, delivery


def one_to_one_preview(access, prospect: Prospect, *, subject: str = "", message: str = "",
                       template: Email | None = None) -> tuple[str, str, str]:
    """Subject, HTML and text of a composed 1:1 email as this prospect would get them."""
    email = build_one_to_one(access, prospect, subject=subject, message=message, template=template)
    return preview(access, email, prospect)


# Dynamic content blocks ([M24])


def dynamic_content_fields(bu) -> list[str]:
    """Prospect fields a dynamic content block may depend on (standard fields, then custom api names)."""
    standard = [f for f in rendering.PROSPECT_FIELDS if f not in ("id", "full_name")]
    return standard + sorted(_custom_defaults(bu.pk).keys())


def _dynamic_call_re(key: str) -> re.Pattern:
    return re.compile(r"""dynamic\(\s*(["'])""" + re.escape(key) + r"""\1\s*\)""")


def dynamic_content_usage(bu, key: str) -> list[str]:
    """Names of the emails (and running or scheduled sends) that use the block ``key``."""
    pattern = _dynamic_call_re(key)
    names = [e.name for e in Email.objects.filter(bu=bu, is_archived=False).filter(
        Q(body__contains=key) | Q(subject__contains=key) | Q(text_body__contains=key)).only(
        "name", "body", "subject", "text_body") if pattern.search(f"{e.subject}\n{e.body}\n{e.text_body}")]
    for send in EmailSend.objects.filter(bu=bu, status__in=[EmailSend.Status.SCHEDULED, EmailSend.Status.SENDING]
                                         ).select_related("email"):
        snap = send.snapshot or {}
        if pattern.search(f"{snap.get('subject', '')}\n{snap.get('html', '')}\n{snap.get('text', '')}"):
            names.append(f"{send.email.name} (send #{send.pk})")
    return names


def save_dynamic_content(access, data: Mapping[str, Any], variations: Iterable[Mapping[str, Any]],
                         instance=None):
    """Create or update a dynamic content block: unique key per BU, a known field, one variation per value; all
    HTML sanitised with nh3 on save, so what the editor shows is what is sent ([M24])."""
    from django.utils.text import slugify

    from .models import DynamicContent

    block = instance or DynamicContent(bu=access.bu)
    name = str(data.get("name") or "").strip()
    key = str(data.get("key") or "").strip()
    field = str(data.get("field") or "").strip()
    if not name:
        raise ValidationError("Give the block a name.")
    if not key or slugify(key) != key:
        raise ValidationError("The key may use lower-case letters, digits, '-' and '_' only.")
    if field not in dynamic_content_fields(access.bu):
        raise ValidationError(f"Unknown prospect field {field!r}.")
    if DynamicContent.objects.filter(bu=access.bu, key=key).exclude(pk=block.pk).exists():
        raise ValidationError(f"Another block already uses the key {key!r}.")
    if instance is not None and instance.key != key:
        used = dynamic_content_usage(access.bu, instance.key)
        if used:
            raise ValidationError(f"The key cannot change while emails use it: {', '.join(used[:5])}.")
    cleaned: list[dict[str, str]] = []
    seen: set[str] = set()
    for v in variations:
        value = str(v.get("value") or "").strip()
        html = str(v.get("html") or "").strip()
        if not value and not html:
            continue
        if not value:
            raise ValidationError("Each variation needs the field value that picks it.")
        if value.lower() in seen:
            raise ValidationError(f"The value {value!r} has two variations (values are matched ignoring case).")
        seen.add(value.lower())
        cleaned.append({"value": value, "html": rendering.sanitize_html(html)})
    block.name, block.key, block.field = name, key, field
    block.variations = cleaned
    block.default_html = rendering.sanitize_html(str(data.get("default_html") or ""))
    with transaction.atomic():
        block.save()
        audit.record("email.dynamic_content_saved", actor=access.user, bu=access.bu, obj=block, summary=block.key)
    return block


def delete_dynamic_content(access, block) -> None:
    """Delete a block, refused while an email (or a running send) uses it."""
    used = dynamic_content_usage(access.bu, block.key)
    if used:
        raise ValidationError(f"“{block.name}” is used by {', '.join(used[:5])}"
                              f"{' and more' if len(used) > 5 else ''}; remove it from those emails first.")
    with transaction.atomic():
        audit.record("email.dynamic_content_deleted", actor=access.user, bu=access.bu, obj=block,
                     summary=block.key)
        block.delete()


def preview_dynamic_content(block, prospect: Prospect | None) -> dict[str, Any]:
    """Which variation a prospect gets: the field value, the matching variation's value (or None: the default)
    and the HTML, as the renderer picks it."""
    if prospect is None:
        pdata = rendering.sample_prospect()
    else:
        row = Prospect.objects.filter(pk=prospect.pk).values(*PROSPECT_VALUES).get()
        pdata = rendering.prospect_context(row, _custom_defaults(block.bu_id))
    value = str(pdata.get(block.field, "") or "").strip()
    chosen = rendering.dynamic_blocks(block.bu_id).get(block.key, {"variations": {}, "default": ""})
    matched = next((v["value"] for v in block.variations or [] if str(v.get("value", "")).strip().lower()
                    == value.lower()), None) if value else None
    html = chosen["variations"].get(value.lower(), chosen["default"])
    return {"value": value, "matched": matched, "html": html}
