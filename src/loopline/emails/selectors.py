"""Reads for emails: lists, what a program step or autoresponder may pick, reports ([M31])."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from loopline.prospects.models import Activity, ActivityType

from .models import Delivery, DynamicContent, Email, EmailSend


def emails(bu) -> QuerySet[Email]:
    return Email.objects.filter(bu=bu, is_archived=False)


def sendable_emails(bu) -> QuerySet[Email]:
    """Emails (templates) a program step or autoresponder may pick."""
    return Email.objects.filter(bu=bu, is_archived=False).order_by("name")


def get_email(bu, pk: int) -> Email:
    return Email.objects.get(bu=bu, pk=pk)


def sends(bu, *, email: Email | None = None) -> QuerySet[EmailSend]:
    qs = EmailSend.objects.filter(bu=bu).select_related("email")
    return qs.filter(email=email) if email else qs


def report(send_ids: list[int], bu_id: int) -> dict:
    """The email report for one send or several (a campaign): ledger counts plus activity counts ([M31])."""
    ledger = dict(Delivery.objects.filter(send_id__in=send_ids).values_list("status").annotate(n=Count("id"))
                  .values_list("status", "n"))
    sent = ledger.get("sent", 0) + ledger.get("committed", 0)
    acts = Activity.objects.filter(bu_id=bu_id, asset_type="email_send", asset_id__in=send_ids)

    def count(type_: int, *, human: bool | None = None, unique: bool = False) -> int:
        qs = acts.filter(type=type_)
        if human is True:
            qs = qs.filter(is_machine=False)
        if unique:
            return qs.values("prospect_id").distinct().count()
        return qs.count()

    hard = count(ActivityType.EMAIL_HARD_BOUNCE)
    soft = count(ActivityType.EMAIL_SOFT_BOUNCE)
    data: dict = {
        "queued": ledger.get("queued", 0), "sent": sent, "failed": ledger.get("failed", 0),
        "skipped": ledger.get("skipped", 0), "hard_bounces": hard, "soft_bounces": soft,
        "delivered": max(0, sent - hard - soft),
        "opens_total_raw": count(ActivityType.EMAIL_OPEN), "opens_unique_raw": count(ActivityType.EMAIL_OPEN,
                                                                                     unique=True),
        "opens_total_human": count(ActivityType.EMAIL_OPEN, human=True),
        "opens_unique_human": count(ActivityType.EMAIL_OPEN, human=True, unique=True),
        "clicks_total_raw": count(ActivityType.EMAIL_CLICK),
        "clicks_unique_raw": count(ActivityType.EMAIL_CLICK, unique=True),
        "clicks_total_human": count(ActivityType.EMAIL_CLICK, human=True),
        "clicks_unique_human": count(ActivityType.EMAIL_CLICK, human=True, unique=True),
        "unsubscribes": count(ActivityType.UNSUBSCRIBE), "complaints": count(ActivityType.SPAM_COMPLAINT),
    }
    clicks = (acts.filter(type=ActivityType.EMAIL_CLICK).values("url")
              .annotate(total=Count("id"), human=Count("id", filter=Q(is_machine=False)),
                        unique=Count("prospect_id", distinct=True)).order_by("-total")[:50])
    data["click_map"] = list(clicks)
    return data


def campaign_send_ids(bu, campaign_id: int) -> list[int]:
    return list(EmailSend.objects.filter(bu=bu, campaign_id=campaign_id).exclude(kind="test")
                .values_list("pk", flat=True))


def dynamic_contents(bu) -> QuerySet[DynamicContent]:
    return DynamicContent.objects.filter(bu=bu).order_by("name", "key")


def one_to_one_templates(bu) -> QuerySet[Email]:
    """Emails a user may start a 1:1 email from (any active email of the BU)."""
    return Email.objects.filter(bu=bu, is_archived=False).order_by("name")
