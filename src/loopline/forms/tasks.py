"""Background work for forms: forwarding form-handler data to a third-party URL ([M5])."""

from __future__ import annotations

import ipaddress
import logging
import socket
from urllib.parse import urlencode, urlsplit

import httpx
from django.conf import settings

from loopline.platform.tasks import loopline_task

logger = logging.getLogger("loopline.forms")


class ForwardRefused(Exception):
    pass


def _check_public(url: str) -> None:
    """Refuse to forward to loopback/private/link-local addresses (server-side request forgery)."""
    if getattr(settings, "FORMS_FORWARD_ALLOW_PRIVATE", False):
        return
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise ForwardRefused(f"cannot resolve {host}") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved or addr.is_multicast:
            raise ForwardRefused(f"{host} resolves to a non-public address")


@loopline_task(retries=4, backoff=30, give_up_on=(ForwardRefused,))
def forward_submission(url: str, data: list) -> None:
    _check_public(url)
    body = urlencode([(str(k), str(v)) for k, v in data])
    response = httpx.post(url, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"},
                          timeout=10.0, follow_redirects=False)
    if response.status_code >= 500:
        raise RuntimeError(f"forward target answered {response.status_code}")
