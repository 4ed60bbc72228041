"""Notification pages (/notifications/): the in-app list, the live badge polled by every open page, preferences,
and outgoing webhooks with their delivery log. Thin: the work is in services and webhooks."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from loopline.accounts.decorators import member_required

from . import selectors, services, webhooks
from .models import Preference, WebhookDelivery, WebhookEndpoint


@member_required()
def index(request):
    access = request.access
    page = Paginator(selectors.notifications(request.user, access.bu), 50).get_page(request.GET.get("page"))
    response = render(request, "notifications/index.html", {"page": page})
    services.mark_read(request.user, access.bu, [n.pk for n in page.object_list])
    return response


@require_POST
@member_required()
def mark_all_read(request):
    services.mark_read(request.user, request.access.bu)
    if request.headers.get("HX-Request"):
        return _badge(request, None)
    return redirect("notifications:index")


def _int(value) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _badge(request, after: int | None) -> HttpResponse:
    """The badge; with ``after`` (the newest id the page knew) also the newer alerts as toasts."""
    latest, unread = selectors.badge_state(request.user, request.access.bu)
    fresh = selectors.newer_than(request.user, request.access.bu, after) if after is not None and latest > after else []
    return render(request, "notifications/_badge.html", {"latest": latest, "unread": unread, "fresh": fresh})


@member_required()
def live(request):
    """Polled every second by the header badge. 204 (nothing to swap) while nothing changed; otherwise the badge with
    the new unread count and the new alerts as toasts."""
    if "after" not in request.GET:
        return _badge(request, None)
    after, count = _int(request.GET.get("after")), _int(request.GET.get("unread"))
    latest, unread = selectors.badge_state(request.user, request.access.bu)
    if latest == after and unread == count:
        return HttpResponse(status=204)
    return _badge(request, after)


@member_required()
def preferences(request):
    access = request.access
    if request.method == "POST":
        services.save_preferences(request.user, access.bu, request.POST)
        messages.success(request, "Your notification choices are saved.")
        return redirect("notifications:preferences")
    pref = services.preferences(request.user, access.bu)
    rows = [{"kind": kind, "label": label, "app": services.wants(pref, kind, "app"),
             "email": services.wants(pref, kind, "email")} for kind, (label, _, _) in services.KINDS.items()]
    return render(request, "notifications/preferences.html", {"rows": rows, "pref": pref,
                                                              "digests": Preference.Digest.choices})


# --- Webhooks ----------------------------------------------------------------------------------------------------------


@member_required("settings.view")
def webhook_list(request):
    return render(request, "notifications/webhooks.html", {"endpoints": selectors.endpoints(request.access.bu)})


def _endpoint(request, pk: int) -> WebhookEndpoint:
    return get_object_or_404(WebhookEndpoint, pk=pk, bu=request.access.bu)


@member_required("settings.edit")
def webhook_edit(request, pk: int | None = None):
    access = request.access
    endpoint = _endpoint(request, pk) if pk else None
    errors: dict = {}
    data = {"name": endpoint.name if endpoint else "", "url": endpoint.url if endpoint else "",
            "events": endpoint.events if endpoint else ["prospect.created", "prospect.changed"]}
    if request.method == "POST":
        data = {"name": request.POST.get("name", ""), "url": request.POST.get("url", ""),
                "events": request.POST.getlist("events")}
        try:
            saved = webhooks.save_endpoint(access.bu, request.POST, endpoint, actor=request.user)
        except ValidationError as exc:
            errors = exc.message_dict
        else:
            messages.success(request, f"Webhook {saved.name} saved.")
            return redirect("notifications:webhook", pk=saved.pk)
    return render(request, "notifications/webhook_form.html", {
        "endpoint": endpoint, "data": data, "errors": errors, "events": webhooks.EVENTS,
    }, status=400 if errors else 200)


@member_required("settings.view")
def webhook_detail(request, pk: int):
    endpoint = _endpoint(request, pk)
    page = Paginator(selectors.deliveries(endpoint), 50).get_page(request.GET.get("page"))
    can_edit = request.access.can("settings.edit")
    return render(request, "notifications/webhook_detail.html", {
        "endpoint": endpoint, "page": page, "events": webhooks.EVENTS,
        "secret": webhooks.secret_of(endpoint) if can_edit else None,
    })


@require_POST
@member_required("settings.edit")
def webhook_action(request, pk: int):
    endpoint = _endpoint(request, pk)
    action = request.POST.get("action")
    if action == "test":
        webhooks.send_test(endpoint)
        messages.success(request, "A test event is on its way; refresh the log in a few seconds.")
    elif action in ("enable", "disable"):
        webhooks.set_active(endpoint, action == "enable", actor=request.user)
        messages.success(request, f"Webhook {'switched on' if action == 'enable' else 'switched off'}.")
    elif action == "rotate":
        webhooks.rotate_secret(endpoint, actor=request.user)
        messages.success(request, "A new signing secret was made. Update the receiving side now.")
    elif action == "delete":
        webhooks.delete_endpoint(endpoint, actor=request.user)
        messages.success(request, f"Webhook {endpoint.name} deleted.")
        return redirect("notifications:webhooks")
    else:
        messages.error(request, "Unknown action.")
    return redirect("notifications:webhook", pk=endpoint.pk)


@require_POST
@member_required("settings.edit")
def delivery_redeliver(request, pk: int, delivery_id: int):
    endpoint = _endpoint(request, pk)
    delivery = get_object_or_404(WebhookDelivery, pk=delivery_id, endpoint=endpoint)
    webhooks.redeliver(delivery)
    messages.success(request, "The delivery will be sent again.")
    return redirect("notifications:webhook", pk=endpoint.pk)
