"""Notifications ([M32]): in-app alerts (shown live in the open browser), emails, daily digests, starred prospects,
the notify-user action, and per-user preferences. Webhooks live in ``webhooks.py``."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import transaction
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from loopline.platform import events
from loopline.prospects.models import ActivityType, Prospect

from .models import Notification, Preference, StarredProspect

logger = logging.getLogger("loopline.notifications")

# kind -> (label shown on the preferences page, default in-app, default email)
KINDS: dict[str, tuple[str, bool, bool]] = {
    "prospect_activity": ("One of my prospects is active (visits, submits a form, clicks)", True, True),
    "starred_activity": ("A prospect I starred is active", True, False),
    "assignment": ("A prospect is assigned to me", True, True),
    "action": ("A form, rule or program asks to notify me", True, True),
    "system": ("System messages (for example a webhook was switched off)", True, True),
}

# Activities worth an alert ([M32]: visits, submits, clicks). Page views are covered by the visit that starts them.
ALERT_TYPES = {
    ActivityType.VISIT: "started a visit",
    ActivityType.FORM_SUCCESS: "submitted a form",
    ActivityType.FORM_HANDLER_SUCCESS: "submitted a form",
    ActivityType.LANDING_PAGE_SUCCESS: "submitted a landing page",
    ActivityType.EMAIL_CLICK: "clicked a link in an email",
    ActivityType.CUSTOM_REDIRECT_CLICK: "clicked a tracked link",
    ActivityType.FILE_ACCESS: "opened a file",
    ActivityType.OPPORTUNITY_CREATED: "has a new opportunity",
}


# --- Preferences -------------------------------------------------------------------------------------------------------


def preferences(user, bu) -> Preference:
    """The user's preferences in this BU (unsaved defaults if they never chose)."""
    pref = Preference.objects.filter(user=user, bu=bu).first()
    return pref or Preference(user=user, bu=bu, channels={}, digest=Preference.Digest.MINE)


def wants(pref: Preference, kind: str, channel: str) -> bool:
    _label_text, app_default, email_default = KINDS.get(kind, KINDS["system"])
    choice = (pref.channels or {}).get(kind, {})
    default = app_default if channel == "app" else email_default
    return bool(choice.get(channel, default))


def save_preferences(user, bu, data: Mapping[str, Any]) -> Preference:
    """``data``: form values ``<kind>-app`` / ``<kind>-email`` (checkboxes) and ``digest``."""
    digest = str(data.get("digest", Preference.Digest.MINE))
    if digest not in Preference.Digest.values:
        digest = Preference.Digest.MINE
    channels = {kind: {"app": bool(data.get(f"{kind}-app")), "email": bool(data.get(f"{kind}-email"))}
                for kind in KINDS}
    pref, _ = Preference.objects.update_or_create(user=user, bu=bu, defaults={"channels": channels, "digest": digest})
    return pref


# --- Sending -----------------------------------------------------------------------------------------------------------


def send_system_email(to: str, subject: str, text: str, html: str | None = None) -> None:
    """System mail through the emails app's operational sender when it exists, else Django's default mailer."""
    try:
        from loopline.emails import services as email_services

        sender = getattr(email_services, "send_operational", None)
    except ImportError:
        sender = None
    if sender is not None:
        sender(to, subject, text, html)
        return
    from django.core.mail import send_mail

    send_mail(subject, text, settings.DEFAULT_FROM_EMAIL, [to], html_message=html)


def _send_quietly(to: str, subject: str, text: str) -> None:
    try:
        send_system_email(to, subject, text)
    except Exception:  # a mail server hiccup must not break the caller; the in-app alert is there anyway
        logger.exception("notification email to %s failed", to)


def absolute(url: str) -> str:
    base = str(getattr(settings, "PUBLIC_BASE_URL", "") or "").rstrip("/")
    return f"{base}{url}" if url.startswith("/") and base else url


