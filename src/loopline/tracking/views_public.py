"""Public tracking endpoints. They face the internet: every input is validated, bad input gets a clear 4xx (pixels
return the image anyway), floods are rate limited, and nothing here answers 500 for anything a client sends."""

from __future__ import annotations

import functools
import json
import logging
import mimetypes
import os

from django.conf import settings
from django.core.signals import setting_changed
from django.db import DatabaseError
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.views.decorators.csrf import csrf_exempt

from loopline.campaigns.models import Campaign
from loopline.prospects.models import ActivityType

from . import capture, services
from .models import CustomRedirect, TrackedFile, is_valid_key

logger = logging.getLogger("loopline.tracking")

GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
NO_STORE = "no-store, no-cache, must-revalidate, max-age=0"


def _client_ip(request) -> str:
    return request.META.get("REMOTE_ADDR") or ""


@functools.cache
def _rate(name: str, default: float) -> float:
    """A rate limit from settings, else the environment (LOOPLINE_<NAME>), else the default. Read once (a missing
    setting costs an exception on every lookup); tests that override settings get it re-read."""
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(f"LOOPLINE_{name}") or default
    return float(value)


setting_changed.connect(lambda **kwargs: _rate.cache_clear(), weak=False, dispatch_uid="loopline.tracking.rates")


def _cors(response, request, config) -> HttpResponse:
    origin = request.headers.get("Origin")
    if origin and services.origin_allowed(config, origin):
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response["Access-Control-Allow-Headers"] = "Content-Type"
        response["Access-Control-Max-Age"] = "86400"
    response["Vary"] = "Origin"
    return response


def _json_error(request, config, status: int, message: str) -> HttpResponse:
    response = JsonResponse({"error": message}, status=status)
    return _cors(response, request, config) if config is not None else response


