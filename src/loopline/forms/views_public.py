"""Public form, form handler and landing page endpoints. No login, no CSRF cookie (they are embedded on other sites):
spam defence is a honeypot field, per-IP rate limits and an optional challenge. Never a 500 for client input."""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.csrf import csrf_exempt

from loopline.platform.tasks import enqueue_on_commit
from loopline.tracking import services as tracking_services
from loopline.tracking.capture import limiter
from loopline.tracking.models import is_valid_key

from . import services
from .models import Form, FormHandler, LandingPage
from .tasks import forward_submission

logger = logging.getLogger("loopline.forms")

HONEYPOT = "lp_website"


def _ip(request) -> str:
    return request.META.get("REMOTE_ADDR") or ""


def _submitter(request, bu_id: int, *, kiosk: bool = False, vid: str | None = None) -> services.Submitter:
    cookie = None
    if not kiosk:
        config = tracking_services.tracker_config_for(bu_id)
        if tracking_services.tracking_allowed(request, config):
            cookie = tracking_services.request_visitor_cookie(request, bu_id, param=vid)
    return services.Submitter(ip=_ip(request) or None,
                              user_agent=request.headers.get("User-Agent", "")[:500].replace("\x00", ""),
                              cookie=cookie)


def _frame_headers(response, bu_id: int):
    config = tracking_services.tracker_config_for(bu_id)
    ancestors = " ".join(config.allowed_origins) if config.allowed_origins else "*"
    response["Content-Security-Policy"] = f"frame-ancestors 'self' {ancestors}"
    return response


def _form_rate_ok(request, key: str) -> bool:
    per_minute = float(getattr(settings, "FORMS_RATE_PER_MINUTE", 10))
    return limiter.allow(f"{key}:{_ip(request)}", rate=per_minute / 60.0, burst=per_minute)


def _render_form_page(request, form, *, template="forms/public_form.html", landing_page=None, result=None,
                      submitter=None, status=200, extra=None):
    prospect = services.known_prospect(form.bu_id, submitter.cookie if submitter else None)
    question, challenge_token = services.new_challenge() if form.captcha else ("", "")
    errors = result.errors if result else {}
    values = result.values if result else {}
    rows = []
    for f in services.visible_fields(form, prospect):
        if f.kind == "hidden":
            continue
        value = values.get(f.input_name, "")
        rows.append({"field": f, "name": f.input_name, "value": value, "errors": errors.get(f.input_name, []),
                     "checked": value not in ("", "no", "0", "off", "false")})
    context = {
        "form": form, "rows": rows, "has_errors": bool(errors), "form_errors": errors.get("__all__", []),
        "challenge_errors": errors.get("lp_challenge", []), "honeypot": HONEYPOT, "question": question,
        "challenge_token": challenge_token, "vid": submitter.cookie if submitter else "",
        "page": landing_page, "embed": request.GET.get("embed") == "1" or request.POST.get("lp_embed") == "1",
        **(extra or {}),
    }
    response = render(request, template, context, status=status)
    return _frame_headers(response, form.bu_id)


def _success_response(request, form, *, submitter, landing_page=None, template="forms/public_form.html"):
    if form.redirect_url:
        if request.POST.get("lp_embed") == "1":
            # Inside an iframe: leave the frame (target _top) through a tiny page.
            response = render(request, "forms/redirect_top.html", {"url": form.redirect_url})
            return _frame_headers(response, form.bu_id)
        return HttpResponseRedirect(form.redirect_url)
    response = render(request, template, {"form": form, "thank_you": form.thank_you_content, "page": landing_page,
                                          "embed": request.POST.get("lp_embed") == "1"})
    return _frame_headers(response, form.bu_id)


def _maybe_set_cookie(request, response, bu_id: int, submitter: services.Submitter | None):
    """On Loopline-served pages, keep the browser's visitor cookie when tracking is allowed."""
    config = tracking_services.tracker_config_for(bu_id)
    if not tracking_services.tracking_allowed(request, config):
        return response
    cookie = submitter.cookie if submitter and submitter.cookie else None
    if cookie and request.COOKIES.get(tracking_services.cookie_name(bu_id)) != cookie:
        tracking_services.set_visitor_cookie(response, bu_id, cookie)
    return response


