"""Tracking use cases: tracker settings, consent, visitor identification and merge ([M2]-[M4]), email tracking URLs
([M6]-[M7]), custom redirects and tracked files ([M5]). Views and the email issue call these."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from loopline.accounts.models import BusinessUnit
from loopline.platform import actions
from loopline.prospects import services as prospect_services
from loopline.prospects.models import Activity, ActivityType, Prospect, Visitor

from . import machine, tokens
from .models import CustomRedirect, EmailLink, EmailLinkActionRun, TrackedFile, TrackerConfig, is_valid_key

COOKIE_MAX_AGE = 365 * 24 * 3600


def cookie_name(bu_id: int) -> str:
    return f"visitor_id{bu_id}"


def consent_cookie_name(bu_id: int) -> str:
    return f"loopline_consent{bu_id}"


def public_url(path: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}{path}"


# --- Tracker settings --------------------------------------------------------------------------------------------


def tracker_config(bu: BusinessUnit) -> TrackerConfig:
    config = TrackerConfig.objects.filter(bu=bu).first()
    if config is None:
        try:
            with transaction.atomic():
                config = TrackerConfig.objects.create(bu=bu)
        except IntegrityError:
            config = TrackerConfig.objects.get(bu=bu)
    return config


_config_cache: dict[str, tuple[float, TrackerConfig | None]] = {}
_config_lock = threading.Lock()
CONFIG_TTL_S = 10.0


def config_by_key(key: str) -> TrackerConfig | None:
    """Hot path of the capture endpoint: cached per process for a few seconds."""
    now = time.monotonic()
    cached = _config_cache.get(key)
    if cached and now - cached[0] < CONFIG_TTL_S:
        return cached[1]
    config = TrackerConfig.objects.filter(key=key).first() if is_valid_key(key) else None
    with _config_lock:
        if len(_config_cache) > 10000:
            _config_cache.clear()
        _config_cache[key] = (now, config)
    return config


def tracker_config_for(bu_id: int) -> TrackerConfig:
    """Cached per process like ``config_by_key``; creates the BU's tracker settings on first use."""
    now = time.monotonic()
    cached = _config_cache.get(f"bu:{bu_id}")
    if cached and cached[1] is not None and now - cached[0] < CONFIG_TTL_S:
        return cached[1]
    config = tracker_config(BusinessUnit.objects.get(pk=bu_id))
    with _config_lock:
        _config_cache[f"bu:{bu_id}"] = (now, config)
    return config


def clean_origins(values: Iterable[str]) -> list[str]:
    origins = []
    for raw in values:
        value = raw.strip().rstrip("/")
        if not value:
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise ValidationError(f"'{value[:80]}' is not an origin like https://www.example.com")
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return sorted(set(origins))


def save_tracker_config(access, data: dict) -> TrackerConfig:
    access.require("settings.edit")
    config = tracker_config(access.bu)
    config.require_consent = bool(data.get("require_consent"))
    config.show_banner = bool(data.get("show_banner"))
    config.banner_text = str(data.get("banner_text", ""))[:300]
    config.allowed_origins = clean_origins(data.get("allowed_origins", []))
    config.save()
    _config_cache.clear()
    return config


def origin_allowed(config: TrackerConfig, origin: str | None) -> bool:
    """No Origin header (server-to-server) is allowed; a browser origin must be listed when the list is not empty."""
    if not origin:
        return True
    if not config.allowed_origins:
        return True
    return origin.rstrip("/").lower() in config.allowed_origins


def no_tracking_requested(request) -> bool:
    """``Sec-GPC: 1`` or ``DNT: 1``: the visitor asked not to be tracked ([M3])."""
    return request.headers.get("Sec-GPC", "").strip() == "1" or request.headers.get("DNT", "").strip() == "1"


def tracking_allowed(request, config: TrackerConfig) -> bool:
    """May a Loopline-served page (form, landing page, redirect) cookie and track this visitor?"""
    if no_tracking_requested(request):
        return False
    return not (config.require_consent and request.COOKIES.get(consent_cookie_name(config.bu_id)) != "1")


def parse_cookie(value) -> str | None:
    if not isinstance(value, str) or not value or len(value) > 40:
        return None
    try:
        return uuid.UUID(value).hex
    except ValueError:
        return None


def request_visitor_cookie(request, bu_id: int, *, param: str | None = None) -> str | None:
    """The visitor id of this browser: a ``vid`` passed by an embed or the tracker (the site's own first-party
    cookie, where page views are recorded), else Loopline's cookie (pages served by Loopline)."""
    return (parse_cookie(param) if param else None) or parse_cookie(request.COOKIES.get(cookie_name(bu_id)))