def tracker_js(request, key: str):
    config = services.config_by_key(key)
    if config is None:
        return HttpResponse("/* unknown tracker */", status=404, content_type="text/javascript")
    campaign = request.GET.get("campaign", "")
    campaign_id = None
    if campaign.isdigit() and len(campaign) < 18:
        campaign_id = Campaign.objects.filter(bu_id=config.bu_id, pk=int(campaign)).values_list("pk", flat=True).first()
    cfg = {
        "bu": config.bu_id, "key": config.key, "consent": config.require_consent, "banner": config.show_banner,
        "bannerText": config.banner_text, "campaign": campaign_id, "base": settings.PUBLIC_BASE_URL,
        "endpoint": f"{settings.PUBLIC_BASE_URL}/t/{config.key}/hit",
    }
    body = render_to_string("tracking/tracker.js", {
        "config_json": json.dumps(cfg).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
    })
    response = HttpResponse(body, content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "public, max-age=300"
    response["Access-Control-Allow-Origin"] = "*"
    return response


@csrf_exempt
def hit(request, key: str):
    """Single or batched hits: ``{"visitor": uuid, "hits": [{"type": "pageview", "url": ..., ...}]}``.

    The hot path: no database round trip (tracker settings are cached, rate limits lease allowance in chunks), headers
    read straight from the WSGI environ, a reply built without a JSON encoder."""
    config = services.config_by_key(key)
    if config is None:
        return _json_error(request, None, 404, "unknown tracker key")
    if request.method == "OPTIONS":
        return _cors(HttpResponse(status=204), request, config)
    if request.method != "POST":
        response = _json_error(request, config, 405, "POST hits to this URL")
        response["Allow"] = "POST, OPTIONS"
        return response
    meta = request.META
    origin = meta.get("HTTP_ORIGIN")
    if not services.origin_allowed(config, origin):
        return _json_error(request, config, 403, "origin not allowed for this tracker")
    try:
        length = int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _json_error(request, config, 400, "bad Content-Length")
    if length > capture.MAX_BODY_BYTES:
        return _json_error(request, config, 413, f"at most {capture.MAX_BODY_BYTES} bytes")
    if services.no_tracking_requested(request):
        # Sec-GPC / DNT: track nothing; answer normally so the page does not retry.
        return _cors(JsonResponse({"accepted": 0, "ignored": "no-tracking requested"}), request, config)
    ip = _client_ip(request)
    if not capture.limiter.allow(f"hit:{ip}", rate=_rate("TRACKING_RATE_PER_IP", 50),
                                 burst=_rate("TRACKING_BURST_PER_IP", 500)):
        response = _json_error(request, config, 429, "too many hits; slow down")
        response["Retry-After"] = "5"
        return response
    try:
        body = request.body
    except Exception:  # RequestDataTooBig and broken streams
        return _json_error(request, config, 413, "request body too large or unreadable")
    if len(body) > capture.MAX_BODY_BYTES:
        return _json_error(request, config, 413, f"at most {capture.MAX_BODY_BYTES} bytes")
    try:
        result = capture.capture(config, body, ip=ip, ua=meta.get("HTTP_USER_AGENT", ""))
    except capture.HitError as exc:
        return _json_error(request, config, 400, str(exc))
    except Exception:  # storage failed or timed out: nothing acknowledged, the tracker retries
        logger.exception("hit not stored")
        response = _json_error(request, config, 503, "not stored; retry later")
        response["Retry-After"] = "2"
        return response
    response = HttpResponse(b'{"accepted": %d, "rejected": %d}' % (result["accepted"], result["rejected"]),
                            content_type="application/json")
    if origin and services.origin_allowed(config, origin):
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response["Access-Control-Allow-Headers"] = "Content-Type"
        response["Access-Control-Max-Age"] = "86400"
    response["Vary"] = "Origin"
    return response


def _gif(status: int = 200) -> HttpResponse:
    response = HttpResponse(GIF, content_type="image/gif", status=status)
    response["Cache-Control"] = NO_STORE
    return response


def email_open(request, token: str):
    if request.method not in ("GET", "HEAD"):
        return _gif(405)
    if not capture.limiter.allow(f"open:{_client_ip(request)}", rate=_rate("TRACKING_EMAIL_RATE_PER_IP", 20),
                                 burst=200):
        return _gif(429)
    try:
        activity = services.record_open(token, request)
    except DatabaseError:
        logger.exception("open not recorded")
        return _gif(200)
    return _gif(200 if activity is not None else 404)


def email_click(request, token: str):
    if request.method not in ("GET", "HEAD"):
        return HttpResponse("Use GET", status=405, content_type="text/plain")
    if not capture.limiter.allow(f"click:{_client_ip(request)}", rate=_rate("TRACKING_EMAIL_RATE_PER_IP", 20),
                                 burst=200):
        return HttpResponse("Too many requests", status=429, content_type="text/plain")
    result = services.record_click(token, request)
    if result is None:
        raise Http404("No such link")
    response = HttpResponseRedirect(result[0])
    response["Cache-Control"] = NO_STORE
    response["Referrer-Policy"] = "no-referrer"
    return response


def _with_cookie(response, bu_id: int, cookie: str | None):
    if cookie:
        services.set_visitor_cookie(response, bu_id, cookie)
    return response


def custom_redirect(request, key: str):
    if not is_valid_key(key):
        raise Http404("No such link")
    redirect = get_object_or_404(CustomRedirect, key=key)
    if not capture.limiter.allow(f"redirect:{_client_ip(request)}", rate=_rate("TRACKING_EMAIL_RATE_PER_IP", 20),
                                 burst=200):
        return HttpResponse("Too many requests", status=429, content_type="text/plain")
    target = services.redirect_target(redirect)
    cookie = services.record_asset_hit(
        request, bu_id=redirect.bu_id, type=ActivityType.CUSTOM_REDIRECT_CLICK, asset_type="custom_redirect",
        asset_id=redirect.pk, title=redirect.name, url=target, campaign_id=redirect.campaign_id,
        action_list=redirect.actions)
    response = HttpResponseRedirect(target)
    response["Cache-Control"] = NO_STORE
    return _with_cookie(response, redirect.bu_id, cookie)


def tracked_file(request, key: str, filename: str = ""):
    if not is_valid_key(key):
        raise Http404("No such file")
    tracked = get_object_or_404(TrackedFile, key=key)
    if not capture.limiter.allow(f"file:{_client_ip(request)}", rate=_rate("TRACKING_EMAIL_RATE_PER_IP", 20),
                                 burst=200):
        return HttpResponse("Too many requests", status=429, content_type="text/plain")
    try:
        handle = tracked.file.open("rb")
    except (FileNotFoundError, OSError, ValueError):
        raise Http404("File missing") from None
    cookie = services.record_asset_hit(
        request, bu_id=tracked.bu_id, type=ActivityType.FILE_ACCESS, asset_type="file", asset_id=tracked.pk,
        title=tracked.name, url=request.build_absolute_uri(), campaign_id=tracked.campaign_id,
        action_list=tracked.actions)
    content_type = tracked.content_type or mimetypes.guess_type(tracked.filename)[0] or "application/octet-stream"
    response = FileResponse(handle, content_type=content_type, as_attachment=True, filename=tracked.filename)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "sandbox"
    return _with_cookie(response, tracked.bu_id, cookie)


@csrf_exempt
def ping(request):
    """The minimal Django view the capture benchmark compares against."""
    return HttpResponse(status=204)