def notify(user, bu, *, kind: str, title: str, body: str = "", url: str = "", prospect_id: int | None = None,
           email: bool = True) -> Notification | None:
    """Tell a user something: in-app (visible live in their open browser) and by email, per their preferences."""
    pref = preferences(user, bu)
    notification = None
    if wants(pref, kind, "app"):
        notification = Notification.objects.create(bu_id=bu.pk, user=user, kind=kind, title=title[:200],
                                                   body=body[:5000], url=url[:500], prospect_id=prospect_id)
    if email and user.email and wants(pref, kind, "email"):
        text = f"{body}\n\n{absolute(url)}\n" if url else f"{body}\n"
        text += f"\nChange which notifications you get: {absolute('/notifications/preferences/')}\n"
        to, subject = user.email, f"Loopline: {title}"[:200]
        transaction.on_commit(lambda: _enqueue_email(to, subject, text))
    return notification


def _enqueue_email(to: str, subject: str, text: str) -> None:
    from . import tasks

    try:
        tasks.send_notification_email.enqueue(to=to, subject=subject, text=text)
    except Exception:
        logger.exception("could not queue a notification email; sending now")
        _send_quietly(to, subject, text)


def _prospect_url(prospect_id: int) -> str:
    try:
        return reverse("prospects:detail", args=[prospect_id])
    except NoReverseMatch:
        return f"/prospects/{prospect_id}/"


def _label(p: Mapping[str, Any]) -> str:
    name = f"{p.get('first_name') or ''} {p.get('last_name') or ''}".strip()
    who = f"{name} ({p['email']})" if name and p.get("email") else (name or p.get("email") or f"Prospect {p['id']}")
    return who + (f" from {p['company']}" if p.get("company") else "")


def _members(bu_id: int, user_ids: set[int]) -> dict[int, Any]:
    from loopline.accounts.models import Membership

    return {m.user_id: m.user for m in Membership.objects.filter(bu_id=bu_id, user_id__in=user_ids,
                                                                 user__is_active=True).select_related("user")}


def on_activity_recorded(event: events.ActivityRecorded) -> None:
    """Real-time alerts ([M32]): the assigned user, and every user who starred the prospect."""
    if event.prospect_id is None or event.is_machine or event.type not in ALERT_TYPES:
        return
    prospect = Prospect.objects.filter(pk=event.prospect_id, is_deleted=False).values(
        "id", "first_name", "last_name", "email", "company", "assigned_user_id", "bu_id").first()
    if prospect is None:
        return
    starred = set(StarredProspect.objects.filter(prospect_id=event.prospect_id).values_list("user_id", flat=True))
    assigned = prospect["assigned_user_id"]
    recipients = starred | ({assigned} if assigned else set())
    if not recipients:
        return
    from loopline.accounts.models import BusinessUnit

    bu = BusinessUnit(pk=event.bu_id)
    what = ALERT_TYPES[ActivityType(event.type)]
    title = f"{_label(prospect)} {what}"
    detail = str((event.data or {}).get("url") or (event.data or {}).get("title") or "")
    for user_id, user in _members(event.bu_id, recipients).items():
        kind = "prospect_activity" if user_id == assigned else "starred_activity"
        notify(user, bu, kind=kind, title=title, body=f"{title}.{' ' + detail if detail else ''}",
               url=_prospect_url(event.prospect_id), prospect_id=event.prospect_id)


def on_prospect_changed(event: events.ProspectChanged) -> None:
    """Assignment emails ([M32]): tell the new owner (unless they assigned it to themselves). The prospect page's
    star makes the person who starred it follow the prospect; un-starring stops everyone following it."""
    if "starred" in event.changed_fields:
        _follow_star(event)
    if "assigned_user" not in event.changed_fields:
        return
    prospect = Prospect.objects.filter(pk=event.prospect_id).values(
        "id", "first_name", "last_name", "email", "company", "assigned_user_id").first()
    if not prospect or not prospect["assigned_user_id"] or prospect["assigned_user_id"] == event.actor_id:
        return
    user = _members(event.bu_id, {prospect["assigned_user_id"]}).get(prospect["assigned_user_id"])
    if user is None:
        return
    from loopline.accounts.models import BusinessUnit

    title = f"{_label(prospect)} is now assigned to you"
    notify(user, BusinessUnit(pk=event.bu_id), kind="assignment", title=title, body=title + ".",
           url=_prospect_url(event.prospect_id), prospect_id=event.prospect_id)


