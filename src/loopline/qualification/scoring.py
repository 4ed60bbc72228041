"""The default scoring table ([M12]) and small pure helpers shared by services and tests."""

from __future__ import annotations

from loopline.prospects.models import ActivityType as T

# [M12] Default points. Types not listed score 0 (email open, opportunity won, system events...).
DEFAULT_POINTS: dict[int, int] = {
    T.PAGE_VIEW: 1,
    T.VISIT: 3,
    T.CUSTOM_REDIRECT_CLICK: 3,
    T.FILE_ACCESS: 3,
    T.SITE_SEARCH: 3,
    T.FORM_SUCCESS: 50,
    T.FORM_HANDLER_SUCCESS: 50,
    T.LANDING_PAGE_SUCCESS: 50,
    T.FORM_ERROR: -5,
    T.FORM_HANDLER_ERROR: -5,
    T.LANDING_PAGE_ERROR: -5,
    T.EMAIL_OPEN: 0,
    T.EMAIL_CLICK: 3,  # assumed by the spec
    T.OPPORTUNITY_CREATED: 50,
    T.OPPORTUNITY_WON: 0,
    T.OPPORTUNITY_LOST: -100,
}

# Types a person may give points to on the rules page (system bookkeeping types never score).
SCORABLE_TYPES: tuple[int, ...] = tuple(
    t for t in T.values if t not in (T.PROSPECT_CREATED, T.IMPORTED, T.MERGED, T.CRM_SYNC, T.NOTE, T.EMAIL_SENT)
)

MAX_POINTS = 10000


def effective_points(stored: dict | None) -> dict[int, int]:
    """The full table for a BU: stored overrides on top of the defaults."""
    table = {t: DEFAULT_POINTS.get(t, 0) for t in SCORABLE_TYPES}
    for key, value in (stored or {}).items():
        try:
            t, v = int(key), int(value)
        except (TypeError, ValueError):
            continue
        if t in table:
            table[t] = v
    return table
