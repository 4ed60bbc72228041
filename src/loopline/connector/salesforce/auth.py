"""OAuth 2.0 JWT bearer flow against the configured login URL ([R6]).

simple-salesforce's own login helpers are hard-wired to *.salesforce.com, so we mint the token ourselves and hand
simple-salesforce the instance URL and session id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
import requests


@dataclass(frozen=True)
class Token:
    access_token: str
    instance_url: str
    identity_url: str
    minted_at: float

    @property
    def org_id(self) -> str:
        parts = self.identity_url.rstrip("/").split("/")
        return parts[-2] if len(parts) >= 2 else ""

    @property
    def user_id(self) -> str:
        return self.identity_url.rstrip("/").split("/")[-1]


class AuthError(Exception):
    """The CRM refused to issue a token; ``error``/``description`` are the CRM's own words."""

    def __init__(self, error: str, description: str = ""):
        self.error = error
        self.description = description
        super().__init__(f"{error}: {description}" if description else error)


def build_assertion(consumer_key: str, username: str, audience: str, private_key_pem: str, *, ttl: int = 180) -> str:
    claims = {"iss": consumer_key, "sub": username, "aud": audience.rstrip("/"), "exp": int(time.time()) + ttl}
    return jwt.encode(claims, private_key_pem, algorithm="RS256")


def mint_token(
    login_url: str,
    consumer_key: str,
    username: str,
    private_key_pem: str,
    *,
    session: requests.Session | None = None,
    verify: bool | str = True,
    timeout: float = 30,
) -> Token:
    login_url = login_url.rstrip("/")
    assertion = build_assertion(consumer_key, username, login_url, private_key_pem)
    http = session or requests.Session()
    try:
        response = http.post(
            f"{login_url}/services/oauth2/token",
            data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
            timeout=timeout,
            verify=verify,
        )
    except requests.RequestException as exc:
        raise AuthError("connection_failed", f"Could not reach {login_url}: {exc.__class__.__name__}") from exc
    try:
        body = response.json()
    except ValueError:
        raise AuthError("bad_response", f"The token endpoint answered HTTP {response.status_code} without JSON") from None
    if response.status_code != 200 or "access_token" not in body:
        raise AuthError(str(body.get("error", f"http_{response.status_code}")), str(body.get("error_description", "")))
    return Token(
        access_token=body["access_token"],
        instance_url=body["instance_url"].rstrip("/"),
        identity_url=body.get("id", ""),
        minted_at=time.time(),
    )
