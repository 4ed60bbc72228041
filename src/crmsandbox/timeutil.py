"""Date/time helpers: the wire format ``2024-01-05T10:20:30.000+0000`` (always UTC)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

_DT_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"(Z|[+\- ]\d{2}:?\d{2})?$"
)


def format_dt(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"


def format_ms(ms: int) -> str:
    """Wire format for epoch milliseconds."""
    return format_dt(datetime.fromtimestamp(ms / 1000, UTC))


def parse_dt(text: str) -> datetime | None:
    """Parse ISO-8601-ish datetimes (``Z``, ``+00:00``, ``+0000``, none → UTC; a ``+`` decoded to space too)."""
    if not isinstance(text, str):
        return None
    m = _DT_RE.match(text.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0),
                      int((frac or "0")[:6].ljust(6, "0")), tzinfo=UTC)
    except ValueError:
        return None
    if tz and tz != "Z":
        sign = -1 if tz.startswith("-") else 1
        digits = tz[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4]))
        dt = dt - sign * offset
    return dt


def parse_date(text: str) -> date | None:
    if not isinstance(text, str):
        return None
    try:
        return date.fromisoformat(text[:10]) if len(text) >= 10 else None
    except ValueError:
        return None


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def ms_of(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)