def set_visitor_cookie(response, bu_id: int, cookie: str) -> None:
    response.set_cookie(cookie_name(bu_id), cookie, max_age=COOKIE_MAX_AGE, samesite="Lax",
                        secure=settings.SESSION_COOKIE_SECURE, httponly=False)


# --- Identification ([M4]) ------------------------------------------------------------------------------------------


@transaction.atomic
def identify_visitor(bu_id: int, cookie: str, prospect: Prospect, *, ip: str | None = None,
                     user_agent: str = "") -> Visitor:
    """Attach the browser ``cookie`` to ``prospect``; its earlier anonymous activity moves to the prospect.

    One set-based UPDATE moves the activities. A prospect may own several visitors; a visitor that belonged to
    another prospect (a shared computer) moves to this one for what it does from now on, its history stays.
    """
    cookie_uuid = uuid.UUID(cookie)
    visitor = Visitor.objects.filter(bu_id=bu_id, cookie_id=cookie_uuid).first()
    if visitor is None:
        try:
            with transaction.atomic():
                visitor = Visitor.objects.create(bu_id=bu_id, cookie_id=cookie_uuid, prospect=prospect, ip=ip,
                                                 user_agent=user_agent[:500])
            return visitor
        except IntegrityError:
            visitor = Visitor.objects.get(bu_id=bu_id, cookie_id=cookie_uuid)
    if visitor.prospect_id == prospect.pk:
        return visitor
    Visitor.objects.filter(pk=visitor.pk).update(prospect=prospect)
    visitor.prospect = prospect
    moved = Activity.objects.filter(visitor_id=visitor.pk, prospect__isnull=True).update(prospect_id=prospect.pk)
    if moved:
        latest = (Activity.objects.filter(visitor_id=visitor.pk).order_by("-occurred_at")
                  .values_list("occurred_at", flat=True).first())
        if latest:
            Prospect.objects.filter(pk=prospect.pk).filter(
                Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=latest)).update(last_activity_at=latest)
    if visitor.campaign_id and not prospect.source_campaign_id:
        # First touch ([M33]): the campaign of the visitor's first tracked visit.
        prospect_services.update_prospect(prospect, {}, extra={"source_campaign_id": visitor.campaign_id},
                                          source="system")
    return visitor


# --- Email tracking ([M6], [M7]) --------------------------------------------------------------------------------------


def sign_open_url(bu_id: int, send_id: int, prospect_id: int, *, sent_at: float | None = None) -> str:
    """The 1-px open pixel URL for one recipient of one send."""
    token = tokens.make("open", bu_id=bu_id, send_id=send_id, prospect_id=prospect_id,
                        issued=int(sent_at) if sent_at is not None else None)
    return public_url(f"/e/o/{token}.gif")


_url_validator = URLValidator(schemes=["http", "https"])


def register_link(bu_id: int, send_id: int, link_id: int, url: str, *, honeypot: bool = False,
                  actions_list: list | None = None) -> EmailLink:
    """Store the target of link ``link_id`` of ``send_id`` (idempotent; a different URL for a stored link is refused)."""
    if not honeypot:
        _url_validator(url)
    link, created = EmailLink.objects.get_or_create(
        send_id=send_id, link_id=link_id,
        defaults={"bu_id": bu_id, "url": url, "is_honeypot": honeypot, "actions": actions_list or []},
    )
    if not created and (link.url != url or link.bu_id != bu_id):
        raise ValidationError(f"Link {link_id} of send {send_id} is already stored with another URL")
    return link


def sign_click_url(bu_id: int, send_id: int, prospect_id: int, link_id: int, url: str | None = None, *,
                   sent_at: float | None = None, honeypot: bool = False, actions_list: list | None = None) -> str:
    """The tracked click URL for one link of one send for one recipient. Pass ``url`` to store the target (once per
    (send, link); later calls for other recipients may omit it)."""
    if url is not None:
        register_link(bu_id, send_id, link_id, url, honeypot=honeypot, actions_list=actions_list)
    token = tokens.make("click", bu_id=bu_id, send_id=send_id, prospect_id=prospect_id, link_id=link_id,
                        issued=int(sent_at) if sent_at is not None else None)
    return public_url(f"/e/c/{token}")


def _email_prospect(tok: tokens.Token) -> Prospect | None:
    return Prospect.objects.filter(pk=tok.prospect_id, bu_id=tok.bu_id).first()


