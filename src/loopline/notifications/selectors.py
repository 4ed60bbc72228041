"""Reads for the notification pages and the live badge."""

from __future__ import annotations

from django.db.models import Count, Max, Q

from .models import Notification, WebhookDelivery, WebhookEndpoint


def badge_state(user, bu) -> tuple[int, int]:
    """(latest notification id, unread count) — what the live badge compares against."""
    row = Notification.objects.filter(user=user, bu=bu).aggregate(
        latest=Max("id"), unread=Count("id", filter=Q(read_at__isnull=True)))
    return int(row["latest"] or 0), int(row["unread"] or 0)


def newer_than(user, bu, after: int, limit: int = 5) -> list[Notification]:
    return list(Notification.objects.filter(user=user, bu=bu, pk__gt=after).order_by("-id")[:limit])


def notifications(user, bu):
    return Notification.objects.filter(user=user, bu=bu).order_by("-id")


def endpoints(bu):
    return WebhookEndpoint.objects.filter(bu=bu).annotate(
        waiting=Count("deliveries", filter=Q(deliveries__status__in=["pending", "retrying"])))


def deliveries(endpoint: WebhookEndpoint):
    return WebhookDelivery.objects.filter(endpoint=endpoint).order_by("-id")
