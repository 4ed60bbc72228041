"""Salesforce error classification and retry timing ([R26]).

* :func:`parse_errors` reads every error body shape the API uses (``errorCode`` lists, per-record ``statusCode``
  lists inside collections, OAuth ``error``/``error_description``, Bulk 2.0 ``sf__Error`` strings).
* :func:`classify` says what kind of error it is and what to do: transient → retry with jittered exponential
  backoff; validation → wait until the record changes again or an admin presses Retry; configuration → an admin must
  fix the mapping/permissions; auth → re-mint the token once ([R6]); limit → pause until the budget allows ([R27]).
* :func:`next_retry` turns (error, attempts, now) into the next action; randomness is injectable for tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class ErrorCategory(StrEnum):
    TRANSIENT = "transient"
    VALIDATION = "validation"
    CONFIGURATION = "configuration"
    AUTH = "auth"
    LIMIT = "limit"


TRANSIENT_CODES = frozenset(
    {
        "UNABLE_TO_LOCK_ROW",
        "SERVER_UNAVAILABLE",
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "UNPROCESSED",
        "TIMEOUT",
        "CONNECTION_ERROR",
        "QUERY_TIMEOUT",
        "REQUEST_RUNNING_TOO_LONG",
        "INVALID_QUERY_LOCATOR",
        "UNKNOWN_EXCEPTION",
        "TXN_SECURITY_METERING_ERROR",
    }
)
VALIDATION_CODES = frozenset(
    {
        "REQUIRED_FIELD_MISSING",
        "INVALID_EMAIL_ADDRESS",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "STRING_TOO_LONG",
        "DUPLICATES_DETECTED",
        "DUPLICATE_VALUE",
        "CANNOT_UPDATE_CONVERTED_LEAD",
        "ENTITY_IS_DELETED",
        "NOT_FOUND",
        "NUMBER_OUTSIDE_VALID_RANGE",
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        "FIELD_INTEGRITY_EXCEPTION",
        "FIELD_FILTER_VALIDATION_EXCEPTION",
        "CANNOT_EXECUTE_FLOW_TRIGGER",
        "ENTITY_IS_LOCKED",
    }
)
CONFIGURATION_CODES = frozenset(
    {
        "INVALID_FIELD",
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        "INVALID_TYPE",
        "INSUFFICIENT_ACCESS_OR_READONLY",
        "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY",
        "INVALID_CROSS_REFERENCE_KEY",
        "MALFORMED_QUERY",
        "API_DISABLED_FOR_ORG",
        "FUNCTIONALITY_NOT_ENABLED",
        "INVALID_FIELD_WHEN_USING_TEMPLATE",
    }
)
AUTH_CODES = frozenset({"INVALID_SESSION_ID", "INVALID_AUTH_HEADER", "invalid_grant", "invalid_client_id"})

#: Codes that say the record itself is gone or read-only: lifecycle rules apply ([R13], [R31]).
RECORD_DELETED_CODES = frozenset({"ENTITY_IS_DELETED", "NOT_FOUND"})
RECORD_CONVERTED_CODES = frozenset({"CANNOT_UPDATE_CONVERTED_LEAD"})


@dataclass(frozen=True)
class CrmError:
    code: str
    message: str
    fields: tuple[str, ...] = ()
    http_status: int | None = None

    @classmethod
    def from_bulk(cls, text: str) -> CrmError:
        """Bulk 2.0 ``sf__Error``: ``"REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --"``."""
        code, _, rest = text.partition(":")
        message, _, fields = rest.rpartition(":")
        if not message:
            message, fields = rest, ""
        names = tuple(f.strip() for f in fields.replace("--", "").split(",") if f.strip())
        return cls(code.strip() or "UNKNOWN_ERROR", message.strip() or text, names)


def parse_errors(body: Any, *, http_status: int | None = None) -> list[CrmError]:
    """Errors from a REST body: a list of ``{errorCode|statusCode, message, fields}``, a single such dict, an OAuth
    ``{"error", "error_description"}`` dict, or plain text."""
    if body is None:
        return (
            [CrmError(_status_code(http_status), f"HTTP {http_status}", http_status=http_status)]
            if http_status
            else []
        )
    items: Iterable[Any] = body if isinstance(body, list) else [body]
    errors = []
    for item in items:
        if isinstance(item, Mapping):
            if "error" in item and "errorCode" not in item and "statusCode" not in item:
                errors.append(
                    CrmError(
                        str(item["error"]), str(item.get("error_description", "")), http_status=http_status
                    )
                )
                continue
            code = item.get("errorCode") or item.get("statusCode") or _status_code(http_status)
            errors.append(
                CrmError(
                    str(code), str(item.get("message", "")), tuple(item.get("fields") or ()), http_status
                )
            )
        else:
            errors.append(CrmError(_status_code(http_status), str(item), http_status=http_status))
    return errors


def _status_code(http_status: int | None) -> str:
    if http_status is None:
        return "UNKNOWN_ERROR"
    if http_status == 401:
        return "INVALID_SESSION_ID"
    if http_status >= 500:
        return "SERVER_UNAVAILABLE" if http_status == 503 else f"HTTP_{http_status}"
    return f"HTTP_{http_status}"


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    category: ErrorCategory
    record_deleted: bool = False
    lead_converted: bool = False
    hint: str = ""

    @property
    def transient(self) -> bool:
        return self.category is ErrorCategory.TRANSIENT


def classify(code: str | None, http_status: int | None = None, message: str = "") -> ErrorInfo:
    """Classify one error code ([R26]). Unknown codes: 5xx/408/429 → transient, anything else → validation (waits for
    an admin or a change; never retried in a loop)."""
    code = code or _status_code(http_status)
    if code == "REQUEST_LIMIT_EXCEEDED":
        if "concurrent" in message.lower():
            return ErrorInfo(
                code, ErrorCategory.TRANSIENT, hint="too many long-running requests; retry shortly"
            )
        return ErrorInfo(
            code, ErrorCategory.LIMIT, hint="daily API limit reached; pause until the window rolls [R27]"
        )
    if code in AUTH_CODES or http_status == 401:
        return ErrorInfo(code, ErrorCategory.AUTH, hint="re-mint the access token once, then retry [R6]")
    if (
        code in TRANSIENT_CODES
        or code.startswith("HTTP_5")
        or http_status in (408, 429)
        or (http_status is not None and http_status >= 500)
    ):
        return ErrorInfo(code, ErrorCategory.TRANSIENT, hint="retried automatically with backoff")
    if code in CONFIGURATION_CODES:
        return ErrorInfo(
            code, ErrorCategory.CONFIGURATION, hint="check the field mapping and the connector user's access"
        )
    return ErrorInfo(
        code,
        ErrorCategory.VALIDATION,
        record_deleted=code in RECORD_DELETED_CODES,
        lead_converted=code in RECORD_CONVERTED_CODES,
        hint="waits until the record changes again or an admin presses Retry",
    )


# --------------------------------------------------------------------------------------------------------------------
# Retry timing
# --------------------------------------------------------------------------------------------------------------------


class RetryAction(StrEnum):
    RETRY_AT = "retry_at"  # transient: schedule ``at``
    REMINT_TOKEN = "remint_token"  # auth: re-mint once and retry now
    PAUSE_FOR_BUDGET = "pause_for_budget"  # limit: budget.pause_until decides
    WAIT_FOR_CHANGE = (
        "wait_for_change"  # validation/configuration: error queue, retried on change or by an admin
    )
    GIVE_UP = "give_up"  # transient error that kept failing: error queue, admin retry


@dataclass(frozen=True)
class RetryPolicy:
    base: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(hours=1)
    max_attempts: int = 10
    max_auth_attempts: int = 1


@dataclass(frozen=True)
class RetryDecision:
    action: RetryAction
    at: datetime | None = None
    reason: str = ""
    info: ErrorInfo | None = field(default=None, compare=False)


def backoff_delay(
    attempt: int, policy: RetryPolicy | None = None, rng: Callable[[], float] = random.random
) -> timedelta:
    """Jittered exponential backoff for the ``attempt``-th retry (1-based): half the exponential delay fixed, half
    random ("equal jitter"), so retries spread out but never collapse to zero. ``rng`` returns a float in [0, 1)."""
    policy = policy or RetryPolicy()
    exponent = max(0, attempt - 1)
    raw = policy.base.total_seconds() * (2 ** min(exponent, 32))
    capped = min(policy.cap.total_seconds(), raw)
    return timedelta(seconds=capped / 2 + capped / 2 * rng())


def next_retry(
    error: CrmError | ErrorInfo,
    attempts: int,
    now: datetime,
    policy: RetryPolicy | None = None,
    rng: Callable[[], float] = random.random,
) -> RetryDecision:
    """What to do after the ``attempts``-th failed attempt (1 = the first failure)."""
    policy = policy or RetryPolicy()
    info = error if isinstance(error, ErrorInfo) else classify(error.code, error.http_status, error.message)
    if info.category is ErrorCategory.AUTH:
        if attempts <= policy.max_auth_attempts:
            return RetryDecision(RetryAction.REMINT_TOKEN, now, "session expired: re-mint the token", info)
        return RetryDecision(
            RetryAction.GIVE_UP, None, "authentication keeps failing: check the connected app", info
        )
    if info.category is ErrorCategory.LIMIT:
        return RetryDecision(RetryAction.PAUSE_FOR_BUDGET, None, info.hint, info)
    if info.category is ErrorCategory.TRANSIENT:
        if attempts >= policy.max_attempts:
            return RetryDecision(RetryAction.GIVE_UP, None, f"still failing after {attempts} attempts", info)
        return RetryDecision(
            RetryAction.RETRY_AT, now + backoff_delay(attempts, policy, rng), info.hint, info
        )
    return RetryDecision(RetryAction.WAIT_FOR_CHANGE, None, info.hint, info)
