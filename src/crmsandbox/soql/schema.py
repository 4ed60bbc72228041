"""The schema protocol the SOQL engine compiles against (implemented by the server's storage)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

#: field types whose values are text compared case-insensitively
STRING_TYPES = frozenset(
    {
        "string",
        "email",
        "phone",
        "url",
        "textarea",
        "picklist",
        "multipicklist",
        "combobox",
        "encryptedstring",
    }
)
#: field types holding record ids (compared exactly, 15-char literals accepted)
ID_TYPES = frozenset({"id", "reference"})
NUMBER_TYPES = frozenset({"int", "double", "currency", "percent", "long"})
INTEGER_TYPES = frozenset({"int", "long"})


@dataclass(frozen=True)
class FieldInfo:
    name: str  # canonical case, e.g. "LastName"
    type: str  # id|string|email|phone|url|textarea|picklist|multipicklist|boolean|int|double|currency|percent|date|datetime|reference
    reference_to: tuple[str, ...] = ()  # for reference fields, e.g. ("User", "Group")
    relationship_name: str | None = None  # e.g. "Owner" for OwnerId, "Account" for AccountId


@dataclass
class ObjectInfo:
    name: str  # canonical, e.g. "Lead"
    table: str  # SQLite table name holding its rows
    fields: dict[str, FieldInfo]  # key: field name lower-cased
    has_owner: bool = True  # has OwnerId (sharing filter applies)

    def field(self, name: str) -> FieldInfo | None:
        """Case-insensitive field lookup (optional helper)."""
        return self.fields.get(name.lower())

    def relationship(self, name: str) -> FieldInfo | None:
        """The reference field whose relationship name is ``name`` (case-insensitive), if any."""
        lowered = name.lower()
        for f in self.fields.values():
            if f.relationship_name is not None and f.relationship_name.lower() == lowered:
                return f
        return None


class Schema(Protocol):
    def object(self, name: str) -> ObjectInfo | None: ...  # case-insensitive lookup


class DictSchema:
    """A simple in-memory :class:`Schema` (used by tests)."""

    def __init__(self, objects: Iterable[ObjectInfo]) -> None:
        self._objects = {o.name.lower(): o for o in objects}

    def object(self, name: str) -> ObjectInfo | None:
        return self._objects.get(name.lower())

    def objects(self) -> list[ObjectInfo]:
        return list(self._objects.values())


def make_object(
    name: str,
    fields: Iterable[FieldInfo],
    *,
    table: str | None = None,
    has_owner: bool | None = None,
) -> ObjectInfo:
    """Convenience constructor: adds ``Id`` and ``IsDeleted`` if missing."""
    by_name: dict[str, FieldInfo] = {"id": FieldInfo("Id", "id")}
    for f in fields:
        by_name[f.name.lower()] = f
    by_name.setdefault("isdeleted", FieldInfo("IsDeleted", "boolean"))
    return ObjectInfo(
        name=name,
        table=table or name,
        fields=by_name,
        has_owner=("ownerid" in by_name) if has_owner is None else has_owner,
    )
