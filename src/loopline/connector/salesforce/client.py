"""The CRM client: simple-salesforce with our own token minting, re-mint on INVALID_SESSION_ID ([R6]),
the ``Sforce-Call-Options`` client id on every call ([R24]), and an API call counter read from
``Sforce-Limit-Info`` ([R27])."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession

from .auth import Token, mint_token

CALL_OPTIONS = "client=loopline"
T = TypeVar("T")


@dataclass(frozen=True)
class ClientConfig:
    login_url: str
    consumer_key: str
    username: str
    private_key_pem: str
    api_version: str = "59.0"
    ca_file: str = ""
    timeout: float = 60.0


@dataclass
class ApiUsage:
    used: int | None = None
    max: int | None = None
    calls: int = 0  # calls this client made


class CrmApiError(Exception):
    """An API call failed. ``code`` is Salesforce's errorCode (or HTTP_<status>/CONNECTION_ERROR/BAD_RESPONSE)."""

    def __init__(self, code: str, message: str, status: int | None = None, fields: list[str] | None = None):
        self.code = code
        self.message = message
        self.status = status
        self.fields = fields or []
        super().__init__(f"{code}: {message}")


def error_from_exception(exc: Exception) -> CrmApiError:
    if isinstance(exc, CrmApiError):
        return exc
    if isinstance(exc, SalesforceError):
        content = exc.content
        if isinstance(content, list) and content and isinstance(content[0], dict):
            first = content[0]
            return CrmApiError(str(first.get("errorCode") or first.get("statusCode") or f"HTTP_{exc.status}"),
                               str(first.get("message", "")), exc.status, list(first.get("fields") or []))
        text = content if isinstance(content, str) else repr(content)
        code = "SERVER_UNAVAILABLE" if exc.status == 503 else f"HTTP_{exc.status}"
        return CrmApiError(code, text[:500] or "no details", exc.status)
    if isinstance(exc, requests.Timeout):
        return CrmApiError("TIMEOUT", "The CRM did not answer in time")
    if isinstance(exc, requests.ConnectionError):
        return CrmApiError("CONNECTION_ERROR", f"Connection to the CRM failed: {exc.__class__.__name__}")
    if isinstance(exc, ValueError):  # JSON decoding of a garbage answer
        return CrmApiError("BAD_RESPONSE", "The CRM answered something that is not valid JSON")
    raise exc


class _Session(requests.Session):
    """A session whose own ``verify`` (the CRM's CA bundle) wins over REQUESTS_CA_BUNDLE from the environment;
    proxies from the environment still apply."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if isinstance(self.verify, str) and verify in (None, True):
            settings["verify"] = self.verify
        return settings


class CrmClient:
    def __init__(self, config: ClientConfig, *, token: Token | None = None,
                 minter: Callable[[ClientConfig, requests.Session], Token] | None = None):
        self.config = config
        self.usage = ApiUsage()
        self._lock = threading.Lock()
        self._session = _Session()
        self._session.headers["Sforce-Call-Options"] = CALL_OPTIONS
        if config.ca_file:
            self._session.verify = config.ca_file
        self._session.hooks["response"].append(self._on_response)
        self._minter = minter or _default_minter
        self._token = token
        self._sf: Salesforce | None = None

    # --- plumbing -------------------------------------------------------------------------------------------------
    def _on_response(self, response: requests.Response, *args, **kwargs) -> None:
        if "/services/oauth2/" in response.url:
            return
        self.usage.calls += 1
        info = response.headers.get("Sforce-Limit-Info", "")
        for part in info.split(","):
            key, _, value = part.strip().partition("=")
            if key == "api-usage" and "/" in value:
                used, _, maximum = value.partition("/")
                if used.isdigit() and maximum.isdigit():
                    self.usage.used, self.usage.max = int(used), int(maximum)

    @property
    def token(self) -> Token:
        if self._token is None:
            self._token = self._minter(self.config, self._session)
        return self._token

    @property
    def sf(self) -> Salesforce:
        if self._sf is None:
            token = self.token
            self._sf = Salesforce(instance_url=token.instance_url, session_id=token.access_token,
                                  version=self.config.api_version, session=self._session)
        return self._sf

    def _remint(self) -> None:
        with self._lock:
            self._token = None
            self._sf = None

    def call(self, fn: Callable[[Salesforce], T]) -> T:
        """Run one API interaction; re-mint the token once on an expired session; map errors to CrmApiError."""
        for attempt in (1, 2):
            try:
                return fn(self.sf)
            except SalesforceExpiredSession:
                if attempt == 2:
                    raise CrmApiError("INVALID_SESSION_ID", "The CRM rejected a freshly minted token", 401) from None
                self._remint()
            except (SalesforceError, requests.RequestException, ValueError) as exc:
                raise error_from_exception(exc) from exc
        raise AssertionError("unreachable")

    # --- API ------------------------------------------------------------------------------------------------------
    def restful(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.config.timeout)
        return self.call(lambda sf: sf.restful(path, method=method, **kwargs))

    def query_pages(self, soql: str, *, include_deleted: bool = False, batch_size: int | None = None
                    ) -> Iterator[dict]:
        """Yield raw result pages, following nextRecordsUrl."""
        extra: dict[str, Any] = {"headers": {"Sforce-Query-Options": f"batchSize={batch_size}"}} if batch_size else {}
        endpoint = "queryAll" if include_deleted else "query"
        page = self.restful(endpoint, params={"q": soql}, **extra)
        while True:
            yield page
            if page.get("done", True) or not page.get("nextRecordsUrl"):
                return
            locator_path = page["nextRecordsUrl"].split(f"/v{self.config.api_version}/", 1)[-1]
            page = self.restful(locator_path, **extra)

    def query(self, soql: str, *, include_deleted: bool = False) -> list[dict]:
        return [r for page in self.query_pages(soql, include_deleted=include_deleted) for r in page.get("records", [])]

    def describe(self, object_type: str) -> dict:
        return self.restful(f"sobjects/{object_type}/describe")

    def composite(self, subrequests: list[dict], *, all_or_none: bool = False) -> list[dict]:
        body = {"allOrNone": all_or_none, "compositeRequest": subrequests}
        return self.restful("composite", method="POST", json=body)["compositeResponse"]

    def collections(self, method: str, records: list[dict], *, all_or_none: bool = False) -> list[dict]:
        if not records:
            return []
        return self.restful("composite/sobjects", method=method, json={"allOrNone": all_or_none, "records": records})

    def limits(self) -> dict:
        return self.restful("limits/")

    def close(self) -> None:
        self._session.close()


def _default_minter(config: ClientConfig, session: requests.Session) -> Token:
    return mint_token(config.login_url, config.consumer_key, config.username, config.private_key_pem,
                      session=session, verify=config.ca_file or True, timeout=config.timeout)