# --- Starred prospects -------------------------------------------------------------------------------------------------


def _follow_star(event: events.ProspectChanged) -> None:
    starred = Prospect.objects.filter(pk=event.prospect_id).values_list("starred", flat=True).first()
    if starred and event.actor_id:
        StarredProspect.objects.get_or_create(user_id=event.actor_id, prospect_id=event.prospect_id)
    elif not starred:
        StarredProspect.objects.filter(prospect_id=event.prospect_id).delete()


def set_starred(user, prospect: Prospect, starred: bool) -> bool:
    if starred:
        StarredProspect.objects.get_or_create(user=user, prospect=prospect)
    else:
        StarredProspect.objects.filter(user=user, prospect=prospect).delete()
    return starred


# --- Reading state -----------------------------------------------------------------------------------------------------


def mark_read(user, bu, ids: list[int] | None = None) -> int:
    qs = Notification.objects.filter(user=user, bu=bu, read_at__isnull=True)
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    return qs.update(read_at=timezone.now())


def prune(days: int = 90) -> int:
    cutoff = timezone.now() - dt.timedelta(days=days)
    return Notification.objects.filter(created_at__lt=cutoff).delete()[0]


# --- Daily digests -----------------------------------------------------------------------------------------------------


def send_digests(now: dt.datetime | None = None) -> int:
    """One email per user and BU who wants a digest and whose (or all) prospects were active in the last day."""
    from loopline.accounts.models import Membership

    now = now or timezone.now()
    since = now - dt.timedelta(days=1)
    sent = 0
    for membership in Membership.objects.filter(user__is_active=True).select_related("user", "bu"):
        user, bu = membership.user, membership.bu
        pref = preferences(user, bu)
        if pref.digest == Preference.Digest.NONE or not user.email:
            continue
        if pref.last_digest_at and pref.last_digest_at > now - dt.timedelta(hours=20):
            continue  # already sent today (a retried task sends nothing twice)
        prospects = Prospect.objects.filter(bu=bu, is_deleted=False, last_activity_at__gte=since)
        sees_all = membership.role.prospect_scope == "all"
        if pref.digest == Preference.Digest.MINE or not sees_all:
            prospects = prospects.filter(assigned_user=user)
        total = prospects.count()
        if not total:
            continue
        rows = list(prospects.order_by("-score").values("id", "first_name", "last_name", "email", "company",
                                                        "score", "grade")[:25])
        scope = "your prospects" if pref.digest == Preference.Digest.MINE or not sees_all else "prospects"
        lines = [f"{total} of {scope} in {bu.name} were active in the last 24 hours. The most engaged:", ""]
        lines += [f"- {_label(r)} — score {r['score']}, grade {r['grade']}: {absolute(_prospect_url(r['id']))}"
                  for r in rows]
        lines += ["", f"Change or stop this digest: {absolute('/notifications/preferences/')}"]
        with transaction.atomic():
            Preference.objects.update_or_create(user=user, bu=bu, defaults={
                "last_digest_at": now, "channels": pref.channels, "digest": pref.digest})
            _send_quietly(user.email, f"Loopline daily digest: {total} active {scope}", "\n".join(lines))
        sent += 1
    return sent


# --- The notify-user action ([M10], [M19]) -----------------------------------------------------------------------------


def _run_notify_action(ctx, params) -> str:
    from loopline.accounts.models import User

    user = User.objects.get(pk=params["user_id"])
    p = ctx.prospect
    what = (ctx.source or "step").replace("_", " ")
    title = f"{p.full_name or p.email or p.pk} completed a {what}"
    body = f"{p.full_name or p.email} ({p.email}) completed {what}" + (f" #{ctx.source_id}" if ctx.source_id else "")
    notify(user, ctx.bu, kind="action", title=title, body=body + ".", url=_prospect_url(p.pk), prospect_id=p.pk)
    return f"notified {user.email}"


def register_actions() -> None:
    from loopline.platform import actions

    existing = actions.REGISTRY.get("notify_user")
    if existing is None:
        return
    actions.register(actions.ActionType("notify_user", "Notify user", existing.validate, _run_notify_action))
