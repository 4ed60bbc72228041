"""Public email endpoints: one-click unsubscribe ([M27], RFC 8058), the preference center, double opt-in
confirmation and provider webhooks. No login, no cookies needed, rate limited, clear 4xx on garbage, never a 500."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from loopline.tracking import capture

from . import services

logger = logging.getLogger("loopline.emails")
RATE_PER_IP = 5.0
BURST = 60


def _ip(request) -> str:
    return request.META.get("REMOTE_ADDR") or ""


def _limited(request, what: str) -> HttpResponse | None:
    if not capture.limiter.allow(f"email-{what}:{_ip(request)}", rate=RATE_PER_IP, burst=BURST):
        return HttpResponse("Too many requests; try again in a minute.", status=429, content_type="text/plain")
    return None


def _not_found(request) -> HttpResponse:
    return render(request, "emails/public_message.html",
                  {"title": "Link not recognised", "message": "This link is not valid. It may have been altered "
                   "or cut off by your email program."}, status=404)


@csrf_exempt
def unsubscribe(request, token: str):
    """GET shows a confirmation page and changes nothing; POST (one-click, no cookies) unsubscribes at once, 200."""
    if request.method not in ("GET", "HEAD", "POST"):
        return HttpResponse("Use GET or POST", status=405, content_type="text/plain")
    limited = _limited(request, "unsubscribe")
    if limited:
        return limited
    found = services.prospect_for_token(token)
    if found is None:
        return _not_found(request)
    prospect, tok = found
    if request.method == "POST":
        one_click = request.POST.get("List-Unsubscribe") == "One-Click"
        services.opt_out(prospect, method="one_click" if one_click else "unsubscribe_page",
                         send_id=tok.send_id or None, ip=_ip(request) or None,
                         user_agent=request.META.get("HTTP_USER_AGENT", ""))
        return render(request, "emails/public_message.html", {
            "title": "You are unsubscribed", "bu": prospect.bu,
            "message": f"{prospect.email} will no longer get marketing email from {prospect.bu.name}.",
            "preferences_url": services.preferences_url(prospect.bu_id, prospect.pk, tok.send_id)})
    return render(request, "emails/unsubscribe_confirm.html", {"prospect": prospect, "bu": prospect.bu,
                                                               "token": token})


def _lists(prospect):
    try:
        from loopline.automation import selectors as automation_selectors
    except ImportError:
        return []
    public = list(automation_selectors.public_lists(prospect.bu))
    mine = {pl.pk: bool(pl.subscribed) for pl in automation_selectors.lists_for_prospect(prospect)}
    return [{"list": lst, "subscribed": mine.get(lst.pk, False)} for lst in public]


CONSENT_TEXT = "Yes, I want to receive marketing email from {bu}. I can unsubscribe at any time."


@csrf_exempt
def preferences(request, token: str):
    """The email preference center ([M27]): public lists, global opt-out, resubscribe with fresh consent."""
    if request.method not in ("GET", "HEAD", "POST"):
        return HttpResponse("Use GET or POST", status=405, content_type="text/plain")
    limited = _limited(request, "preferences")
    if limited:
        return limited
    found = services.prospect_for_token(token)
    if found is None:
        return _not_found(request)
    prospect, tok = found
    consent_text = CONSENT_TEXT.format(bu=prospect.bu.name)
    try:
        lists = _lists(prospect)
    except Exception:  # the lists app may not be ready; the global choice still works
        logger.exception("preference center lists unavailable")
        lists = []
    error = ""
    saved = False
    if request.method == "POST":
        ip = _ip(request) or None
        try:
            if request.POST.get("global") == "out":
                services.opt_out(prospect, method="preference_center", send_id=tok.send_id or None, ip=ip)
            elif prospect.opted_out:
                if request.POST.get("consent") != "yes":
                    raise ValidationError("To get email again, tick the consent box.")
                services.resubscribe(prospect, consent_text=consent_text, ip=ip,
                                     user_agent=request.META.get("HTTP_USER_AGENT", ""))
            if lists:
                wanted = {int(x) for x in request.POST.getlist("list") if x.isdigit()}
                services.set_list_preferences(prospect, {row["list"].pk: row["list"].pk in wanted for row in lists},
                                              ip=ip)
            saved = True
        except ValidationError as exc:
            error = " ".join(exc.messages)
        prospect.refresh_from_db()
        lists = _lists(prospect) if lists else lists
    else:
        from loopline.prospects import services as prospect_services
        from loopline.prospects.models import ActivityType

        prospect_services.record_activity(prospect.bu_id, ActivityType.PREFERENCE_PAGE_VIEW, prospect=prospect,
                                          title="Email preferences viewed")
    return render(request, "emails/preferences.html", {
        "prospect": prospect, "bu": prospect.bu, "lists": lists, "consent_text": consent_text, "error": error,
        "saved": saved}, status=400 if error else 200)


@csrf_exempt
def confirm(request, token: str):
    """Double opt-in ([M28]): GET shows a button (link scanners never confirm), POST confirms."""
    limited = _limited(request, "confirm")
    if limited:
        return limited
    if request.method == "POST":
        prospect = services.confirm_double_opt_in(token, ip=_ip(request) or None)
        if prospect is None:
            return _not_found(request)
        return render(request, "emails/public_message.html", {"title": "Subscription confirmed", "message":
                      f"Thank you. {prospect.email} is now subscribed."})
    if request.method not in ("GET", "HEAD"):
        return HttpResponse("Use GET or POST", status=405, content_type="text/plain")
    from . import tokens

    if tokens.read(token, "confirm") is None:
        return _not_found(request)
    return render(request, "emails/confirm.html", {"token": token})