def record_open(token: str, request, *, implied_by_click: bool = False) -> Activity | None:
    tok = tokens.read(token, "open")
    if tok is None:
        return None
    prospect = _email_prospect(tok)
    if prospect is None:
        return None
    reason = machine.classify(request, issued=tok.issued)
    return prospect_services.record_activity(
        tok.bu_id, ActivityType.EMAIL_OPEN, prospect=prospect, asset_type="email_send", asset_id=tok.send_id,
        is_machine=bool(reason), data={"machine_reason": reason} if reason else {},
    )


def _has_open(prospect_id: int, send_id: int) -> bool:
    return Activity.objects.filter(prospect_id=prospect_id, type=ActivityType.EMAIL_OPEN, asset_type="email_send",
                                   asset_id=send_id).exists()


def record_click(token: str, request) -> tuple[str, Activity] | None:
    """Record a click and return (redirect URL, activity); None for a forged token or an unknown link (404)."""
    tok = tokens.read(token, "click")
    if tok is None:
        return None
    link = EmailLink.objects.filter(send_id=tok.send_id, link_id=tok.link_id, bu_id=tok.bu_id).first()
    if link is None:
        return None
    prospect = _email_prospect(tok)
    if prospect is None:
        return None
    now = timezone.now()
    reason = "honeypot link" if link.is_honeypot else machine.classify(request, issued=tok.issued)
    with transaction.atomic():
        if not reason:
            recent = Activity.objects.filter(
                prospect_id=prospect.pk, type=ActivityType.EMAIL_CLICK, asset_type="email_send", asset_id=tok.send_id,
                occurred_at__gte=now - dt.timedelta(seconds=machine.BURST_WINDOW_S))
            links = {a.data.get("link_id") for a in recent} | {tok.link_id}
            if len(links) >= machine.BURST_LINKS:
                reason = "every-link burst"
                recent.update(is_machine=True)
        if link.is_honeypot:
            Activity.objects.filter(
                prospect_id=prospect.pk, type__in=[ActivityType.EMAIL_CLICK, ActivityType.EMAIL_OPEN],
                asset_type="email_send", asset_id=tok.send_id, occurred_at__gte=now - dt.timedelta(seconds=60),
            ).update(is_machine=True)
        data = {"link_id": tok.link_id, "url": link.url[:500]}
        if reason:
            data["machine_reason"] = reason
        if not _has_open(prospect.pk, tok.send_id):
            # A click also counts as an open ([M6]).
            prospect_services.record_activity(
                tok.bu_id, ActivityType.EMAIL_OPEN, prospect=prospect, asset_type="email_send", asset_id=tok.send_id,
                is_machine=bool(reason), data={"implied_by_click": True}, occurred_at=now)
        activity = prospect_services.record_activity(
            tok.bu_id, ActivityType.EMAIL_CLICK, prospect=prospect, asset_type="email_send", asset_id=tok.send_id,
            url=link.url, is_machine=bool(reason), data=data, occurred_at=now)
        if not reason:
            cookie = request_visitor_cookie(request, tok.bu_id)
            if cookie:
                identify_visitor(tok.bu_id, cookie, prospect)
            if link.actions:
                _run_link_actions_once(link, prospect)
    target = link.url
    if not reason and not link.is_honeypot:
        target = _with_identify_param(tok.bu_id, prospect.pk, target)
    return target, activity


def _run_link_actions_once(link: EmailLink, prospect: Prospect) -> None:
    try:
        with transaction.atomic():
            EmailLinkActionRun.objects.create(link=link, prospect=prospect)
    except IntegrityError:
        return  # fired for this prospect and link already ([M10])
    actions.run_actions(link.actions, actions.ActionContext(bu=prospect.bu, prospect=prospect, source="email_link",
                                                            source_id=link.pk))


