"""Outgoing HTTP to addresses users type in (webhooks): refuse targets inside our own network (SSRF).

A webhook URL is checked when it is saved and again at every delivery:

* only ``http``/``https``, no user name or password in the address;
* the host name is resolved and EVERY address it resolves to must be public — loopback, private, link-local
  (cloud metadata at 169.254.169.254), multicast, reserved, unspecified, shared (100.64/10) and documentation ranges are
  refused, for IPv4 and IPv6, including IPv4 hidden in IPv6 (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4);
* the connection goes to the address that was checked (the name is resolved once per delivery), so a DNS answer that
  changes between the check and the connect (DNS rebinding) cannot point the request somewhere else. The Host header,
  TLS server name and certificate check still use the name.

``LOOPLINE_WEBHOOK_ALLOW_PRIVATE`` (setting or environment, off by default) lets on-premises and development installs
send to private and loopback addresses; the scheme and credential rules still apply.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# The resolver, one place so a test can stand in for DNS (rebinding) without touching the socket module.
_getaddrinfo = socket.getaddrinfo


class UnsafeTarget(ValueError):
    """The address must not receive requests from Loopline; the message says why in plain words."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, never empty
    addresses: tuple[str, ...]  # checked, in resolver order


def allow_private() -> bool:
    configured = getattr(settings, "LOOPLINE_WEBHOOK_ALLOW_PRIVATE", None)
    if configured is not None:
        return bool(configured)
    return os.environ.get("LOOPLINE_WEBHOOK_ALLOW_PRIVATE", "").strip().lower() in {"1", "true", "yes", "on"}


def refusal(address: IPAddress) -> str | None:
    """Why this address is not a public one (None: it is)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal(embedded)
    checks = (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    )
    for attr, reason in checks:
        if getattr(address, attr):
            return reason
    return None if address.is_global else "non-public"


def parse(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL without credentials, or UnsafeTarget."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UnsafeTarget("The address is not a valid web address.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeTarget("Only http:// and https:// addresses can receive webhooks.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeTarget(
            "Leave user names and passwords out of the address (the signature authenticates us)."
        )
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeTarget("The address has no host name.")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def resolve(url: str) -> Target:
    """Parse, resolve and check ``url``; raises UnsafeTarget when any address it resolves to is refused."""
    scheme, host, port, path = parse(url)
    try:
        infos = _getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeTarget(f"The host name {host[:100]} could not be found.") from None
    addresses: list[str] = []
    for info in infos:
        text = str(info[4][0])
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise UnsafeTarget(f"The host name {host[:100]} could not be found.")
    if not allow_private():
        for text in addresses:
            reason = refusal(ipaddress.ip_address(text.split("%", 1)[0]))  # without an IPv6 zone ("%eth0")
            if reason:
                where = host if host == text else f"{host[:100]} resolves to {text}, which"
                raise UnsafeTarget(
                    f"{where} is a {reason} address: webhooks only go to public internet addresses."
                )
    return Target(scheme, host, port, path, tuple(addresses))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._addresses = target.addresses

    def connect(self) -> None:
        self.sock = _connect(self._addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._addresses = target.addresses

    def connect(self) -> None:
        sock = _connect(self._addresses, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _connect(addresses: tuple[str, ...], port: int, timeout) -> socket.socket:
    """A TCP connection to the first checked address that answers — never to a fresh DNS answer."""
    last: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=timeout)
        except OSError as exc:
            last = exc
    raise last or OSError("no address to connect to")


def post(
    url: str, body: bytes, headers: dict[str, str], *, timeout: float, read_limit: int = 500
) -> tuple[int, bytes]:
    """POST ``body`` to a checked ``url`` (UnsafeTarget when refused); redirects are answers, not followed.
    Returns (status, the first ``read_limit`` bytes of the answer). Network failures raise OSError or
    http.client.HTTPException."""
    target = resolve(url)
    connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = connection_class(target, timeout)
    try:
        conn.request("POST", target.path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(read_limit)
    finally:
        conn.close()