def _process(request, form: Form, *, landing_page: LandingPage | None, template: str):
    vid = request.POST.get("lp_vid") if request.method == "POST" else request.GET.get("vid")
    submitter = _submitter(request, form.bu_id, vid=vid)
    if request.method in ("GET", "HEAD"):
        if request.method == "HEAD":
            return _render_form_page(request, form, template=template, landing_page=landing_page)
        if submitter.cookie is None and tracking_services.tracking_allowed(
                request, tracking_services.tracker_config_for(form.bu_id)):
            import uuid

            submitter.cookie = uuid.uuid4().hex
        if submitter.cookie:
            services.record_form_view(form, submitter, url=request.build_absolute_uri(), landing_page=landing_page)
        response = _render_form_page(request, form, template=template, landing_page=landing_page, submitter=submitter)
        return _maybe_set_cookie(request, response, form.bu_id, submitter)
    if request.POST.get(HONEYPOT):
        # A bot filled the hidden field: look successful, store nothing.
        logger.info("honeypot submission dropped", extra={"form": form.pk, "ip": _ip(request)})
        return _success_response(request, form, submitter=submitter, landing_page=landing_page, template=template)
    if not _form_rate_ok(request, f"form:{form.pk}"):
        result = services.SubmissionResult(ok=False, errors={"__all__": ["Too many submissions from your network. "
                                                                       "Please wait a minute and try again."]},
                                           values={k: v[:500] for k, v in request.POST.items()})
        if limiter.allow(f"formerr:{_ip(request)}", rate=0.5, burst=10):
            services._record_error(form.bu_id, "landing_page" if landing_page else "form",
                                   landing_page.pk if landing_page else form.pk, errors=result.errors,
                                   echo=result.values, submitter=submitter, campaign_id=form.campaign_id, email=None)
        return _render_form_page(request, form, template=template, landing_page=landing_page, result=result,
                                 submitter=submitter, status=429)
    result = services.submit_form(form, request.POST, submitter, landing_page=landing_page,
                                  url=request.POST.get("lp_page", "")[:2000] or request.build_absolute_uri())
    if not result.ok:
        return _render_form_page(request, form, template=template, landing_page=landing_page, result=result,
                                 submitter=submitter, status=400)
    response = _success_response(request, form, submitter=submitter, landing_page=landing_page, template=template)
    return _maybe_set_cookie(request, response, form.bu_id, submitter)


@csrf_exempt
@xframe_options_exempt
def form_page(request, key: str):
    if not is_valid_key(key):
        raise Http404("No such form")
    form = get_object_or_404(Form.objects.select_related("bu"), key=key, is_archived=False)
    if request.method not in ("GET", "POST", "HEAD"):
        return HttpResponse("Method not allowed", status=405, content_type="text/plain")
    return _process(request, form, landing_page=None, template="forms/public_form.html")


def embed_js(request, key: str):
    if not is_valid_key(key):
        raise Http404("No such form")
    form = get_object_or_404(Form, key=key, is_archived=False)
    src = f"{settings.PUBLIC_BASE_URL}/f/{form.key}/"
    body = render(request, "forms/embed.js", {
        "config_json": json.dumps({"src": src, "bu": form.bu_id, "key": form.key, "origin": settings.PUBLIC_BASE_URL})
        .replace("<", "\\u003c"),
    }, content_type="text/javascript; charset=utf-8")
    body["Cache-Control"] = "public, max-age=300"
    body["Access-Control-Allow-Origin"] = "*"
    return body


@csrf_exempt
@xframe_options_exempt
def landing_page(request, key: str):
    if not is_valid_key(key):
        raise Http404("No such page")
    page = get_object_or_404(LandingPage.objects.select_related("form", "bu"), key=key, is_published=True)
    if request.method not in ("GET", "POST", "HEAD"):
        return HttpResponse("Method not allowed", status=405, content_type="text/plain")
    template = f"forms/landing_{page.layout}.html"
    if page.form is None or page.form.is_archived:
        if request.method == "POST":
            return HttpResponse("This page has no form", status=400, content_type="text/plain")
        return render(request, template, {"page": page})
    return _process(request, page.form, landing_page=page, template=template)


def _redirect_with(url: str, params: dict) -> HttpResponseRedirect:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return HttpResponseRedirect(urlunsplit(parts._replace(query=urlencode(query))))


@csrf_exempt
def form_handler(request, key: str):
    """An external form posting to Loopline ([M5]): urlencoded only; success/error redirects; kiosk mode."""
    if not is_valid_key(key):
        raise Http404("No such form handler")
    handler = get_object_or_404(FormHandler.objects.select_related("bu"), key=key)
    if request.method != "POST":
        response = HttpResponse("Post the form here (application/x-www-form-urlencoded).", status=405,
                                content_type="text/plain")
        response["Allow"] = "POST"
        return response
    content_type = request.content_type or ""
    if content_type != "application/x-www-form-urlencoded":
        return HttpResponse("Form handlers accept application/x-www-form-urlencoded only.", status=415,
                            content_type="text/plain")
    submitter = _submitter(request, handler.bu_id, kiosk=handler.kiosk, vid=request.POST.get("lp_vid"))
    if request.POST.get(HONEYPOT):
        return HttpResponseRedirect(handler.success_url)
    if not _form_rate_ok(request, f"handler:{handler.pk}"):
        return HttpResponse("Too many submissions; try again in a minute.", status=429, content_type="text/plain")
    result = services.submit_form_handler(handler, request.POST, submitter)
    if not result.ok:
        message = "; ".join(m for msgs in result.errors.values() for m in msgs)[:500]
        if handler.error_url:
            return _redirect_with(handler.error_url, {"errorMessage": message})
        return HttpResponse(f"The form could not be accepted: {message}", status=400, content_type="text/plain")
    if handler.forward_url:
        data = [(k, v) for k, values in request.POST.lists() for v in values if k not in ("lp_vid", HONEYPOT)]
        enqueue_on_commit(forward_submission, handler.forward_url, data[:200])
    response = HttpResponseRedirect(handler.success_url)
    if not handler.kiosk:
        _maybe_set_cookie(request, response, handler.bu_id, submitter)
    return response