def _with_identify_param(bu_id: int, prospect_id: int, url: str) -> str:
    """Links to the BU's own tracked site carry a short-lived signed token; the tracker uses it to identify the
    browser there ([M4]). Other destinations are left untouched."""
    config = TrackerConfig.objects.filter(bu_id=bu_id).first()
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if config is None or origin not in (config.allowed_origins or []):
        return url
    token = tokens.make("identify", bu_id=bu_id, prospect_id=prospect_id)
    query = [*parse_qsl(parts.query, keep_blank_values=True), ("lp_id", token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- Custom redirects and tracked files ([M5]) ------------------------------------------------------------------------


def redirect_target(redirect: CustomRedirect) -> str:
    parts = urlsplit(redirect.destination)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    for key in ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"):
        value = getattr(redirect, key)
        if value and key not in present:
            query.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _visitor_for_request(request, bu_id: int, *, allowed: bool) -> tuple[Visitor | None, str | None]:
    """The request's visitor (created when tracking is allowed) and a cookie value to set, if a new one."""
    if not allowed:
        return None, None
    cookie = request_visitor_cookie(request, bu_id)
    new_cookie = None
    if cookie is None:
        cookie = new_cookie = uuid.uuid4().hex
    visitor, _ = Visitor.objects.get_or_create(
        bu_id=bu_id, cookie_id=uuid.UUID(cookie),
        defaults={"ip": request.META.get("REMOTE_ADDR") or None,
                  "user_agent": request.META.get("HTTP_USER_AGENT", "")[:500]})
    return visitor, new_cookie


def record_asset_hit(request, *, bu_id: int, type: int, asset_type: str, asset_id: int, title: str, url: str,
                     campaign_id: int | None, action_list: list) -> str | None:
    """A custom redirect click or file access: record it for the visitor (if tracking is allowed) and fire the
    asset's completion actions for a known prospect. Returns a new visitor cookie to set, if any."""
    config = TrackerConfig.objects.filter(bu_id=bu_id).first()
    allowed = tracking_allowed(request, config) if config else not no_tracking_requested(request)
    reason = machine.classify(request, email=False)
    with transaction.atomic():
        visitor, new_cookie = _visitor_for_request(request, bu_id, allowed=allowed)
        if visitor is None:
            return None
        prospect_services.record_activity(
            bu_id, type, visitor=visitor, title=title, url=url, asset_type=asset_type, asset_id=asset_id,
            campaign_id=campaign_id, is_machine=bool(reason), data={"machine_reason": reason} if reason else {})
        if visitor.prospect_id and not reason and action_list:
            prospect = Prospect.objects.get(pk=visitor.prospect_id)
            actions.run_actions(action_list, actions.ActionContext(bu=prospect.bu, prospect=prospect,
                                                                   source=asset_type, source_id=asset_id))
    return new_cookie


def save_redirect(access, data: dict, instance: CustomRedirect | None = None) -> CustomRedirect:
    access.require("forms.edit" if instance else "forms.create")
    obj = instance or CustomRedirect(bu=access.bu)
    for key, value in data.items():
        if key == "actions":
            value = actions.validate_actions(access.bu, value)
        setattr(obj, key, value)
    if obj.campaign_id and obj.campaign and obj.campaign.bu_id != access.bu.pk:
        raise ValidationError({"campaign": "No such campaign"})
    try:
        _url_validator(str(obj.destination or ""))  # web addresses only: no ftp:, javascript:, data:
    except ValidationError:
        raise ValidationError({"destination": "Enter a web address starting with http:// or https://"}) from None
    obj.full_clean(exclude=["bu", "key"])
    obj.save()
    return obj


def save_file(access, data: dict, instance: TrackedFile | None = None) -> TrackedFile:
    access.require("forms.edit" if instance else "forms.create")
    obj = instance or TrackedFile(bu=access.bu)
    upload = data.pop("file", None)
    for key, value in data.items():
        if key == "actions":
            value = actions.validate_actions(access.bu, value)
        setattr(obj, key, value)
    if upload is not None:
        obj.file = upload
        obj.filename = (getattr(upload, "name", "") or "file").rsplit("/", 1)[-1][:200]
        obj.content_type = (getattr(upload, "content_type", "") or "application/octet-stream")[:100]
    if not obj.file:
        raise ValidationError({"file": "Choose a file to upload"})
    obj.save()
    return obj


# --- Visitor hostnames (company guess on visitor pages) ----------------------------------------------------------

UNRESOLVED = "."  # tried, no reverse-DNS name: do not try again


def resolve_visitor_hostnames(limit: int = 200, timeout: float = 2.0) -> int:
    """Reverse-DNS look-ups for recent visitors without a hostname (scheduled; never on a request path). Look-ups run
    in a few threads with a deadline; a failure is remembered so it is not retried."""
    import socket
    from concurrent.futures import ThreadPoolExecutor, wait

    rows = list(Visitor.objects.filter(hostname="", ip__isnull=False).order_by("-last_seen_at")
                .values_list("pk", "ip")[:limit])
    if not rows:
        return 0

    def lookup(ip: str) -> str:
        try:
            return socket.gethostbyaddr(ip)[0][:255] or UNRESOLVED
        except (OSError, UnicodeError, ValueError):
            return UNRESOLVED

    pool = ThreadPoolExecutor(max_workers=8)
    futures = {pk: pool.submit(lookup, str(ip)) for pk, ip in rows}
    wait(futures.values(), timeout=timeout * 4)
    pool.shutdown(wait=False, cancel_futures=True)
    done = 0
    for pk, future in futures.items():
        if future.done() and not future.cancelled():
            Visitor.objects.filter(pk=pk, hostname="").update(hostname=future.result())
            done += 1
    return done
