"""API budget ([R27]): read ``Sforce-Limit-Info``, keep the connector within its share of the org's daily requests.

The org-wide figure (``api-usage=used/max``) comes with every response; the connector's own usage is counted by the
adapter (a :class:`RollingCounter` of its calls over the rolling 24 h window Salesforce uses). Decisions:

* below 70% of the share → ``NORMAL``;
* from 70% → ``SLOW`` (polling stretched by :attr:`BudgetDecision.poll_stretch`);
* from 90% → ``DEFER_BULK`` (initial imports, reconciliation and bulk jobs wait; record-level sync continues, slowly);
* share used up, org allowance exhausted, or ``REQUEST_LIMIT_EXCEEDED`` → ``PAUSED`` until :attr:`BudgetDecision.until`.
Nothing queued is dropped: the outbox and the watermarks simply wait.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from .model import as_utc

_USAGE = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")
WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class ApiUsage:
    used: int
    max: int

    @property
    def remaining(self) -> int:
        return max(0, self.max - self.used)


def parse_limit_info(header: str | None) -> ApiUsage | None:
    """``Sforce-Limit-Info: api-usage=18/5000`` (possibly with ``per-app-api-usage=…`` parts) → usage, else ``None``."""
    if not header:
        return None
    match = _USAGE.search(header.strip())
    if match is None:
        return None
    return ApiUsage(int(match.group(1)), int(match.group(2)))


class BudgetMode(StrEnum):
    NORMAL = "normal"
    SLOW = "slow"
    DEFER_BULK = "defer_bulk"
    PAUSED = "paused"


@dataclass(frozen=True)
class BudgetPolicy:
    share: float = 0.20  # of the org's daily max
    slow_at: float = 0.70  # of the share
    defer_bulk_at: float = 0.90
    slow_stretch: float = 4.0  # poll interval multiplier while SLOW/DEFER_BULK
    probe_after: timedelta = timedelta(minutes=15)  # re-check after REQUEST_LIMIT_EXCEEDED

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError("share must be in (0, 1]")


@dataclass(frozen=True)
class BudgetDecision:
    mode: BudgetMode
    share_calls: int  # the connector's daily allowance
    used_calls: int  # the connector's calls in the last 24 h
    reason: str
    until: datetime | None = None
    poll_stretch: float = 1.0

    @property
    def share_left(self) -> int:
        return max(0, self.share_calls - self.used_calls)

    @property
    def allows_bulk(self) -> bool:
        return self.mode in (BudgetMode.NORMAL, BudgetMode.SLOW)

    @property
    def allows_work(self) -> bool:
        return self.mode is not BudgetMode.PAUSED


def decide_budget(
    usage: ApiUsage | None,
    connector_calls_24h: int,
    now: datetime,
    policy: BudgetPolicy | None = None,
    *,
    counter: RollingCounter | None = None,
    paused_until: datetime | None = None,
) -> BudgetDecision:
    """The budget mode given the org usage (last ``Sforce-Limit-Info``) and the connector's own calls in 24 h.
    Without a reading yet, ``NORMAL`` with an unknown share (0)."""
    policy = policy or BudgetPolicy()
    now = as_utc(now)
    if paused_until is not None and as_utc(paused_until) > now:
        return BudgetDecision(
            BudgetMode.PAUSED,
            0,
            connector_calls_24h,
            "paused after REQUEST_LIMIT_EXCEEDED",
            as_utc(paused_until),
        )
    if usage is None or usage.max <= 0:
        return BudgetDecision(BudgetMode.NORMAL, 0, connector_calls_24h, "no API usage reading yet")
    share = int(usage.max * policy.share)
    if usage.remaining <= 0:
        return BudgetDecision(
            BudgetMode.PAUSED,
            share,
            connector_calls_24h,
            "the org's daily API allowance is used up",
            now + policy.probe_after,
        )
    ratio = connector_calls_24h / share if share else 1.0
    if ratio >= 1.0:
        until = counter.when_below(share, now) if counter is not None else None
        return BudgetDecision(
            BudgetMode.PAUSED,
            share,
            connector_calls_24h,
            f"connector share used up ({connector_calls_24h}/{share})",
            until or now + policy.probe_after,
        )
    if ratio >= policy.defer_bulk_at:
        return BudgetDecision(
            BudgetMode.DEFER_BULK,
            share,
            connector_calls_24h,
            f"{ratio:.0%} of the share used: bulk work deferred",
            poll_stretch=policy.slow_stretch,
        )
    if ratio >= policy.slow_at:
        return BudgetDecision(
            BudgetMode.SLOW,
            share,
            connector_calls_24h,
            f"{ratio:.0%} of the share used: polling slowed",
            poll_stretch=policy.slow_stretch,
        )
    return BudgetDecision(BudgetMode.NORMAL, share, connector_calls_24h, f"{ratio:.0%} of the share used")


def pause_on_limit_exceeded(
    now: datetime,
    policy: BudgetPolicy | None = None,
    counter: RollingCounter | None = None,
    limit: int | None = None,
) -> datetime:
    """When to try again after ``403 REQUEST_LIMIT_EXCEEDED``: when the rolling window has dropped enough of the
    connector's own calls (if known), and never sooner than ``probe_after`` (one cheap ``GET limits/`` then)."""
    policy = policy or BudgetPolicy()
    now = as_utc(now)
    earliest = now + policy.probe_after
    if counter is not None and limit is not None:
        when = counter.when_below(limit, now)
        if when is not None and when > earliest:
            return when
    return earliest


@dataclass(frozen=True)
class RollingCounter:
    """API calls per hour bucket (bucket start → count), for the rolling 24 h window. Immutable: :meth:`add` returns
    a new counter; old buckets are dropped. JSON-friendly via :meth:`as_dict` / :meth:`from_dict`."""

    buckets: Mapping[datetime, int] = field(default_factory=dict)

    @staticmethod
    def _bucket(when: datetime) -> datetime:
        return as_utc(when).replace(minute=0, second=0, microsecond=0)

    def add(self, when: datetime, calls: int = 1) -> RollingCounter:
        key = self._bucket(when)
        cutoff = key - WINDOW
        kept = {k: v for k, v in self.buckets.items() if k > cutoff}
        kept[key] = kept.get(key, 0) + calls
        return RollingCounter(kept)

    def total(self, now: datetime) -> int:
        cutoff = as_utc(now) - WINDOW
        return sum(v for k, v in self.buckets.items() if k + timedelta(hours=1) > cutoff)

    def when_below(self, limit: int, now: datetime) -> datetime | None:
        """The first time the rolling total drops below ``limit`` (``None`` when it already is)."""
        total = self.total(now)
        if total < limit:
            return None
        for start in sorted(self.buckets):
            total -= self.buckets[start]
            if total < limit:
                return start + timedelta(hours=1) + WINDOW
        return as_utc(now) + WINDOW

    def as_dict(self) -> dict[str, int]:
        return {k.isoformat(): v for k, v in self.buckets.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> RollingCounter:
        return cls({as_utc(datetime.fromisoformat(k)): int(v) for k, v in data.items()})
