"""Machine opens and clicks ([M7]): privacy proxies, security scanners, link checkers. Recorded, but flagged."""

from __future__ import annotations

import ipaddress
import re
import time
from functools import lru_cache

from django.conf import settings

# Apple Mail Privacy Protection fetches through Apple's network (17.0.0.0/8). Extend with TRACKING_MACHINE_NETWORKS.
DEFAULT_MACHINE_NETWORKS = ("17.0.0.0/8",)
SCANNER_UA = re.compile(
    r"bot\b|crawl|spider|scanner|barracuda|mimecast|proofpoint|urldefense|safelinks|symantec|forcepoint|"
    r"trendmicro|fireeye|python-requests|python-httpx|curl/|wget/|headlesschrome|go-http-client|java/|libwww|"
    r"okhttp|apache-httpclient|microsoft office|ms-office|preview",
    re.IGNORECASE,
)
FAST_AFTER_DELIVERY_S = 2.0
BURST_WINDOW_S = 5
BURST_LINKS = 3


@lru_cache(maxsize=1)
def _networks():
    extra = getattr(settings, "TRACKING_MACHINE_NETWORKS", ())
    return tuple(ipaddress.ip_network(n, strict=False) for n in (*DEFAULT_MACHINE_NETWORKS, *extra))


def _in_networks(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in _networks() if net.version == addr.version)


def classify(request, *, issued: int | None = None, now: float | None = None, email: bool = True) -> str:
    """Why this open/click looks automated ("" when it looks human). ``email``: also apply the mail-proxy rules."""
    if request.method == "HEAD":
        return "HEAD request"
    ua = request.META.get("HTTP_USER_AGENT", "")
    if email and _in_networks(request.META.get("REMOTE_ADDR")):
        return "privacy proxy network"
    if email and (not ua.strip() or ua.strip() == "Mozilla/5.0"):
        return "privacy proxy user agent"
    if SCANNER_UA.search(ua):
        return "scanner user agent"
    if issued and (now or time.time()) - issued < FAST_AFTER_DELIVERY_S:
        return "within 2 s of delivery"
    return ""
