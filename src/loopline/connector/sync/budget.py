"""The persisted API budget ([R27]): our own rolling 24-hour call counter plus the org-wide ``Sforce-Limit-Info``
reading, both kept on ``Connector.api_usage``; the decision itself is :func:`engine.budget.decide_budget`.

``Connector.api_usage`` = ``{"counter": {hour ISO: calls}, "used": org used, "max": org max, "read_at": ISO}``.
On ``REQUEST_LIMIT_EXCEEDED`` the connector gets ``paused_until`` (the status stays *active*): every loop skips it
until then, outbox rows and watermarks simply wait — nothing queued is lost.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.utils import timezone

from ..engine.budget import (
    ApiUsage,
    BudgetDecision,
    BudgetPolicy,
    RollingCounter,
    decide_budget,
    pause_on_limit_exceeded,
)
from ..metrics import API_CALLS
from ..models import Connector
from ..services import settings_of

logger = logging.getLogger("loopline.connector.budget")


def policy_for(connector: Connector) -> BudgetPolicy:
    return BudgetPolicy(share=max(1, min(100, int(settings_of(connector)["api_share_percent"]))) / 100)


def counter_of(connector: Connector) -> RollingCounter:
    return RollingCounter.from_dict((connector.api_usage or {}).get("counter") or {})


def record_calls(connector: Connector, calls: int, org_used: int | None, org_max: int | None,
                 *, kind: str = "sync") -> None:
    """Add ``calls`` to the rolling counter and store the last org-wide reading (one small row update)."""
    if calls <= 0 and org_used is None:
        return
    if calls > 0:
        API_CALLS.labels(kind).inc(calls)
    now = timezone.now()
    with transaction.atomic():
        row = Connector.objects.select_for_update().only("id", "api_usage").get(pk=connector.pk)
        data = dict(row.api_usage or {})
        counter = RollingCounter.from_dict(data.get("counter") or {})
        if calls > 0:
            counter = counter.add(now, calls)
        data["counter"] = counter.as_dict()
        if org_used is not None and org_max is not None:
            data.update(used=org_used, max=org_max, read_at=now.isoformat())
        Connector.objects.filter(pk=connector.pk).update(api_usage=data)
    connector.api_usage = data


def decision(connector: Connector, now: dt.datetime | None = None) -> BudgetDecision:
    now = now or timezone.now()
    data = connector.api_usage or {}
    usage = ApiUsage(int(data["used"]), int(data["max"])) if data.get("max") else None
    counter = counter_of(connector)
    return decide_budget(usage, counter.total(now), now, policy_for(connector), counter=counter,
                         paused_until=connector.paused_until)


LIMIT_MESSAGE = "The CRM's daily API limit is exhausted"


def pause_for_limit(connector: Connector, message: str = "") -> dt.datetime:
    """``REQUEST_LIMIT_EXCEEDED``: pause until the rolling window has room again (at least 15 minutes) [R27]."""
    now = timezone.now()
    data = connector.api_usage or {}
    share = int(int(data.get("max") or 0) * policy_for(connector).share) or None
    until = pause_on_limit_exceeded(now, policy_for(connector), counter_of(connector), share)
    text = (f"{LIMIT_MESSAGE} ({message or 'REQUEST_LIMIT_EXCEEDED'}); "
            f"sync pauses until {until:%Y-%m-%d %H:%M} UTC. Queued changes are kept.")
    Connector.objects.filter(pk=connector.pk).update(paused_until=until, last_error=text)
    connector.paused_until, connector.last_error = until, text
    logger.warning("connector %s paused for the API limit until %s", connector.pk, until.isoformat())
    return until


def lift_pause(connector: Connector) -> None:
    """After a successful call past an API-limit pause: the pause and its message are history ([R27], [R28])."""
    if connector.paused_until is not None and connector.paused_until > timezone.now():
        return
    if connector.paused_until is not None:
        Connector.objects.filter(pk=connector.pk, paused_until=connector.paused_until).update(paused_until=None)
        connector.paused_until = None
    if connector.last_error.startswith(LIMIT_MESSAGE):
        Connector.objects.filter(pk=connector.pk, last_error=connector.last_error).update(last_error="")
        connector.last_error = ""


def blocked(connector: Connector, now: dt.datetime | None = None) -> str:
    """Why automatic sync must not run now (empty string: it may)."""
    now = now or timezone.now()
    if connector.status != Connector.Status.ACTIVE:
        return f"the connector is {connector.status}"
    if connector.paused_until and connector.paused_until > now:
        return f"the API limit is exhausted until {connector.paused_until:%H:%M} UTC"
    return ""
