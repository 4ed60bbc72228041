"""The domain-event seam.

Services publish plain events (a prospect changed, an activity was recorded); other apps' services subscribe in their
AppConfig.ready(). Handlers run synchronously inside the publisher's transaction, so a handler that writes an outbox
row commits or rolls back with the change itself. Handlers that need slow work enqueue a task on commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_handlers: dict[type, list[Callable[[Any], None]]] = defaultdict(list)


@dataclass(frozen=True)
class ProspectChanged:
    bu_id: int
    prospect_id: int
    changed_fields: frozenset[str]
    created: bool = False
    actor_id: int | None = None
    source: str = "user"  # user | import | crm | api | system


@dataclass(frozen=True)
class ProspectsBulkChanged:
    """Many prospects changed at once (import): handlers should do set-based work."""

    bu_id: int
    prospect_ids: tuple[int, ...]
    created_ids: tuple[int, ...] = ()
    source: str = "import"


@dataclass(frozen=True)
class ActivityRecorded:
    bu_id: int
    activity_id: int
    prospect_id: int | None
    visitor_id: int | None
    type: int
    is_machine: bool = False
    data: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class ProspectDeleted:
    bu_id: int
    prospect_id: int
    permanent: bool = False


@dataclass(frozen=True)
class ProspectsMerged:
    bu_id: int
    survivor_id: int
    loser_id: int


def subscribe(event_type: type, handler: Callable[[Any], None]) -> None:
    if handler not in _handlers[event_type]:
        _handlers[event_type].append(handler)


def unsubscribe(event_type: type, handler: Callable[[Any], None]) -> None:
    if handler in _handlers[event_type]:
        _handlers[event_type].remove(handler)


def publish(event: Any) -> None:
    for handler in list(_handlers[type(event)]):
        handler(event)
